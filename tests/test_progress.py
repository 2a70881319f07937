"""Progress lines with done/total, rate and time left (transforms/progress.py), the total from
the input survey's Parquet footers, and the ``TrackProgress`` step of the scan."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline_fixtures import fn_api_pipeline, listings_table, mixed_rows, model_dir_fixture, write_table  # noqa: F401

from ecomatch_model.sample import make_listings
from pipelines.scan import local_processes, run
from transforms import progress
from transforms.errors import ErrorRecord
from transforms.listings import survey_input
from transforms.progress import ProgressLog, TrackProgress, duration


def log_at(count: int, seconds: float, **kwargs) -> ProgressLog:
    """A progress log that has counted ``count`` listings in ``seconds``."""
    p = ProgressLog("listings", **kwargs)
    p.count, p.started = count, time.monotonic() - seconds
    return p


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_duration(seconds: float, text: str):
    assert duration(seconds) == text


def test_line_with_total_gives_done_rate_and_eta():
    assert log_at(25, 10.0, total=100, processes=1).line() == "25/100 listings (25%), 2.5 listings/s, ETA 30s"
    assert log_at(100, 10.0, total=100, processes=1).line().endswith("(100%), 10.0 listings/s, ETA 0s")
    # Two processes share the work: the job's progress is estimated from this one's share.
    assert log_at(25, 10.0, total=100, processes=2).line() == (
        "50/100 listings (50%), 5.0 listings/s, ETA 10s (estimated from this process's 25, 1 of 2)")
    # A runner that chooses its own number of workers: this process's count beside the job's total.
    assert log_at(25, 10.0, total=100).line() == "25 listings in this process (2.5 listings/s) of 100 in the job"
    assert log_at(0, 0.0, total=100, processes=1).line().endswith("ETA unknown")
    assert log_at(3, 1.0).line() == "3 listings (3.0 listings/s)"


def test_progress_thread_logs_the_line(caplog):
    p = ProgressLog("listings", interval=0.05, total=10, processes=1)
    with caplog.at_level(logging.INFO, logger="transforms.progress"):
        p.add(4)
        p.start()
        time.sleep(0.3)
        p.stop()
        time.sleep(0.1)
        n = len(caplog.records)
        time.sleep(0.2)
    # Other tests' logs may still be running: this one's lines are those with its total.
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.progress" and "/10 " in r.getMessage()]
    assert lines and all(line.startswith("progress: 4/10 listings (40%), ") and " ETA " in line for line in lines)
    assert not [r for r in caplog.records[n:] if "/10 " in r.getMessage()], "stop() ends the thread"


def test_survey_counts_the_rows_in_the_footers(tmp_path: Path):
    write_table(tmp_path / "a.parquet", make_listings(7, seed=1, size=32))
    write_table(tmp_path / "b.parquet", make_listings(5, seed=2, size=32))
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    survey = survey_input(str(tmp_path / "*.parquet"), [], strict=False)
    assert survey.rows == 12 and len(survey.files) == 2 and len(survey.bad) == 1


def test_track_progress_counts_verdicts_and_listing_errors(monkeypatch):
    monkeypatch.setattr(progress, "_shared", None)
    errors = [ErrorRecord("x", "s.parquet", "decode", "ImageDecodeError", "m"),
              ErrorRecord(None, "bad.parquet", "read", "InputSchemaError", "m")]    # a skipped file: no listing
    with fn_api_pipeline() as p:
        verdicts = p | "Verdicts" >> beam.Create(["v1", "v2", "v3"])
        errs = p | "Errors" >> beam.Create(errors)
        _ = (verdicts, errs) | TrackProgress(10, 1)
    shared = progress.listings_progress()
    assert (shared.count, shared.total, shared.processes) == (4, 10, 1)


def test_scan_tracks_progress_against_the_footers_total(tmp_path: Path, model_dir: str, monkeypatch, caplog):
    monkeypatch.setattr(progress, "_shared", None)
    write_table(tmp_path / "in" / "good.parquet", make_listings(9, seed=3, size=48))
    write_table(tmp_path / "in" / "mixed.parquet", listings_table(mixed_rows(tmp_path)))
    with caplog.at_level(logging.INFO):
        run(["--input", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"), "--model", model_dir,
             "--batch-size", "4"], save_main_session=False)
    shared = progress.listings_progress()
    assert (shared.count, shared.total, shared.processes) == (15, 15, 1), "9 + 6 rows, 3 of them error rows"
    assert any(r.getMessage().startswith("scanning 15 listings in 2 file(s)") for r in caplog.records)
    report = [r.getMessage() for r in caplog.records if r.name == "transforms.html_report"]
    assert report[0].startswith("report: the ") and "reading their listings again from 2 input file(s)" in report[0]
    assert report[1].startswith("report: re-scoring ") and report[2].startswith("wrote ")


@pytest.mark.parametrize("argv, processes", [
    (["--runner", "FnApiRunner"], 1),
    (["--runner", "FnApiRunner", "--direct_num_workers", "3", "--direct_running_mode", "multi_threading"], 1),
    (["--runner", "FnApiRunner", "--direct_num_workers", "3", "--direct_running_mode", "multi_processing"], 3),
    (["--runner", "DataflowRunner", "--direct_num_workers", "3", "--direct_running_mode", "multi_processing"], None),
])
def test_processes_sharing_a_run(argv: list[str], processes: int | None):
    assert local_processes(PipelineOptions(argv)) == processes

"""The nightly check (python -m infra.nightly) on summary.json files written by the scan's own
writer: exit 0 inside the bounds, 1 outside them, 2 when the night's run is missing."""
from __future__ import annotations

import datetime as dt
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import calibration_summary
from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixture)

from ecomatch_model.sample import make_listings
from infra.nightly import Bounds, expand_dates, main, summary_problems
from pipelines.scan import run
from transforms.reports import ScanInfo, read_summary, write_summary

DAY = dt.date(2026, 3, 1)
# 1000 read: 990 scored (940 ok, 50 colour violations) and 10 decode errors.
EVENTS = {"read": 1000, "scored": 990, "ok": 940, "violation": 50, "kind:colour": 50, "errors": 10,
          "error:UnidentifiedImageError": 10}


def write_run(prefix: Path, events: dict[str, int] = EVENTS, seconds: float = 10.0) -> dict:
    """A finished run's summary.json under ``prefix``, ``seconds`` long, as the scan writes it."""
    info = ScanInfo(input="gs://catalogue/*.parquet", input_files=2, output=str(prefix), model_name="base",
                    model_sha256="0" * 64, calibration=calibration_summary({"match": 0.2, "colour": 0.5}), kinds=["colour"],
                    runner="DataflowRunner", started_at=time.time() - seconds)
    prefix.mkdir(parents=True, exist_ok=True)
    write_summary(events, info, [], [], [])
    return read_summary(str(prefix))


def test_expand_dates():
    assert expand_dates("gs://r/scan/{date}/state-{yesterday}", DAY) == "gs://r/scan/2026-03-01/state-2026-02-28"
    assert expand_dates("gs://r/scan/latest", DAY) == "gs://r/scan/latest"


def test_check_passes_inside_bounds(tmp_path: Path, capsys):
    write_run(tmp_path / "scan" / "2026-03-01")
    argv = [str(tmp_path / "scan" / "{date}"), "--violation-rate", "0.01:0.1", "--max-error-rate", "0.02",
            "--min-read", "1000", "--min-listings-per-second", "50", "--date", "2026-03-01"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "ok: 1000 read, 50 violations, 10 errors" in out.out and out.err == ""


@pytest.mark.parametrize("band, words", [("0.06:0.2", "violation rate 0.0505 (50 of 990 scored) is outside"),
                                         ("0:0.05", "violation rate 0.0505"),
                                         ("0.05:0.051", None)])
def test_check_violation_band(tmp_path: Path, capsys, band: str, words: str | None):
    write_run(tmp_path / "2026-03-01")
    code = main([str(tmp_path / "{date}"), "--violation-rate", band, "--date", "2026-03-01"])
    err = capsys.readouterr().err
    assert (code, err == "") == ((1, False) if words else (0, True))
    assert words is None or words in err


def test_check_reports_every_problem(tmp_path: Path):
    summary = write_run(tmp_path, seconds=100.0)       # 10 listings/s
    problems = summary_problems(summary, Bounds((0.0, 0.01), max_error_rate=0.005, min_read=5000,
                                                min_listings_per_second=100.0))
    assert len(problems) == 4
    assert problems[0] == "read 1000 listings, expected at least 5000"
    assert problems[2].startswith("error rate 0.0100 (10 of 1000 read) is above 0.005")
    assert "workers on the CPU?" in problems[3]


def test_check_fails_when_nothing_was_scored(tmp_path: Path):
    summary = write_run(tmp_path, {"read": 3, "errors": 3, "error:FileNotFoundError": 3})
    assert summary_problems(summary, Bounds((0.0, 1.0))) == ["no listing was scored"]


def test_check_missing_run(tmp_path: Path, capsys):
    write_run(tmp_path / "2026-02-28")                 # yesterday's run only
    assert main([str(tmp_path / "{date}"), "--violation-rate", "0:1", "--date", "2026-03-01"]) == 2
    assert f"no complete run under {tmp_path / '2026-03-01'}" in capsys.readouterr().err


@pytest.mark.parametrize("band", ["0.2", "0.3:0.1", "-0.1:0.5", "0:1.5", "a:b"])
def test_bad_band_is_a_usage_error(band: str):
    with pytest.raises(SystemExit) as exc:
        main(["gs://r/scan/{date}", "--violation-rate", band])
    assert exc.value.code == 2


GPU_EVENTS = {**EVENTS, "device:cuda:0\tharness-a": 600, "device:cuda:0\tharness-b": 390}


def test_gpu_job_scored_on_gpus_passes_and_cpu_fallback_alerts(tmp_path: Path):
    on_gpu = write_run(tmp_path / "gpu", GPU_EVENTS)
    assert on_gpu["scoring_devices"] == [{"worker": "harness-a", "device": "cuda:0", "listings": 600},
                                         {"worker": "harness-b", "device": "cuda:0", "listings": 390}]
    assert summary_problems(on_gpu, Bounds((0.0, 1.0), expect_device="cuda")) == []
    fell_back = write_run(tmp_path / "cpu", {**EVENTS, "device:cuda:0\tharness-a": 600, "device:cpu\tharness-b": 390})
    assert summary_problems(fell_back, Bounds((0.0, 1.0))) == [], "no device expected, none checked"
    assert summary_problems(fell_back, Bounds((0.0, 1.0), expect_device="cuda")) == [
        "390 of 990 listings were scored on another device than cuda (harness-b on cpu): "
        "workers fell back to the CPU?"]


def test_device_check_on_a_run_without_devices(tmp_path: Path):
    older = write_run(tmp_path / "old")
    del older["scoring_devices"]
    assert summary_problems(older, Bounds((0.0, 1.0), expect_device="cuda")) == [
        "summary.json does not record the scoring devices (990 listings scored; expected cuda)"]
    carried = write_run(tmp_path / "carried", {**EVENTS, "carried": 990})      # nothing went through the model
    assert carried["scoring_devices"] == [] and carried["incremental"]["scored"] == 0
    assert summary_problems(carried, Bounds((0.0, 1.0), expect_device="cuda")) == []


def test_scan_records_its_device_and_the_check_alerts_off_gpu(tmp_path: Path, model_dir: str, capsys):
    shard = tmp_path / "in" / "l.parquet"
    shard.parent.mkdir()
    pq.write_table(make_listings(6, seed=2, size=48), shard)
    # --model-copies: the model in a process shared by the workers, behind Beam's proxy, as on GPU workers.
    run(["--input", str(shard), "--output", str(tmp_path / "2026-03-01"), "--model", model_dir, "--batch-size", "4",
         "--device", "cpu", "--model-copies", "1"], save_main_session=False)
    summary = read_summary(str(tmp_path / "2026-03-01"))
    assert summary["scoring_devices"] == [{"worker": socket.gethostname(), "device": "cpu", "listings": 6}]
    argv = [str(tmp_path / "{date}"), "--violation-rate", "0:1", "--date", "2026-03-01"]
    assert main([*argv, "--expect-device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*argv, "--expect-device", "cuda"]) == 1
    assert f"6 of 6 listings were scored on another device than cuda ({socket.gethostname()} on cpu)" in \
        capsys.readouterr().err

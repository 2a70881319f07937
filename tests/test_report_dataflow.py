"""report.html is a step of the job, not the launcher's: written on a worker once
summary.json is final, the same way on every runner, so a launch that returns before the job
has run (a Dataflow flex template launch, ``--template_location``) still gets its report."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_policy
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState
from apache_beam.runners.worker import statesampler
from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixtures)
from test_pipeline_scan import sample_shards

import pipelines.scan
from transforms import html_report


@pytest.fixture()
def report_writers(monkeypatch) -> list[str | None]:
    """The name of the Beam step running each call of ``write_report`` (None outside any step)."""
    steps: list[str | None] = []
    write = html_report.write_report

    def spy(*args, **kwargs):
        tracker = statesampler.get_current_tracker()         # the runner's, while it runs a step
        steps.append(tracker.current_state().name_context.step_name if tracker else None)
        return write(*args, **kwargs)

    monkeypatch.setattr(html_report, "write_report", spy)
    return steps


def all_fail(tmp_path: Path, model_dir: str) -> str:
    """A calibration file every listing fails, so that every one is a violation."""
    kinds = json.loads((Path(model_dir) / "lexicon.json").read_text())["kinds"]
    return write_policy(tmp_path / "t.json", {"match": 1.5, **{k["kind"]: 1.5 for k in kinds}})


def test_the_job_writes_the_report_in_its_own_step(tmp_path: Path, model_dir, report_writers):
    sample_shards(tmp_path / "in", 6, 2)
    out = tmp_path / "out"
    result = pipelines.scan.run(["--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out),
                                 "--model", model_dir, "--calibration", all_fail(tmp_path, model_dir),
                                 "--report-top", "4", "--runner", "FnApiRunner"], save_main_session=False)
    assert result.state == PipelineState.DONE
    [step] = report_writers
    assert step is not None and step.startswith("WriteHtmlReport"), step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["violations"] == 6
    page = (out / "report.html").read_text()
    violations = sorted(pq.read_table(out / "violations").to_pylist(), key=lambda v: (-v["severity"], v["listing_id"]))
    assert re.findall(r'<span class="mono">([^<]+)</span></div><div class="muted mono">', page) == \
        [v["listing_id"] for v in violations[:4]]              # 4 cards, each with its listing found in the input
    # The report step read 4 listings again from the input; Beam's read counter, over every
    # step, counts the scan's reads only.
    reads = result.metrics().query(MetricsFilter().with_namespace("ecomatch").with_name("read"))["counters"]
    assert sum(c.committed for c in reads) == summary["counts"]["read"] == 6
    assert {c.key.step for c in reads} == {"ReadListings/ReadRowGroups"}


def test_a_launch_that_does_not_wait_leaves_nothing_to_write_afterwards(tmp_path: Path, model_dir, report_writers):
    # With --template_location the launcher returns as soon as pipeline.run() does, never
    # waiting for the job (Dataflow's launcher must not). The in-process runner has run the
    # whole job by then, so what is under the prefix is what the job alone wrote.
    sample_shards(tmp_path / "in", 4, 1)
    out = tmp_path / "out"
    pipelines.scan.run(["--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--model", model_dir,
                        "--calibration", all_fail(tmp_path, model_dir), "--runner", "FnApiRunner",
                        "--template_location", str(tmp_path / "job.json")], save_main_session=False)
    assert len(report_writers) == 1 and report_writers[0].startswith("WriteHtmlReport")
    assert json.loads((out / "summary.json").read_text())["counts"]["violations"] == 4
    assert (out / "report.html").read_text().count('<article class="card"') == 4

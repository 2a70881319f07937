"""WriteReports: the output layout, summary.json, reconciliation and replacing old outputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from conftest import calibration_summary
from apache_beam.testing.util import assert_that, equal_to
from pipeline_fixtures import fn_api_pipeline

from transforms.errors import ErrorRecord
from transforms.flag import Finding, Verdict
from transforms.reports import (ERRORS_SCHEMA, SCORES_SCHEMA, VIOLATIONS_SCHEMA, CountMismatchError, ScanInfo,
                                WriteReports, clear_outputs, summary_counts)

KINDS = ["colour", "article_type", "pattern", "material", "gender"]
OK = Verdict("a", "ok", 0.25, 0.7, None, "ha")
BAD = Verdict("b", "violation", 0.8, 0.1, "colour", "hb", ("title says Red; the image looks Navy Blue (...)",),
              (Finding("colour", "red", 0.1, 0.4, "navy blue", 0.9),))
ERR = ErrorRecord("c", "in/x.parquet", "decode", "ImageDecodeError", "cannot identify image")


def info(out: Path) -> ScanInfo:
    return ScanInfo("in/*.parquet", 1, str(out), "tiny", "abc", calibration_summary({"match": 0.2, "colour": 0.4}), KINDS,
                    "FnApiRunner")


def test_summary_counts_reconcile():
    events = {"read": 4, "scored": 3, "ok": 1, "violation": 2, "kind:colour": 1, "kind:match": 1, "errors": 1,
              "error:ImageDecodeError": 1}
    assert summary_counts(events, KINDS) == {
        "read": 4, "scored": 3, "ok": 1, "violations": 2, "errors": 1,
        "violations_per_kind": {"match": 1, "colour": 1, "article_type": 0, "pattern": 0, "material": 0, "gender": 0},
        "errors_per_type": {"ImageDecodeError": 1}}


@pytest.mark.parametrize("events, problem", [
    ({"read": 2, "scored": 1, "ok": 1}, "read 2 != scored 1 + errors 0"),
    ({"read": 1, "scored": 1}, "scored 1 != ok 0 + violations 0"),
    ({"read": 1, "scored": 1, "violation": 1}, "do not add up to 1"),
])
def test_summary_counts_refuse_to_lose_listings(events, problem):
    with pytest.raises(CountMismatchError, match=re.escape(problem)):
        summary_counts(events, KINDS)


def test_clear_outputs_removes_only_the_reports(tmp_path: Path):
    for name in ["scores/part-00000-of-00001.parquet", "scores/beam-temp-x/t", "violations/v.parquet",
                 "errors/e.parquet", "summary.json", "listings.parquet", "notes/scores.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    clear_outputs(str(tmp_path))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        ["listings.parquet", "notes/scores.txt"]
    clear_outputs(str(tmp_path / "never-written"))


def _run_reports(out: Path, n_read: int) -> None:
    with fn_api_pipeline() as p:
        summary = {"listings": p | "Listings" >> beam.Create(list(range(n_read))),
                   "verdicts": p | "Verdicts" >> beam.Create([OK, BAD]),
                   "errors": p | "Errors" >> beam.Create([ERR])} | WriteReports(info(out))
        assert_that(summary | beam.Map(lambda s: s["counts"]["read"]), equal_to([n_read]))


def test_write_reports_layout(tmp_path: Path):
    out = tmp_path / "out"
    _run_reports(out, 3)
    scores, violations, errors = (pq.read_table(out / d) for d in ("scores", "violations", "errors"))
    assert scores.schema.equals(SCORES_SCHEMA) and violations.schema.equals(VIOLATIONS_SCHEMA)
    assert errors.schema.equals(ERRORS_SCHEMA)
    assert sorted(scores.to_pylist(), key=lambda r: r["listing_id"]) == [OK.score_row(), BAD.score_row()]
    assert violations.to_pylist() == [BAD.violation_row()]
    assert errors.to_pylist() == [ERR.row()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"read": 3, "scored": 2, "ok": 1, "violations": 1, "errors": 1,
                                 "violations_per_kind": {"match": 0, "colour": 1, "article_type": 0, "pattern": 0,
                                                         "material": 0, "gender": 0},
                                 "errors_per_type": {"ImageDecodeError": 1}}
    assert summary["files"] == {d: [f"{d}/part-00000-of-00001.parquet"] for d in ("errors", "scores", "violations")}
    assert {k: summary[k] for k in ("model", "calibration", "scoring_rules", "input", "output", "runner")} == {
        "model": {"name": "tiny", "sha256": "abc"}, "calibration": calibration_summary({"match": 0.2, "colour": 0.4}),
        "scoring_rules": 3,
        "input": {"pattern": "in/*.parquet", "files": 1}, "output": str(out), "runner": "FnApiRunner"}
    assert summary["started_at"] <= summary["finished_at"] and summary["listings_per_second"] > 0


def test_write_reports_fails_loudly_when_counts_do_not_reconcile(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(Exception, match="scan counts do not reconcile: read 5 != scored 2 \\+ errors 1"):
        _run_reports(out, 5)
    assert not (out / "summary.json").exists()

"""Reviewers' decisions: the reader of report.html's CSV and JSON exports (hostile input gets
one-line errors naming the row) and the rule that turns them into a cut
(ecomatch_model.verdict.feedback_cut)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixture)

from test_pipeline_scan import sample_shards

from ecomatch_model import cli
from ecomatch_model.feedback import FORMAT, Decision, FeedbackError, parse_decisions
from ecomatch_model.verdict import feedback_cut

SHA = "ab" * 32
HEADER = "listing_id,decision,worst_kind,severity,calibration_sha256"


def csv_text(*rows: str) -> bytes:
    return ("\r\n".join([HEADER, *rows]) + "\r\n").encode()


def test_reads_the_csv_and_json_the_page_exports():
    rows = [Decision("a,1", "confirmed", "colour", 0.93, SHA), Decision('b"2', "false_alarm", "match", 0.61, SHA)]
    csv_bytes = csv_text(f'"a,1",confirmed,colour,0.93,{SHA}', f'"b""2",false_alarm,match,0.61,{SHA}')
    assert parse_decisions(csv_bytes, "d.csv") == rows
    assert parse_decisions(b"\xef\xbb\xbf" + csv_bytes, "d.csv") == rows                # a spreadsheet's BOM
    extra = ("note," + HEADER + "\n" + f'x,"a,1",confirmed,colour,0.93,{SHA}\n').encode()
    assert parse_decisions(extra, "d.csv") == rows[:1]                                  # extra columns ignored
    doc = {"format": FORMAT, "decisions": [{"listing_id": r.listing_id, "decision": r.decision,
                                            "worst_kind": r.worst_kind, "severity": r.severity,
                                            "calibration_sha256": r.calibration_sha256} for r in rows]}
    assert parse_decisions(json.dumps(doc).encode(), "d.json") == rows
    assert parse_decisions(json.dumps(doc["decisions"]).encode(), "d.json") == rows
    assert [r.confirmed for r in rows] == [True, False]


@pytest.mark.parametrize("data, message", [
    (csv_text(f"a,confirmed,colour,0.9,{SHA}", f"b,maybe,colour,0.9,{SHA}"),
     "d: row 2: decision must be confirmed or false_alarm, got 'maybe'"),
    (csv_text(f"a,confirmed,colour,nan,{SHA}"), "d: row 1: severity must be a probability in [0, 1], got 'nan'"),
    (csv_text(f"a,confirmed,colour,1.5,{SHA}"), "d: row 1: severity must be a probability in [0, 1]"),
    (csv_text(f"a,confirmed,colour,high,{SHA}"), "d: row 1: severity must be a number, got 'high'"),
    (csv_text("a,confirmed,colour,0.9,abc"), "d: row 1: calibration_sha256 must be 64 lowercase hex digits"),
    (csv_text(f",confirmed,colour,0.9,{SHA}"), "d: row 1: listing_id must be a non-empty string"),
    (csv_text(f"a,confirmed,colour,0.9,{SHA}", f"a,false_alarm,colour,0.9,{SHA}"),
     "d: row 2: listing_id 'a' was already decided in row 1"),
    (csv_text(f"a,confirmed,colour,0.9,{SHA},extra"), "d: row 1: expected 5 fields"),
    (csv_text(f"a,confirmed,colour,0.9"), "d: row 1: expected 5 fields"),
    (csv_text(f"a,confirmed,colour,0.9,{SHA}", f"b,confirmed,colour,0.9,{'cd' * 32}"),
     "d: decisions made on 2 different calibrations"),
    (csv_text(f"a,confirmed,colour,0.9,{SHA}", f'"b,confirmed,colour,0.9,{SHA}'), "d: row 2: not valid CSV"),
    (b"listing_id,decision\na,confirmed\n", "d: header: missing column(s) worst_kind, severity, calibration_sha256"),
    (csv_text(), "d: no decisions"),
    (b"", "d: header: missing column(s)"),
    (b"\xff\xfe" + HEADER.encode("utf-16-le"), "d: not UTF-8 text"),
    (csv_text(f"a\x00,confirmed,colour,0.9,{SHA}"), "d: holds NUL characters"),
    (b'{"format": "other", "decisions": []}', "d: expected {\"format\": \"ecomatch-decisions/1\""),
    (b"[1, 2]", "d: row 1: expected an object, got 1"),
    (b'[{"listing_id": "a", "decision": "confirmed", "worst_kind": "colour", "severity": true, '
     b'"calibration_sha256": "' + SHA.encode() + b'"}]', "d: row 1: severity must be a number, got True"),
    (b'[{"listing_id": "a", "decision": "confirmed", "worst_kind": "colour", "severity": NaN, '
     b'"calibration_sha256": "' + SHA.encode() + b'"}]', "d: row 1: severity must be a probability in [0, 1], got 'NaN'"),
    (b'[{"listing_id": ["a"], "decision": "confirmed"}]', "d: row 1: listing_id must be a non-empty string"),
    (b"{not json", "d: not JSON"),
    (csv_text(f"{'x' * 5000},confirmed,colour,0.9,{SHA}"), "d: row 1: listing_id must be a non-empty string of at "
                                                           "most 4096 characters, got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..."),
])
def test_hostile_input_is_a_one_line_error_naming_the_row(data, message):
    with pytest.raises(FeedbackError) as info:
        parse_decisions(data, "d")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_feedback_raises_the_cut_to_the_lowest_that_reaches_the_precision():
    # Reviewed at the scan's cut 0.5: from the top, 6 confirmed, then alternating from 0.7 down.
    sev = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.80, 0.70, 0.65, 0.60, 0.55, 0.52]
    lab = [True] * 7 + [False, True, False, False, False]
    cut, point = feedback_cut(sev, lab, 0.5, 0.8, min_reviewed=5)
    # At or above 0.65: 8 of 9 confirmed (0.889); one lower, 0.60: 8 of 10 (0.8); 0.55: 8 of 11 < 0.8.
    assert cut == pytest.approx((0.60 + 0.55) / 2)
    assert point["reviewed_at_cut"] == 10 and point["reviewed_precision"] == pytest.approx(0.8)
    assert point["reviewed_precision_before"] == pytest.approx(8 / 12) and point["previous_cut"] == 0.5
    assert sum(s >= cut for s in sev) == 10 and sum(lab[i] for i, s in enumerate(sev) if s >= cut) / 10 >= 0.8
    # Precise enough already: the cut stays; the rule never lowers it, whatever lies below.
    assert feedback_cut(sev, [True] * 12, 0.5, 0.8, min_reviewed=5)[0] == 0.5
    cut2, point2 = feedback_cut(sev + [0.1, 0.2], lab + [True, True], 0.5, 0.8, min_reviewed=5)
    assert cut2 == cut and point2["ignored_below_cut"] == 2
    # Equal severities are never split by a cut.
    cut3, _ = feedback_cut([0.9] * 5 + [0.8] * 5, [True] * 5 + [True, True, False, False, False], 0.5, 0.9,
                           min_reviewed=5)
    assert cut3 == pytest.approx(0.85)


def test_feedback_refuses_what_it_cannot_decide():
    with pytest.raises(ValueError, match="3 decisions at or above the scan's cut 0.5000; at least 10"):
        feedback_cut([0.9, 0.8, 0.7, 0.1], [True] * 4, 0.5, 0.8)
    with pytest.raises(ValueError, match="no cut reaches precision 0.9 on the reviewed listings: the best with at "
                                         "least 3 is 0.667"):
        feedback_cut([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 0.5, 0.9, min_reviewed=3)


def _decisions_csv(path, ids_labels) -> str:
    path.write_text("\n".join([HEADER] + [f"{i},{'confirmed' if y else 'false_alarm'},colour,0.9,{SHA}"
                                          for i, y in ids_labels]) + "\n")
    return str(path)


def test_calibrate_with_data_fits_the_decisions_only_when_there_are_enough_of_each(tmp_path, model_dir):
    """--feedback with --data: at least 50 of each label join the listing curve's fit (the
    check curves stay the data's); fewer only move the cut."""
    sample_shards(tmp_path / "in", 140, 2)
    ids = [r for f in sorted((tmp_path / "in").glob("*.parquet"))
           for r in pq.read_table(f, columns=["listing_id"]).column(0).to_pylist()]
    common = ["calibrate", "--model", model_dir, "--data", str(tmp_path / "in" / "*.parquet"), "--precision", "0.05",
              "--prevalence", "0.5"]

    def run(*extra: str) -> dict:
        out = tmp_path / f"c{len(list(tmp_path.glob('c*.json')))}.json"
        assert cli.main([*common, *extra, "--write", str(out)]) == 0
        return json.loads(out.read_text())
    plain = run()
    many = _decisions_csv(tmp_path / "many.csv", [(i, k < 60) for k, i in enumerate(ids[:120])] + [("gone", True)])
    few = _decisions_csv(tmp_path / "few.csv", [(i, k < 20) for k, i in enumerate(ids[:40])])
    fed, small = run("--feedback", many), run("--feedback", few)
    assert fed["fitted_on"]["feedback"] | {"sha256": None} == {
        "file": many, "sha256": None, "decisions": 121, "confirmed": 61, "false_alarm": 60,
        "scan_calibration_sha256": SHA, "found_in_data": 120}
    assert fed["operating_point"]["feedback_in_fit"] is True and small["operating_point"]["feedback_in_fit"] is False
    assert fed["listing"] != plain["listing"]                   # 60 + 60 labels joined the listing curve's fit
    assert small["listing"] == plain["listing"] and small["checks"] == fed["checks"] == plain["checks"]
    for policy in (fed, small):
        point = policy["operating_point"]
        assert policy["cut"] >= point["previous_cut"] and point["rule"] == "feedback"
        assert 0 <= point["expected_recall"] <= 1

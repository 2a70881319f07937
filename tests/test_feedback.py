"""Reviewers' decisions: the reader of report.html's CSV and JSON exports (hostile input gets
one-line errors naming the row) and the rule that turns them into a cut
(ecomatch_model.verdict.feedback_cut)."""
from __future__ import annotations

import json

import pytest

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

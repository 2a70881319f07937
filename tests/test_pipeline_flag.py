"""FlagViolations: verdicts, severity, worst kind, reasons; and the progress log."""
from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given
from hypothesis import strategies as st
from pipeline_fixtures import fn_api_pipeline

from ecomatch_model.api import AttributeScore, ListingScore
from transforms.flag import Finding, FlagViolations, Verdict, flag_listing
from transforms.progress import ProgressLog
from transforms.score import ScoredListing


def attr(kind: str, value: str, score: float, threshold: float, suggestion: str = "", sugg: float = 0.0):
    return AttributeScore(kind, value, (0, 1), score, threshold, suggestion, sugg, np.zeros((2, 2)))


def scored(lid: str, match: float, attrs: list[AttributeScore], origins: list[str] | None = None,
           match_threshold: float = 0.2) -> ScoredListing:
    return ScoredListing(lid, "s.parquet", f"h-{lid}", origins or ["title"] * len(attrs),
                         ListingScore(match, match_threshold, attrs))


def explained(listing: ScoredListing, j: int, value: str, match: float, score: float) -> ScoredListing:
    s = listing.score
    s.explained, s.explained_value, s.explained_match, s.explained_score = j, value, match, score
    return listing


CASES = [
    (scored("ok", 0.6, [attr("colour", "red", 0.9, 0.5, "maroon", 0.3)]),
     Verdict("ok", "ok", (1 + max((0.2 - 0.6) / 2, 0.5 - 0.9)) / 2, 0.6, None, "h-ok")),
    (scored("col", 0.5, [attr("colour", "red", 0.1, 0.4, "navy blue", 0.9), attr("article_type", "dress", 0.3, 0.5,
                                                                                 "shirt", 0.6)]),
     Verdict("col", "violation", (1 + 0.30000000000000004) / 2, 0.5, "colour", "h-col",
             ("title says Red; the image looks Navy Blue (colour 0.10 < threshold 0.40; Navy Blue 0.90)",
              "title says Dress; the image looks Shirt (article_type 0.30 < threshold 0.50; Shirt 0.60)"),
             (Finding("colour", "red", 0.1, 0.4, "navy blue", 0.9), Finding("article_type", "dress", 0.3, 0.5,
                                                                             "shirt", 0.6)))),
    (scored("glob", -0.4, [attr("colour", "red", 0.8, 0.4)]),
     Verdict("glob", "violation", (1 + 0.30000000000000004) / 2, -0.4, "match", "h-glob",
             ("the image does not match the title (match -0.40 < threshold 0.20)",))),
    (scored("both", -0.6, [attr("pattern", "striped", 0.45, 0.5, "", 0.0)], ["pattern"]),
     Verdict("both", "violation", (1 + 0.4) / 2, -0.6, "pattern", "h-both",
             ("column pattern says Striped; the image does not look Striped (pattern 0.45 < threshold 0.50)",
              "the image does not match the title (match -0.60 < threshold 0.20)"),
             (Finding("pattern", "striped", 0.45, 0.5, None, None),))),
    (scored("bare", 0.2, []), Verdict("bare", "ok", 0.5, 0.2, None, "h-bare")),
    # The global match fails alone; swapping the article type restores it: that attribute is
    # blamed and listed, with the value that restores the match as its suggestion.
    (explained(scored("expl", -0.4, [attr("colour", "red", 0.8, 0.4), attr("article_type", "tshirt", 0.92, 0.9,
                                                                             "cap", 0.2)],
                      ["title", "article_type"]), 1, "backpack", 0.35, 0.04),
     Verdict("expl", "violation", (1 + 0.30000000000000004) / 2, -0.4, "article_type", "h-expl",
             ("column article_type says Tshirt; with Backpack instead the image matches the title "
              "(match 0.35 >= threshold 0.20)",
              "the image does not match the title (match -0.40 < threshold 0.20)"),
             (Finding("article_type", "tshirt", 0.92, 0.9, "backpack", 0.04),))),
    # A failing attribute is blamed before any explanation of the match.
    (explained(scored("fail", -0.4, [attr("colour", "red", 0.1, 0.4, "blue", 0.9), attr("pattern", "solid", 0.9,
                                                                                         0.5)]), 1, "striped", 0.3, 0.5),
     Verdict("fail", "violation", (1 + 0.30000000000000004) / 2, -0.4, "colour", "h-fail",
             ("title says Red; the image looks Blue (colour 0.10 < threshold 0.40; Blue 0.90)",
              "the image does not match the title (match -0.40 < threshold 0.20)"),
             (Finding("colour", "red", 0.1, 0.4, "blue", 0.9),))),
]


@pytest.mark.parametrize("listing, verdict", CASES, ids=[c[0].listing_id for c in CASES])
def test_flag_listing(listing, verdict):
    assert flag_listing(listing) == verdict


def test_rows_follow_the_report_layout():
    v = flag_listing(CASES[3][0])
    assert v.score_row() == {"listing_id": "both", "verdict": "violation", "severity": 0.7, "match_score": -0.6,
                             "worst_kind": "pattern", "content_hash": "h-both"}
    assert v.violation_row() == {
        "listing_id": "both", "severity": 0.7, "match_score": -0.6, "worst_kind": "pattern", "reasons": list(v.reasons),
        "attributes": [{"kind": "pattern", "value": "striped", "score": 0.45, "threshold": 0.5,
                        "suggested_value": None, "suggested_score": None}]}


unit = st.floats(0, 1)


@given(match=st.floats(-1, 1), mt=st.floats(-1, 1), scores=st.lists(st.tuples(unit, unit), max_size=4))
def test_severity_is_bounded_and_splits_at_one_half(match, mt, scores):
    v = flag_listing(scored("x", match, [attr("colour", "red", s, t) for s, t in scores], match_threshold=mt))
    assert 0.0 <= v.severity <= 1.0
    assert (v.verdict == "violation") == (v.worst_kind is not None) == bool(v.reasons)
    assert v.severity >= 0.5 if v.verdict == "violation" else v.severity <= 0.5


@given(match=st.floats(-1, 1), low=unit, high=unit)
def test_severity_falls_as_a_score_rises(match, low, high):
    low, high = sorted((low, high))
    worse = flag_listing(scored("x", match, [attr("colour", "red", low, 0.5)]))
    better = flag_listing(scored("x", match, [attr("colour", "red", high, 0.5)]))
    assert worse.severity >= better.severity


def test_flag_violations_transform():
    with fn_api_pipeline() as p:
        out = p | beam.Create([c[0] for c in CASES]) | FlagViolations()
        assert_that(out, equal_to([c[1] for c in CASES]))


def test_progress_log_reports_count_and_rate(caplog):
    progress = ProgressLog("listings", interval=0.05)
    threads = sum(t.name == "ecomatch-progress" for t in threading.enumerate())
    with caplog.at_level(logging.INFO, logger="transforms.progress"):
        progress.add(3)
        progress.start()
        progress.start()
        time.sleep(0.2)
    assert sum(t.name == "ecomatch-progress" for t in threading.enumerate()) == threads + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.progress"]
    assert lines and all(line.startswith("progress: 3 listings (") and line.endswith(" listings/s)") for line in lines)

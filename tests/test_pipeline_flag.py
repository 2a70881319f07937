"""FlagViolations: verdicts, severity, worst kind, reasons; and the progress log."""
from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from pipeline_fixtures import fn_api_pipeline

from conftest import threshold_policy

from ecomatch_model.scores import AttributeScore, ListingScore, Swap
from dataclasses import replace

from transforms.decode import ListingContext
from transforms.flag import FlagViolations, Verdict, flag_listing
from transforms.progress import ProgressLog
from transforms.score import ScoredListing

POLICY = threshold_policy({"match": 0.2, "colour": 0.4, "article_type": 0.5, "pattern": 0.5})


def attr(kind: str, value: str, score: float, suggestion: str = "", sugg: float = 0.0):
    return AttributeScore(kind, value, (0, 1), score, suggestion, sugg, np.zeros((2, 2)))


def scored(lid: str, match: float, attrs: list[AttributeScore], origins: list[str] | None = None,
           swap: Swap | None = None) -> ScoredListing:
    return ScoredListing(lid, "s.parquet", f"h-{lid}", origins or ["title"] * len(attrs), ListingScore(match, attrs),
                         swap)


LISTINGS = [
    scored("ok", 0.6, [attr("colour", "red", 0.9, "maroon", 0.3)]),
    scored("col", 0.5, [attr("colour", "red", 0.1, "navy blue", 0.9), attr("article_type", "dress", 0.3, "shirt", 0.6)]),
    scored("glob", -0.4, [attr("colour", "red", 0.8)]),
    scored("both", -0.6, [attr("pattern", "striped", 0.3, "", 0.0)], ["pattern"]),
    scored("bare", 0.6, []),
    scored("expl", -0.4, [attr("colour", "red", 0.8), attr("article_type", "tshirt", 0.92, "cap", 0.2)],
           ["title", "article_type"], Swap(1, "backpack", 0.35, 0.9)),
]


def test_flag_listing_is_the_policy_verdict():
    for x in LISTINGS:
        a = POLICY.assess(x.score, x.origins, x.swap)
        v = flag_listing(x, POLICY)
        assert v == Verdict(x.listing_id, "violation" if a.violation else "ok", a.p_violation, x.score.match,
                            a.worst_kind, x.content_hash, a.reasons, a.findings, source="s.parquet")
    kinds = {x.listing_id: flag_listing(x, POLICY).worst_kind for x in LISTINGS}
    assert kinds == {"ok": None, "col": "colour", "glob": "match", "both": "pattern", "bare": None,
                     "expl": "article_type"}


def test_rows_follow_the_report_layout():
    v = flag_listing(LISTINGS[3], POLICY)
    assert v.score_row() == {"listing_id": "both", "verdict": "violation", "severity": v.severity, "match_score": -0.6,
                             "worst_kind": "pattern", "content_hash": "h-both"}
    assert 0.5 < v.severity <= 1.0
    row = v.violation_row()
    assert row["reasons"] == list(v.reasons) and row["reasons"][0].startswith("column pattern says Striped; the image "
                                                                             "does not look Striped")
    assert row["attributes"] == [{"kind": "pattern", "value": "striped", "score": 0.3,
                                  "p_contradicted": v.attributes[0].p_contradicted, "suggested_value": None,
                                  "suggested_score": None}]


def test_violations_keep_the_listing_context_and_every_verdict_its_seller():
    ctx = ListingContext("Red Dress", None, (("seller_id", "s7"), ("product_url", "u")))
    ok, bad = (flag_listing(replace(x, context=ctx), POLICY, "seller_id") for x in (LISTINGS[0], LISTINGS[1]))
    assert (ok.verdict, ok.seller, ok.context) == ("ok", "s7", None)            # nothing more kept for ok listings
    assert (bad.verdict, bad.seller, bad.context) == ("violation", "s7", ctx)
    row = bad.violation_row(["product_url", "seller_id"])
    assert {k: row[k] for k in ("title", "image_uri", "source", "product_url", "seller_id")} == {
        "title": "Red Dress", "image_uri": None, "source": "s.parquet", "product_url": "u", "seller_id": "s7"}
    assert flag_listing(LISTINGS[1], POLICY, "seller_id").seller is None


def test_flag_violations_transform():
    with fn_api_pipeline() as p:
        out = p | beam.Create(LISTINGS) | FlagViolations(POLICY)
        assert_that(out, equal_to([flag_listing(x, POLICY) for x in LISTINGS]))


def test_progress_log_reports_count_and_rate(caplog):
    progress = ProgressLog("widgets", interval=0.05)    # a unit of its own: other tests' threads log too
    threads = sum(t.name == "ecomatch-progress" for t in threading.enumerate())
    with caplog.at_level(logging.INFO, logger="transforms.progress"):
        progress.add(3)
        progress.start()
        progress.start()
        time.sleep(0.2)
    assert sum(t.name == "ecomatch-progress" for t in threading.enumerate()) == threads + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.progress" and " widgets" in r.getMessage()]
    assert lines and all(line.startswith("progress: 3 widgets (") and line.endswith(" widgets/s)") for line in lines)

"""The verdict policy (ecomatch_model.verdict): curves, p_violation, blame, reasons, the
calibration file's validation, fitting and the operating point."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import threshold_policy
from hypothesis import given
from hypothesis import strategies as st

from ecomatch_model.scores import AttributeScore, ListingScore, Swap
from ecomatch_model.verdict import (FORMAT, MAX_LOG_LR, CalibrationData, CalibrationError, Curve, Policy, choose_cut,
                                    expected_at, fit_log_lr, fit_policy, policy_bytes, read_policy)

KINDS = ["colour", "article_type", "pattern"]


def attr(kind, value, score, suggestion="", sugg=0.0):
    return AttributeScore(kind, value, (0, 1), score, suggestion, sugg, np.zeros((2, 2)))


def test_curve_interpolates_extrapolates_and_clips():
    c = Curve((0.0, 1.0, 2.0), (0.0, 2.0, 3.0))
    assert c(0.5) == pytest.approx(1.0) and c(1.5) == pytest.approx(2.5)
    # Beyond the knots: about the end values, still rising gently (no ties), clipped.
    assert 3.0 < c(3.0) < 3.02 and -0.02 < c(-1.0) < 0.0
    assert c(1e6) == MAX_LOG_LR and c(-1e6) == -MAX_LOG_LR
    d = Curve((0.0, 1.0), (2.0, -2.0))                   # falling: so does its extension
    assert 2.0 < d(-1.0) < 2.02 and -2.02 < d(2.0) < -2.0
    assert c(math.inf) == 3.0 and c(-math.inf) == 0.0


def test_kinds_are_comparable_and_the_strongest_evidence_is_blamed():
    # Thresholds six-fold apart: a colour score just under its low threshold must outrank an
    # article-type score barely under its high one when its evidence is stronger.
    policy = threshold_policy({"colour": 0.07, "article_type": 0.37, "match": 0.2})
    s = ListingScore(0.6, [attr("article_type", "dress", 0.36, "shirt", 0.9), attr("colour", "red", 0.02, "blue", 0.8)])
    a = policy.assess(s)
    assert a.violation and a.worst_kind == "colour" and a.culprit == 1
    assert [f.kind for f in a.findings] == ["colour", "article_type"]
    assert a.reasons[0] == ("title says Red; the image looks Blue (colour 0.02, probability of a contradiction "
                            f"{a.findings[0].p_contradicted:.2f}; Blue 0.80)")
    ok = policy.assess(ListingScore(0.6, [attr("colour", "red", 0.5)]))
    assert not ok.violation and ok.worst_kind is None and ok.reasons == () and ok.findings == ()


def test_a_suggestion_is_stated_only_when_it_is_a_real_alternative():
    policy = threshold_policy({"gender": 0.5})
    a = policy.assess(ListingScore(0.6, [attr("gender", "men", 0.01, "unisex", 0.004)]), ["gender"])
    assert a.reasons == (f"column gender says Men; the image does not look Men (gender 0.01, probability of a "
                         f"contradiction {a.findings[0].p_contradicted:.2f})",)


def test_swap_search_is_asked_for_and_blames_the_swapped_mention_only_when_it_restores_the_listing():
    policy = threshold_policy({"match": 0.2, "article_type": 0.5})
    s = ListingScore(-0.4, [attr("article_type", "tshirt", 0.9, "cap", 0.2)])
    assert policy.needs_swap_search(s)
    assert not policy.needs_swap_search(ListingScore(-0.4, []))          # nothing to swap
    assert not policy.needs_swap_search(ListingScore(0.6, s.attributes))  # not a violation
    blamed = policy.assess(s, ["article_type"], Swap(0, "backpack", 0.5, 0.9))
    assert blamed.worst_kind == "article_type" and blamed.culprit == 0
    assert blamed.findings[0].suggested_value == "backpack"
    assert blamed.reasons[0] == ("column article_type says Tshirt; with Backpack instead the image matches the title "
                                 "(match 0.50 instead of -0.40)")
    # A swap whose match is still poor explains nothing: the global match is blamed.
    assert policy.assess(s, swap=Swap(0, "backpack", -0.3, 0.9)).worst_kind == "match"
    assert policy.assess(s).worst_kind == "match"


@given(match=st.floats(-1, 1), scores=st.lists(st.floats(0, 1), max_size=5))
def test_p_violation_is_a_probability_and_the_verdict_follows_the_cut(match, scores):
    policy = threshold_policy({"match": 0.2, "colour": 0.4}, cut=0.3)
    a = policy.assess(ListingScore(match, [attr("colour", "red", v) for v in scores]))
    assert 0.0 <= a.p_violation <= 1.0
    assert a.violation == (a.p_violation >= 0.3) == (a.worst_kind is not None) == bool(a.reasons)


@given(match=st.floats(-1, 1), low=st.floats(0, 1), high=st.floats(0, 1))
def test_p_violation_falls_as_a_score_rises(match, low, high):
    policy = threshold_policy({"match": 0.2, "colour": 0.4})
    low, high = sorted((low, high))
    worse = policy.p_violation(ListingScore(match, [attr("colour", "red", low)]))
    better = policy.p_violation(ListingScore(match, [attr("colour", "red", high)]))
    assert worse >= better


def test_fit_log_lr_is_monotone_and_separates():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 500), rng.normal(2, 1, 500)
    c = fit_log_lr(neg, pos)
    assert all(b >= a for a, b in zip(c.y, c.y[1:])) and all(b > a for a, b in zip(c.x, c.x[1:]))
    assert c(3.0) > 1.5 and c(-1.0) < -1.5
    # Equal normal variances: the true log likelihood ratio at the midpoint is 0.
    assert abs(c(1.0)) < 0.6
    # Different raw values rank apart (no flat steps between knots).
    assert c(0.9) < c(1.1)


def _data(rng, n=400):
    clean = [ListingScore(rng.normal(0.6, 0.1), [attr("colour", "red", rng.beta(8, 2))]) for _ in range(n)]
    bad_colour = [("colour", ListingScore(rng.normal(0.55, 0.1), [attr("colour", "blue", rng.beta(2, 8))]))
                  for _ in range(n)]
    bad_image = [("image", ListingScore(rng.normal(0.1, 0.15), [attr("colour", "red", rng.beta(5, 5))]))
                 for _ in range(n)]
    corrupted = bad_colour + bad_image
    return CalibrationData({"colour": [s.attributes[0].score for s in clean], "match": [s.match for s in clean]},
                           {"colour": [s.attributes[0].score for _, s in bad_colour],
                            "match": [s.match for _, s in bad_image]}, clean, corrupted)


def test_fit_policy_and_choose_cut_reach_the_precision_asked_for():
    data = _data(np.random.default_rng(1))
    policy = fit_policy(data, prevalence=0.02)
    assert set(policy.checks) == {"colour", "match"}
    p0 = np.asarray([policy.p_violation(s) for s in data.clean])
    p1 = {k: np.asarray([policy.p_violation(s) for kk, s in data.corrupted if kk == k]) for k in ("colour", "image")}
    cut, point = choose_cut(p0, p1, 0.02, precision=0.5)
    assert point["expected_precision"] >= 0.5 and point == expected_at(cut, p0, p1, 0.02)
    # A looser cut would miss the precision or gain no recall.
    looser = expected_at(cut * 0.9, p0, p1, 0.02)
    assert looser["expected_precision"] < 0.5 or looser["expected_recall"] == point["expected_recall"]
    budget_cut, budget = choose_cut(p0, p1, 0.02, review_budget=100)
    assert budget["flags_per_10k"] <= 100
    assert expected_at(budget_cut - 1e-3, p0, p1, 0.02)["flags_per_10k"] > 100 or budget_cut <= 1e-3
    # p_violation is stated at the prevalence: at 2% the clean listings' mean stays small.
    assert p0.mean() < 0.05


def _policy_json(**over):
    data = {"format": FORMAT, "prevalence": 0.02, "cut": 0.3, "checks": {"colour": {"x": [0.1, 0.5], "y": [2.0, -2.0]},
                                                                        "match": {"x": [0.0], "y": [0.0]}},
            "listing": {"x": [-5.0, 5.0], "y": [-5.0, 5.0]}, "operating_point": {"precision": 0.5}, "fitted_on": {}}
    data.update(over)
    return data


def test_policy_round_trips_through_its_file():
    policy = Policy.from_json(_policy_json(), KINDS)
    again = read_policy(policy_bytes(policy), KINDS, "x.json")
    assert again == policy and again.cut == 0.3


@pytest.mark.parametrize("over, key", [
    ({"cut": float("nan")}, "cut"),
    ({"cut": 1.5}, "cut"),
    ({"prevalence": 0.0}, "prevalence"),
    ({"checks": {"colour": {"x": [0.1, float("nan")], "y": [1.0, 0.0]}}}, "checks.colour.x[1]"),
    ({"checks": {"colour": {"x": [0.1, 0.5], "y": [-1.0, 1.0]}}}, "checks.colour.y: not monotone"),
    ({"checks": {"colour": {"x": [0.5, 0.1], "y": [1.0, 0.0]}}}, "checks.colour.x: must be strictly increasing"),
    ({"checks": {"size": {"x": [0.1], "y": [0.0]}}}, "checks.size: unknown kind"),
    ({"listing": {"x": [0.0, 1.0], "y": [1.0, 0.0]}}, "listing.y: not monotone"),
    ({"listing": {"x": [0.0], "y": [99.0]}}, "listing.y"),
    ({"thresholds": {}}, "unknown key(s) thresholds"),
    ({"format": "other"}, "format"),
])
def test_bad_calibrations_are_refused_naming_file_and_key(over, key):
    text = json.dumps(_policy_json(**over))
    with pytest.raises(CalibrationError) as err:
        read_policy(text, KINDS, "cal/calibration.json")
    assert str(err.value).startswith("cal/calibration.json: ") and key in str(err.value)


def test_nan_literal_in_a_file_is_refused():
    text = json.dumps(_policy_json()).replace('"cut": 0.3', '"cut": NaN')
    with pytest.raises(CalibrationError, match="cut"):
        read_policy(text, KINDS, "c.json")

import numpy as np
import pytest

from ecomatch_model.api import AttributeScore, ListingScore
from ecomatch_model.evaluate import EvalSet, calibrate, detection_data, flags, kind_score


def _ls(match, *attrs):
    return ListingScore(match, 0.2, [AttributeScore(k, v, (0, 1), s, t, "", 0.0, np.zeros((2, 2))) for k, v, s, t in attrs])


def test_flagging_rule_and_worst_kind():
    ok = _ls(0.5, ("colour", "red", 0.9, 0.5), ("article_type", "shirt", 0.8, 0.3))
    assert not ok.flagged and ok.worst_kind is None and ok.failing() == []
    bad = _ls(0.5, ("colour", "red", 0.45, 0.5), ("article_type", "shirt", 0.1, 0.3), ("pattern", "striped", 0.2, 0.6))
    assert bad.flagged and bad.failing() == [2, 1, 0] and bad.worst_kind == "pattern"
    only_match = _ls(0.1, ("colour", "red", 0.9, 0.5))
    assert only_match.flagged and only_match.worst_kind == "match"
    # What-if thresholds, as calibration uses them.
    assert flags(ok, {"colour": 0.95}) and not flags(bad, {"colour": 0.1, "article_type": 0.0, "pattern": 0.0})


def test_kind_score_takes_lowest_mention():
    s = _ls(0.3, ("colour", "red", 0.9, 0.5), ("colour", "blue", 0.2, 0.5))
    assert kind_score(s, "colour") == 0.2 and kind_score(s, "image") == 0.3 and kind_score(s, "pattern") is None


def _ev(clean_colour, clean_match):
    clean = [_ls(m, ("colour", "red", c, 0.5)) for c, m in zip(clean_colour, clean_match)]
    n = len(clean)
    return EvalSet(None, None, clean, {
        "colour": (np.arange(n), [_ls(0.9, ("colour", "blue", 0.1, 0.5))] * n, np.zeros(n, int)),
        "image": (np.arange(n), [_ls(0.1, ("colour", "red", 0.9, 0.5))] * n, np.full(n, -1))})


def test_calibrate_caps_each_kind_at_its_own_precision():
    ev = _ev([0.9, 0.8, 0.7, 0.35], [0.6] * 4)
    labels, score = detection_data(ev, "colour")
    assert labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and score.tolist()[:4] == [0.1] * 4
    # Colour: every corrupted copy (0.1) below every clean one: the cap is (0.1 + 0.35) / 2.
    assert calibrate(ev, 0.9) == pytest.approx({"colour": 0.225, "match": 0.35})


def test_calibrate_keeps_union_precision():
    # Listing 0 has a low colour score, listing 9 a low match: alone each kind reaches 0.9
    # precision at 0.55 (10 of 11), but together they would flag two clean listings.
    ev = _ev([0.2] + [0.9] * 9, [0.9] * 9 + [0.2])
    assert calibrate(ev, 0.9) == pytest.approx({"colour": 0.2, "match": 0.2})
    mixed_flags = [flags(s, calibrate(ev, 0.9)) for s in ev.clean]
    assert not any(mixed_flags)


def test_calibrate_disables_blind_kinds():
    ev = _ev([0.9] * 4, [0.6] * 4)
    ev.corrupted["colour"] = (np.arange(4), [_ls(0.9, ("colour", "blue", 0.9, 0.5))] * 4, np.zeros(4, int))
    assert calibrate(ev, 0.9)["colour"] == 0.0

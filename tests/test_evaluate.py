import numpy as np
import pytest

from ecomatch_model.api import AttributeScore, ListingScore
from ecomatch_model.evaluate import EvalSet, calibrate, detection_data, flags, kind_score


def _ls(match, *attrs):
    return ListingScore(match, 0.2, [AttributeScore(k, v, (0, 1), s, t, "", 0.0, np.zeros((2, 2))) for k, v, s, t in attrs])


def test_flags_and_worst_attribute():
    ok = _ls(0.5, ("colour", "red", 0.9, 0.5), ("article_type", "shirt", 0.8, 0.3))
    assert flags(ok) == (False, 0)   # margins 0.4 (colour) and 0.5: colour is the worst
    bad = _ls(0.5, ("colour", "red", 0.45, 0.5), ("article_type", "shirt", 0.1, 0.3))
    assert flags(bad) == (True, 1)
    assert flags(_ls(0.1))[0] is True and flags(_ls(0.1))[1] is None


def test_kind_score_takes_lowest_mention():
    s = _ls(0.3, ("colour", "red", 0.9, 0.5), ("colour", "blue", 0.2, 0.5))
    assert kind_score(s, "colour") == 0.2 and kind_score(s, "image") == 0.3 and kind_score(s, "pattern") is None


def test_calibrate_on_hand_made_scores():
    clean = [_ls(0.6, ("colour", "red", s, 0.5)) for s in (0.9, 0.8, 0.7, 0.35)]
    bad = [_ls(0.1, ("colour", "blue", s, 0.5)) for s in (0.1, 0.2, 0.3, 0.85)]
    ev = EvalSet(None, None, clean, {"colour": (np.arange(4), bad, np.zeros(4, int)),
                                     "image": (np.arange(4), bad, np.full(4, -1))})
    labels, score = detection_data(ev, "colour")
    assert labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    t = calibrate(ev, 0.75)
    # Lowest 4 scores: 0.1 0.2 0.3 (bad) 0.35 (clean) -> precision 0.75 at cut (0.35 + 0.7) / 2.
    assert t["colour"] == pytest.approx(0.525)
    assert t["match"] == pytest.approx(0.35)  # every swap (0.1) below every clean listing (0.6)
    assert calibrate(ev, 1.01)["colour"] == 0.0 and calibrate(ev, 1.01)["match"] == -1.0

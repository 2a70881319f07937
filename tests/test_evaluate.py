"""Evaluation and calibration data: corruptions from the catalogue's own columns, and the
data the policy is fitted on."""
from __future__ import annotations

import numpy as np

from ecomatch_model.data import Listings
from ecomatch_model.evaluate import COLOUR_FAMILIES, EvalSet, Variant, _replace_words, calibration_data, \
    column_corruptions, recall_at_fpr
from ecomatch_model.scores import AttributeScore, ListingScore


def _listings() -> Listings:
    titles = ["Ardent Men Navy Blue Cotton Tshirt", "Kestrel Women Red Dress", "Puma Men Black Casual Shoes",
              "Titan Women Silver Watch"]
    cols = {"base_colour": ["Navy Blue", "Red", "Black", "Silver"],
            "article_type": ["Tshirts", "Dresses", "Casual Shoes", "Watches"],
            "sub_category": ["Topwear", "Dress", "Shoes", "Watches"],
            "gender": ["Men", "Women", "Men", "Women"]}
    return Listings(["a", "b", "c", "d"], titles, [b"x"] * 4, cols)


def test_replace_words_keeps_number_and_whole_words():
    assert _replace_words("Ardent Men Navy Blue Tshirt", "Navy Blue", "Red") == "Ardent Men Red Tshirt"
    assert _replace_words("Ardent Men Navy Blue Tshirt", "Tshirts", "Watches") == "Ardent Men Navy Blue Watch"
    assert _replace_words("Kestrel Women Red Dress", "Men", "Women") == "Kestrel Women Red Dress"
    assert _replace_words("Kestrel Men Red Dress", "men", "Women") == "Kestrel Women Red Dress"


def test_column_corruptions_change_family_group_and_photo():
    listings = _listings()
    variants = column_corruptions(listings, np.random.default_rng(0), ("colour", "article_type", "image", "gender"))
    by = {(v.kind, v.row): v for v in variants}
    assert {k for k, _ in by} == {"colour", "article_type", "image", "gender"}
    for (kind, i), v in by.items():
        old = listings.rows()[i]
        if kind == "colour":
            new = v.columns["base_colour"]
            assert not COLOUR_FAMILIES[new.lower()] & COLOUR_FAMILIES[old["base_colour"].lower()]
            assert new in v.title and v.image_row == i
        elif kind == "article_type":
            j = listings.column("article_type").index(v.columns["article_type"])
            assert listings.column("sub_category")[j] != old["sub_category"] and v.image_row == i
        elif kind == "image":
            assert listings.column("sub_category")[v.image_row] != old["sub_category"] and v.title == listings.titles[i]
        else:
            assert v.columns["gender"] == {"Men": "Women", "Women": "Men"}[old["gender"]]
    # Navy Blue and Black are of other families; Silver's family (grey) shares none with them.
    assert by[("colour", 0)].title.startswith("Ardent Men ") and "Navy" not in by[("colour", 0)].title


def _ls(match, *attrs):
    return ListingScore(match, [AttributeScore(k, v, (0, 1), s, "", 0.0, np.zeros((2, 2))) for k, v, s in attrs])


def test_calibration_data_pairs_changed_mentions_with_unmodified_ones():
    clean = [_ls(0.6, ("colour", "red", 0.9), ("article_type", "dress", 0.8))]
    corrupted = [_ls(0.5, ("colour", "blue", 0.2), ("colour", "red", 0.7), ("article_type", "dress", 0.8)),
                 _ls(0.1, ("colour", "red", 0.5))]
    variants = [Variant("colour", 0, "t", {}, 0), Variant("image", 0, "t", {}, 1)]
    data = calibration_data(EvalSet(None, clean, variants, corrupted))
    assert data.check_neg == {"match": [0.6], "colour": [0.9], "article_type": [0.8]}
    assert data.check_pos == {"match": [0.1], "colour": [0.2]}
    assert [k for k, _ in data.corrupted] == ["colour", "image"]


def test_recall_at_fpr_never_exceeds_the_false_positive_budget():
    p0 = np.linspace(0, 1, 200)
    p1 = np.array([0.999, 0.995, 0.5])
    assert recall_at_fpr(p0, p1, 0.01) == 2 / 3            # two clean listings above the cut at most
    assert (p0 > np.sort(p0)[::-1][2]).mean() <= 0.01


def _table_listings(table) -> Listings:
    cols = ("base_colour", "article_type", "sub_category", "gender")
    return Listings(table.column("listing_id").to_pylist(), table.column("title").to_pylist(),
                    table.column("image").to_pylist(), {c: table.column(c).to_pylist() for c in cols})


def test_photo_agreement_joins_by_id_and_compares_the_verdicts():
    from ecomatch_model import load
    from ecomatch_model.evaluate import photo_agreement
    from ecomatch_model.sample import make_listings
    matcher = load("default")
    small = _table_listings(make_listings(48, seed=9, mismatch_rate=0.0, size=64))
    large = _table_listings(make_listings(48, seed=9, mismatch_rate=0.0, size=160))
    assert small.ids == large.ids and small.images != large.images     # the same listings, other photos
    same = photo_agreement(matcher, matcher.policy, small, small)
    assert same["unmodified"]["listings"] == 48 and same["corrupted"]["listings"] > 48
    assert same["all"]["verdict_agreement"] == 1.0 and same["all"]["mean_abs_diff_p_violation"] == 0.0
    # Only the ids both hold are compared; other photos move p_violation somewhat.
    other = photo_agreement(matcher, matcher.policy, small, large.take(range(40)))
    assert other["unmodified"]["listings"] == 40
    assert 0 < other["all"]["mean_abs_diff_p_violation"] < 0.5
    assert 0.5 < other["all"]["verdict_agreement"] <= 1.0
    flagged = other["corrupted"]["flagged_a"]
    assert 0 < flagged <= 1 and other["unmodified"]["flagged_a"] < flagged

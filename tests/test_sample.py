"""Tests for the deterministic synthetic catalogue listings (ecomatch_model.sample)."""
from __future__ import annotations

import io
import os
import re
from itertools import combinations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ecomatch_model.sample import (ARTICLES, BRANDS, COLOURS, MISMATCH_KINDS, PATTERNS, SCHEMA,
                                   STYLE_WORDS, make_listings, render_image, write_sample)
from ecomatch_model.text import Lexicon, words

LEX = Lexicon.from_seeds()
N, SEED, RATE, SIZE = 80, 7, 0.2, 64
COLUMNS = ["listing_id", "title", "image", "gender", "master_category", "sub_category",
           "article_type", "base_colour", "pattern", "material", "mismatch_kind", "mismatch_truth"]
PALETTE = np.array(list(COLOURS.values()), np.float64)
NAMES = list(COLOURS)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_listings(N, seed=SEED, mismatch_rate=RATE, size=SIZE)


@pytest.fixture(scope="module")
def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def colour_votes(image: Image.Image) -> np.ndarray:
    """Per COLOURS entry, how many item pixels (far from the border's median background)
    are nearest to it."""
    px = np.asarray(image.convert("RGB"), np.float64)
    bg = np.median(np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]]), axis=0)
    item = px[np.linalg.norm(px - bg, axis=-1) > 40]
    nearest = np.argmin(((item[:, None, :] - PALETTE[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=len(NAMES))


def decode(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg))


# ------------------------------------------------------------------ determinism
def test_same_arguments_give_identical_tables() -> None:
    a = make_listings(12, seed=3, size=48)
    b = make_listings(12, seed=3, size=48)
    assert a.equals(b)
    assert a.column("image").to_pylist() == b.column("image").to_pylist()


def test_different_seeds_differ() -> None:
    a = make_listings(12, seed=3, size=48)
    b = make_listings(12, seed=4, size=48)
    assert a.column("title").to_pylist() != b.column("title").to_pylist()
    assert all(x != y for x, y in zip(a.column("image").to_pylist(), b.column("image").to_pylist()))


def test_listing_does_not_depend_on_n() -> None:
    short = make_listings(5, seed=2, mismatch_rate=0.0, size=32)
    long = make_listings(9, seed=2, mismatch_rate=0.0, size=32)
    assert short.equals(long.slice(0, 5))


# ------------------------------------------------------------------ schema
def test_schema_rows_and_types(table: pa.Table, rows: list[dict]) -> None:
    assert table.column_names == COLUMNS
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == N
    for name in COLUMNS:
        expected = pa.binary() if name == "image" else pa.string()
        assert table.schema.field(name).type == expected
        assert table.column(name).null_count == 0
    assert [r["listing_id"] for r in rows] == [f"s{SEED}-{i:06d}" for i in range(N)]
    for r in rows[:10]:
        image = decode(r["image"])
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (SIZE, SIZE)


def test_columns_are_plausible_catalogue_values(rows: list[dict]) -> None:
    by_column = {a.article_type: (value, a) for value, a in ARTICLES.items()}
    for r in rows:
        value, article = by_column[r["article_type"]]
        assert (r["sub_category"], r["master_category"]) == (article.sub_category, article.master_category)
        assert r["gender"] in article.genders
        assert LEX.canonical("material", r["material"]) in article.materials
        assert r["material"] == r["material"].title() and r["pattern"] == r["pattern"].title()
        assert LEX.canonical("colour", r["base_colour"]) in COLOURS
        assert LEX.canonical("pattern", r["pattern"]) in PATTERNS
        if not article.fabric:
            assert r["pattern"] == "Solid"


# ------------------------------------------------------------------ mismatches
@pytest.mark.parametrize("n, rate", [(0, 0.2), (10, 0.0), (10, 0.3), (13, 0.5), (8, 1.0)])
def test_mismatch_count_and_rotation(n: int, rate: float) -> None:
    t = make_listings(n, seed=1, mismatch_rate=rate, size=24)
    kinds = [k for k in t.column("mismatch_kind").to_pylist() if k]
    assert len(kinds) == round(n * rate)
    assert kinds == [MISMATCH_KINDS[j % len(MISMATCH_KINDS)] for j in range(len(kinds))]


def test_fixture_mismatch_truth_only_on_mismatches(rows: list[dict]) -> None:
    kinds = [r["mismatch_kind"] for r in rows]
    assert sum(map(bool, kinds)) == round(N * RATE)
    assert {k: kinds.count(k) for k in MISMATCH_KINDS} == {k: round(N * RATE) // 4 for k in MISMATCH_KINDS}
    for r in rows:
        assert bool(r["mismatch_kind"]) == bool(r["mismatch_truth"])


def test_mismatches_cross_lexicon_groups() -> None:
    rows = make_listings(200, seed=SEED, mismatch_rate=1.0, size=16).to_pylist()
    for r in rows:
        kind, truth = r["mismatch_kind"], r["mismatch_truth"]
        claimed = {k: LEX.canonical(k, r[col]) for k, col in
                   (("colour", "base_colour"), ("article_type", "article_type"), ("pattern", "pattern"))}
        kind_of_truth = "article_type" if kind == "image" else kind
        assert truth in LEX.values_of(kind_of_truth)
        assert LEX.group(kind_of_truth, truth) != LEX.group(kind_of_truth, claimed[kind_of_truth])
        if kind == "pattern":
            assert ARTICLES[claimed["article_type"]].fabric


# ------------------------------------------------------------------ titles
def test_titles_mention_exactly_the_claimed_attributes(rows: list[dict]) -> None:
    for r in rows:
        mentions = LEX.extract(words(r["title"]))
        got = [(m.kind, m.value) for m in mentions]
        assert len(got) == len(set(m.kind for m in mentions)), r["title"]  # one mention per kind
        claims = {kind: LEX.canonical(kind, r[col]) for kind, col in
                  (("colour", "base_colour"), ("article_type", "article_type"),
                   ("pattern", "pattern"), ("material", "material"), ("gender", "gender"))}
        required = {"colour", "article_type", "gender"} | ({"pattern"} if claims["pattern"] != "solid" else set())
        assert required <= {k for k, _ in got}, r["title"]
        for kind, value in got:
            assert claims[kind] == value, (r["title"], kind)


def test_titles_vary_and_look_like_catalogue_titles(rows: list[dict]) -> None:
    titles = [r["title"] for r in rows]
    assert len(set(titles)) == len(titles)
    assert len({t.split()[0] for t in titles}) >= 10  # brands vary
    assert all(re.fullmatch(r"[A-Z][\w'&\- ]+", t) and "  " not in t for t in titles)
    assert any("'s " in t for t in titles) and any(" Men " in t or " Women " in t for t in titles)


def test_fillers_and_brands_name_no_attribute() -> None:
    for text in [*BRANDS, *(w for ws in STYLE_WORDS.values() for w in ws)]:
        assert LEX.extract(words(text)) == [], text


# ------------------------------------------------------------------ images
def test_solid_item_shows_intended_colour(rows: list[dict]) -> None:
    checked = 0
    for r in rows:
        if r["pattern"] != "Solid" or r["mismatch_kind"] not in ("", "colour"):
            continue
        shown = r["mismatch_truth"] or LEX.canonical("colour", r["base_colour"])
        votes = colour_votes(decode(r["image"]))
        assert NAMES[int(votes.argmax())] == shown, (r["listing_id"], r["article_type"])
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_are_visible_but_main_colour_dominates(pattern: str) -> None:
    votes = colour_votes(render_image("shirt", "green", pattern, np.random.default_rng(5), 64))
    share = votes[NAMES.index("green")] / votes.sum()
    assert NAMES[int(votes.argmax())] == "green"
    assert share > 0.85 if pattern == "solid" else 0.5 < share < 0.85


def test_render_is_rgb_of_requested_size_and_rejects_bad_requests() -> None:
    image = render_image("watch", "navy blue", "solid", np.random.default_rng(0), 96)
    assert image.mode == "RGB" and image.size == (96, 96)
    with pytest.raises(ValueError):
        render_image("watch", "red", "striped", np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_image("kurta", "red", "solid", np.random.default_rng(0))


def test_silhouettes_are_distinct_at_64px() -> None:
    masks = {a: np.asarray(render_image(a, "black", "solid", np.random.default_rng(0), 64)
                           .convert("L")) < 128 for a in ARTICLES}
    iou = {(a, b): (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
           for a, b in combinations(ARTICLES, 2)}
    assert max(iou.values()) < 0.85
    assert iou[("dress", "skirt")] < 0.6


# ------------------------------------------------------------------ files
def test_write_sample_writes_small_readable_shards(tmp_path) -> None:
    paths = write_sample(tmp_path / "out", n=400, seed=0, shards=2)
    assert [os.path.basename(p) for p in paths] == ["listings-00000.parquet", "listings-00001.parquet"]
    assert sum(os.path.getsize(p) for p in paths) < 5_000_000
    parts = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in parts] == [200, 200]
    merged = pa.concat_tables(parts)
    assert merged.schema.equals(SCHEMA)
    assert merged.column("listing_id").to_pylist() == [f"s0-{i:06d}" for i in range(400)]
    assert sum(map(bool, merged.column("mismatch_kind").to_pylist())) == 80

"""Listing data for training and evaluation: Parquet shards in the listing schema,
content-based splits, and the corruptions (attribute swaps, image swaps) used both to
train the consistency head and to measure mismatch detection."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .text import Lexicon, Mention, words

# Structured columns checked against the lexicon, column -> kind.
DEFAULT_ATTRIBUTE_COLUMNS: dict[str, str] = {
    "base_colour": "colour", "article_type": "article_type", "pattern": "pattern",
    "material": "material", "gender": "gender",
}
_OPTIONAL = ("sub_category", "mismatch_kind", "mismatch_truth", *DEFAULT_ATTRIBUTE_COLUMNS)


@dataclass
class Listings:
    """Listings held in memory as parallel lists; ``columns`` holds optional string columns."""

    ids: list[str]
    titles: list[str]
    images: list[bytes]
    columns: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str) -> list[str]:
        return self.columns.get(name) or [""] * len(self)

    def take(self, idx: Sequence[int]) -> "Listings":
        return Listings([self.ids[i] for i in idx], [self.titles[i] for i in idx], [self.images[i] for i in idx],
                        {k: [v[i] for i in idx] for k, v in self.columns.items()})

    def rows(self) -> list[dict[str, str]]:
        return [{k: v[i] for k, v in self.columns.items()} for i in range(len(self))]


def expand_glob(pattern: str) -> list[str]:
    """Sorted files matching a local or fsspec glob; raises if nothing matches."""
    fs, _ = fsspec.core.url_to_fs(pattern)
    paths = sorted(fs.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no files match {pattern!r}")
    proto = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
    return [p if p.startswith(proto) else proto + p for p in paths]


def read_listings(pattern: str, limit: int | None = None) -> Listings:
    """Read Parquet shards (``listing_id``, ``title``, ``image`` + optional columns)."""
    ids: list[str] = []
    titles: list[str] = []
    images: list[bytes] = []
    cols: dict[str, list[str]] = {}
    for path in expand_glob(pattern):
        with fsspec.open(path, "rb") as f:
            table = pq.read_table(f)
        missing = [c for c in ("listing_id", "title", "image") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}")
        if not (pa.types.is_binary(table.schema.field("image").type)
                or pa.types.is_large_binary(table.schema.field("image").type)):
            raise ValueError(f"{path}: column image has type {table.schema.field('image').type}, expected binary")
        n = table.num_rows
        ids += [str(x) for x in table.column("listing_id").to_pylist()]
        titles += [x or "" for x in table.column("title").to_pylist()]
        images += [x or b"" for x in table.column("image").to_pylist()]
        for c in _OPTIONAL:
            vals = [x or "" for x in table.column(c).to_pylist()] if c in table.column_names else [""] * n
            cols.setdefault(c, [""] * (len(ids) - n)).extend(vals)
        if limit is not None and len(ids) >= limit:
            break
    listings = Listings(ids, titles, images, {c: v for c, v in cols.items() if any(v)})
    return listings.take(range(min(len(listings), limit))) if limit is not None else listings


def concat_listings(parts: Sequence[Listings]) -> Listings:
    """Listings of several sources one after another; a column missing from a source is empty there."""
    names = sorted({c for p in parts for c in p.columns})
    return Listings([i for p in parts for i in p.ids], [t for p in parts for t in p.titles],
                    [b for p in parts for b in p.images], {c: [v for p in parts for v in p.column(c)] for c in names})


def content_split(images: Sequence[bytes], val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices decided by a hash of the image bytes, so byte-identical
    images always fall on the same side."""
    salt = str(seed).encode()
    u = np.array([int.from_bytes(hashlib.sha256(salt + bytes(b)).digest()[:8], "big") / 2**64 for b in images])
    val = u < val_fraction
    return np.flatnonzero(~val), np.flatnonzero(val)


def id_half(listing_id: str) -> bool:
    """Which half of a split a listing falls in, by a hash of its id (the same in every photo
    folder): True for the first (calibration), False for the second (evaluation)."""
    return hashlib.sha256(listing_id.encode("utf-8")).digest()[0] < 128


def clean_indices(listings: Listings) -> np.ndarray:
    """Listings without a known ground-truth mismatch (all of them for real data)."""
    return np.flatnonzero([not k for k in listings.column("mismatch_kind")])


# ---------------------------------------------------------------------- corruptions
def swap_values(lexicon: Lexicon, kind: str, value: str) -> list[str]:
    """Values of ``kind`` from another group than ``value`` (Blue -> Red, never Navy Blue -> Blue)."""
    group = lexicon.group(kind, value)
    return [v for v in lexicon.values_of(kind) if lexicon.group(kind, v) != group]


def replace_mention(tokens: Sequence[str], mention: Mention, new_value: str) -> str:
    """The title with ``mention`` replaced by ``new_value``'s words."""
    return " ".join([*tokens[:mention.start], *words(new_value), *tokens[mention.end:]])


def corrupt_attribute(tokens: Sequence[str], mentions: Sequence[Mention], lexicon: Lexicon,
                      rng: np.random.Generator, kind: str | None = None) -> tuple[str, int, str] | None:
    """Swap one mention (of ``kind`` if given) for a value of another group.
    Returns (corrupted title, mention index, new value) or None when nothing can be swapped."""
    choices = [j for j, m in enumerate(mentions) if (kind is None or m.kind == kind)
               and swap_values(lexicon, m.kind, m.value)]
    if not choices:
        return None
    j = choices[int(rng.integers(len(choices)))]
    options = swap_values(lexicon, mentions[j].kind, mentions[j].value)
    new = options[int(rng.integers(len(options)))]
    return replace_mention(tokens, mentions[j], new), j, new


def parse_attribute_columns(spec: str | None) -> dict[str, str]:
    """"base_colour=colour,article_type=article_type" -> {column: kind}."""
    if not spec:
        return dict(DEFAULT_ATTRIBUTE_COLUMNS)
    out = {}
    for part in spec.split(","):
        col, sep, kind = part.partition("=")
        if not sep or not col.strip() or not kind.strip():
            raise ValueError(f"bad attribute column mapping {part!r}: expected column=kind")
        out[col.strip()] = kind.strip()
    return out


def column_attributes(listings: Listings, lexicon: Lexicon,
                      columns: Mapping[str, str]) -> list[list[tuple[str, str]]]:
    """Per listing, (kind, value) pairs from structured columns that the lexicon knows."""
    out: list[list[tuple[str, str]]] = [[] for _ in range(len(listings))]
    for col, kind in columns.items():
        for i, raw in enumerate(listings.column(col)):
            value = lexicon.canonical(kind, raw) if raw else None
            if value is not None:
                out[i].append((kind, value))
    return out

"""Text side: a dependency-free tokenizer, a vocabulary with hashed out-of-vocabulary
buckets, and the attribute lexicon that finds attribute mentions in titles.

Everything here is plain Python and JSON-serialisable: the vocabulary and the lexicon ship
inside every checkpoint so a model and its words never drift apart.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .lexicon_seeds import COLUMN_ALIASES, SEEDS

KINDS: tuple[str, ...] = ("colour", "article_type", "pattern", "material", "gender")

_APOSTROPHES = re.compile(r"['\u2019`]")
_SPLIT = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens: apostrophes dropped ("men's" -> "mens"), every other
    non-alphanumeric character separates words ("T-Shirt" -> ["t", "shirt"])."""
    return _SPLIT.findall(_APOSTROPHES.sub("", text.lower()))


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Character span in ``text`` of each token of ``words(text)``, in order, so a
    mention's token span can be shown on the original title."""
    folded: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if _APOSTROPHES.fullmatch(ch):
            continue
        low = ch.lower()
        folded.append(low)
        origin.extend([i] * len(low))
    joined = "".join(folded)
    return [(origin[m.start()], origin[m.end() - 1] + 1) for m in _SPLIT.finditer(joined)]


class Vocabulary:
    """Word -> id with ``n_buckets`` hashed ids for words outside the vocabulary.

    Ids: 0 is padding, 1..len(words) are known words, the next ``n_buckets`` ids are hash
    buckets (crc32, stable across processes), so no word is ever dropped.
    """

    def __init__(self, words_list: Sequence[str], n_buckets: int = 1024):
        self.words = list(dict.fromkeys(words_list))
        self.n_buckets = int(n_buckets)
        self._index = {w: i + 1 for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        """Total number of ids, padding and buckets included."""
        return 1 + len(self.words) + self.n_buckets

    def id(self, word: str) -> int:
        known = self._index.get(word)
        if known is not None:
            return known
        return 1 + len(self.words) + zlib.crc32(word.encode("utf-8")) % self.n_buckets

    @classmethod
    def build(cls, titles: Iterable[str], extra_words: Iterable[str] = (), max_words: int = 8000,
              min_count: int = 2, n_buckets: int = 1024) -> "Vocabulary":
        counts = Counter(w for t in titles for w in words(t))
        kept = [w for w, c in counts.most_common() if c >= min_count][:max_words]
        return cls(sorted(set(kept) | set(extra_words)), n_buckets)

    def to_json(self) -> dict:
        return {"words": self.words, "n_buckets": self.n_buckets}

    @classmethod
    def from_json(cls, data: Mapping) -> "Vocabulary":
        return cls(data["words"], data["n_buckets"])


@dataclass(frozen=True)
class Mention:
    """One attribute mention: ``tokens[start:end]`` of the title name ``value`` of ``kind``."""

    kind: str
    value: str
    start: int
    end: int


def _plural_variants(form: str) -> list[str]:
    head, _, last = form.rpartition(" ")
    prefix = head + " " if head else ""
    out = []
    if last.endswith("s") and not last.endswith("ss"):
        out.append(prefix + last[:-1])
    elif last.endswith(("sh", "ch", "x", "ss")):
        out.append(prefix + last + "es")
    else:
        out.append(prefix + last + "s")
    return out


class Lexicon:
    """Attribute kinds, their values, groups and surface forms, with mention extraction.

    ``entries[kind][value] = (group, forms)``. Extraction is greedy longest-match on whole
    tokens, left to right, so "navy blue" wins over "blue" and "polo t-shirt" over "polo".
    """

    def __init__(self, entries: Mapping[str, Mapping[str, tuple[str, Sequence[str]]]],
                 aliases: Mapping[str, Mapping[str, str]] | None = None):
        self.entries: dict[str, dict[str, tuple[str, list[str]]]] = {
            k: {v: (g, list(forms)) for v, (g, forms) in vals.items()} for k, vals in entries.items()}
        self.aliases = {k: dict(v) for k, v in (aliases or {}).items()}
        self.kinds = [k for k in KINDS if k in self.entries] + [k for k in self.entries if k not in KINDS]
        # Global value index: (kind, value) pairs in a fixed order.
        self.values: list[tuple[str, str]] = [(k, v) for k in self.kinds for v in self.entries[k]]
        self.value_id = {kv: i for i, kv in enumerate(self.values)}
        self.kind_id = {k: i for i, k in enumerate(self.kinds)}
        self._forms: dict[tuple[str, ...], tuple[str, str]] = {}
        for kind in self.kinds:
            for value, (_, forms) in self.entries[kind].items():
                for form in [value, *forms]:
                    key = tuple(words(form))
                    if key and key not in self._forms:
                        self._forms[key] = (kind, value)
        self._max_len = max((len(k) for k in self._forms), default=1)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_seeds(cls) -> "Lexicon":
        """The curated seed lexicon, with plural/singular variants of article types."""
        entries: dict[str, dict[str, tuple[str, list[str]]]] = {}
        for kind, vals in SEEDS.items():
            entries[kind] = {}
            for value, (group, forms) in vals.items():
                forms = list(forms)
                if kind == "article_type":
                    forms += [p for f in forms for p in _plural_variants(f)]
                entries[kind][value] = (group, list(dict.fromkeys(forms)))
        return cls(entries, COLUMN_ALIASES)

    def extended(self, rows: Iterable[Mapping[str, str]], columns: Mapping[str, str],
                 group_column: str | None = "sub_category", min_count: int = 3) -> "Lexicon":
        """A lexicon grown from training rows: structured attribute values (``columns``
        maps column -> kind) that the seeds do not know, seen at least ``min_count`` times,
        become new values whose surface form is the value itself; article types take their
        group from ``group_column``."""
        counts: Counter = Counter()
        groups: dict[tuple[str, str], str] = {}
        for row in rows:
            for col, kind in columns.items():
                raw = (row.get(col) or "").strip()
                if not raw or raw.upper() == "NA" or self.canonical(kind, raw) is not None:
                    continue
                key = (kind, " ".join(words(raw)))
                if not key[1]:
                    continue
                counts[key] += 1
                if group_column and row.get(group_column):
                    groups.setdefault(key, " ".join(words(row[group_column])))
        entries = {k: dict(v) for k, v in self.entries.items()}
        for (kind, value), n in sorted(counts.items()):
            if n < min_count:
                continue
            forms = [value] + (_plural_variants(value) if kind == "article_type" else [])
            if any(tuple(words(f)) in self._forms for f in forms):
                continue
            entries.setdefault(kind, {})[value] = (groups.get((kind, value), value), forms)
        return Lexicon(entries, self.aliases)

    # ------------------------------------------------------------------ queries
    def canonical(self, kind: str, raw: str) -> str | None:
        """Map a structured column value ("Navy Blue", "Tshirts") to a lexicon value."""
        text = " ".join(words(raw))
        if not text or kind not in self.entries:
            return None
        alias = self.aliases.get(kind, {}).get(text)
        if alias is not None and alias in self.entries[kind]:
            return alias
        if text in self.entries[kind]:
            return text
        hit = self._forms.get(tuple(text.split()))
        if hit is not None and hit[0] == kind:
            return hit[1]
        return None

    def group(self, kind: str, value: str) -> str:
        return self.entries[kind][value][0]

    def values_of(self, kind: str) -> list[str]:
        return list(self.entries.get(kind, {}))

    def extract(self, tokens: Sequence[str]) -> list[Mention]:
        """All attribute mentions in a token list, greedy longest match, no overlaps."""
        out: list[Mention] = []
        i, n = 0, len(tokens)
        while i < n:
            for length in range(min(self._max_len, n - i), 0, -1):
                hit = self._forms.get(tuple(tokens[i:i + length]))
                if hit is not None:
                    out.append(Mention(hit[0], hit[1], i, i + length))
                    i += length
                    break
            else:
                i += 1
        return out

    def to_json(self) -> dict:
        # Lists, not mappings: the order of kinds and values defines the model's value ids.
        return {"kinds": [{"kind": k, "values": [{"value": v, "group": g, "forms": f}
                                                 for v, (g, f) in self.entries[k].items()]}
                          for k in self.kinds],
                "aliases": self.aliases}

    @classmethod
    def from_json(cls, data: Mapping) -> "Lexicon":
        entries = {k["kind"]: {e["value"]: (e["group"], e["forms"]) for e in k["values"]} for k in data["kinds"]}
        return cls(entries, data.get("aliases", {}))


@dataclass
class EncodedText:
    """A batch of titles as fixed-shape arrays.

    ids: (B, L) int64, mask: (B, L) bool (True = real token),
    attr_mask: (B, A, L) float32 (1 on the tokens of each mention),
    attr_valid: (B, A) bool, attr_value: (B, A) int64 (global value id, 0 where invalid),
    mentions: per listing, the mentions kept (at most A); tokens: per listing, the words
    encoded (the title's, then any appended column values), which mention spans index.
    """

    ids: np.ndarray
    mask: np.ndarray
    attr_mask: np.ndarray
    attr_valid: np.ndarray
    attr_value: np.ndarray
    mentions: list[list[Mention]]
    tokens: list[list[str]] = field(default_factory=list)


class TextEncoder:
    """Turns titles into padded token ids and attribute-mention masks."""

    def __init__(self, vocab: Vocabulary, lexicon: Lexicon, max_len: int, max_attrs: int):
        self.vocab, self.lexicon = vocab, lexicon
        self.max_len, self.max_attrs = int(max_len), int(max_attrs)

    def tokens(self, title: str) -> list[str]:
        return words(title)[: self.max_len]

    def encode(self, titles: Sequence[str],
               extra: Sequence[Sequence[tuple[str, str]]] | None = None) -> EncodedText:
        """Encode titles. ``extra[i]`` lists (kind, value) attributes from structured
        columns; those not already mentioned in the title are appended as extra tokens
        after the title (when they fit), so each becomes a mention with a real span."""
        b, l, a = len(titles), self.max_len, self.max_attrs
        ids = np.zeros((b, l), np.int64)
        mask = np.zeros((b, l), bool)
        attr_mask = np.zeros((b, a, l), np.float32)
        attr_valid = np.zeros((b, a), bool)
        attr_value = np.zeros((b, a), np.int64)
        kept: list[list[Mention]] = []
        all_tokens: list[list[str]] = []
        for i, title in enumerate(titles):
            toks, mentions = self.arrange(title, extra[i] if extra is not None else ())
            ids[i, : len(toks)] = [self.vocab.id(w) for w in toks]
            mask[i, : len(toks)] = True
            for j, m in enumerate(mentions):
                attr_mask[i, j, m.start:m.end] = 1.0
                attr_valid[i, j] = True
                attr_value[i, j] = self.lexicon.value_id[(m.kind, m.value)]
            kept.append(mentions)
            all_tokens.append(toks)
        return EncodedText(ids, mask, attr_mask, attr_valid, attr_value, kept, all_tokens)

    def arrange(self, title: str, extra: Sequence[tuple[str, str]] = ()) -> tuple[list[str], list[Mention]]:
        """A title's words and mentions as :meth:`encode` lays them out: structured (kind,
        value) attributes not already mentioned are appended as words when they fit; at
        most ``max_attrs`` mentions."""
        toks = self.tokens(title)
        mentions = self.lexicon.extract(toks)
        for kind, value in extra:
            if any(m.kind == kind and m.value == value for m in mentions):
                continue
            form = words(value)
            if not form or len(toks) + len(form) > self.max_len:
                continue
            mentions.append(Mention(kind, value, len(toks), len(toks) + len(form)))
            toks = toks + form
        return toks, mentions[: self.max_attrs]

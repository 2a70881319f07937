"""Evaluation and calibration.

Retrieval follows the published FashionGen protocol: each query is ranked against its
positive and 100 negatives drawn from the same ``sub_category`` where possible.
Mismatch detection scores corrupted copies of the evaluation listings: an attribute word
swapped for a value of another group of the same kind, or the image swapped with a
listing of another article-type group.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .api import ListingScore, Matcher
from .data import (DEFAULT_ATTRIBUTE_COLUMNS, Listings, article_groups, clean_indices, column_attributes,
                   corrupt_attribute, image_swap_partner)
from .metrics import precision_recall, recall_at_k, roc_auc, threshold_for_precision
from .preprocess import decode_images, normalize

log = logging.getLogger(__name__)

@dataclass
class EvalSet:
    """Clean evaluation listings with decoded pixels and their corrupted variants."""

    listings: Listings
    pixels: torch.Tensor          # (N, 3, S, S) uint8
    clean: list[ListingScore]
    corrupted: dict[str, tuple[np.ndarray, list[ListingScore], np.ndarray]]  # kind -> (rows, scores, slot)


def _score(matcher: Matcher, pixels: torch.Tensor, titles: list[str]) -> list[ListingScore]:
    out: list[ListingScore] = []
    for s in range(0, len(titles), matcher.batch_size):
        enc = matcher.encode_texts(titles[s:s + matcher.batch_size])
        out.extend(matcher.results(matcher.forward(normalize(pixels[s:s + matcher.batch_size]), enc), enc))
    return out


def build_eval_set(matcher: Matcher, listings: Listings, max_listings: int | None, seed: int) -> EvalSet:
    """Decode the clean listings once, score them and every corrupted variant."""
    rng = np.random.default_rng(seed)
    idx = clean_indices(listings)
    if max_listings is not None and len(idx) > max_listings:
        idx = np.sort(rng.choice(idx, max_listings, replace=False))
    decoded, ok = decode_images([listings.images[i] for i in idx], matcher.image_size)
    base = listings.take(idx[ok])
    pixels = torch.from_numpy(decoded)
    clean = _score(matcher, pixels, base.titles)
    enc = matcher.text_encoder
    corrupted = {}
    for kind in matcher.lexicon.kinds:
        rows, titles, slots = [], [], []
        for i, title in enumerate(base.titles):
            toks = enc.tokens(title)
            hit = corrupt_attribute(toks, enc.lexicon.extract(toks)[: enc.max_attrs], enc.lexicon, rng, kind)
            if hit is not None:
                rows.append(i), titles.append(hit[0]), slots.append(hit[1])
        if rows:
            rows_a = np.asarray(rows)
            corrupted[kind] = (rows_a, _score(matcher, pixels[rows_a], titles), np.asarray(slots))
    groups = article_groups(base, enc.lexicon, enc.tokens)
    pairs = [(i, image_swap_partner(i, groups, rng)) for i in range(len(base))]
    pairs = [(i, j) for i, j in pairs if j is not None]
    if pairs:
        rows_a = np.asarray([i for i, _ in pairs])
        partners = np.asarray([j for _, j in pairs])
        corrupted["image"] = (rows_a, _score(matcher, pixels[partners], [base.titles[i] for i in rows_a]),
                              np.full(len(rows_a), -1))
    return EvalSet(base, pixels, clean, corrupted)


def kind_score(s: ListingScore, kind: str) -> float | None:
    """A listing's consistency for one kind (the lowest over its mentions), or the match
    score for ``"image"``; None when it has no mention of that kind."""
    if kind == "image":
        return s.match
    vals = [a.score for a in s.attributes if a.kind == kind]
    return min(vals) if vals else None


def detection_data(ev: EvalSet, kind: str, detector: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, score) for one corruption kind: corrupted copies (1) against the same
    listings unmodified (0), scored by ``detector`` (a kind, or "image" for the global
    match; default: the corrupted kind itself). Low score = mismatch."""
    rows, scores, _ = ev.corrupted[kind]
    detector = detector or kind
    bad = [kind_score(s, detector) for s in scores]
    good = [kind_score(ev.clean[i], detector) for i in rows]
    keep = [k for k in range(len(rows)) if bad[k] is not None and good[k] is not None]
    labels = np.r_[np.ones(len(keep)), np.zeros(len(keep))]
    return labels, np.asarray([bad[k] for k in keep] + [good[k] for k in keep], np.float64)


MIXED_KINDS = ("colour", "article_type", "image")
# A swapped photo shows another listing: the global match or any visible attribute explains it.
RIGHT_KINDS = {"image": {"match", "article_type", "colour", "pattern"}}


def mixed_set(ev: EvalSet) -> list[tuple[ListingScore, int, str, int]]:
    """Every clean listing (label 0), then as many corrupted ones (label 1) cycling colour,
    article type and image swaps: (score, label, corruption kind, corrupted slot)."""
    out = [(s, 0, "", -1) for s in ev.clean]
    kinds = [k for k in MIXED_KINDS if k in ev.corrupted]
    for t in range(len(ev.clean) if kinds else 0):
        kind = kinds[t % len(kinds)]
        rows, scores, slots = ev.corrupted[kind]
        c = (t // len(kinds)) % len(rows)
        out.append((scores[c], 1, kind, int(slots[c])))
    return out


def flags(s: ListingScore, thresholds: dict[str, float]) -> bool:
    """Whether ``s`` would be flagged at other ``thresholds`` (calibration's what-if)."""
    return s.match < thresholds.get("match", s.match_threshold) or any(
        a.score < thresholds.get(a.kind, a.threshold) for a in s.attributes)


def calibrate(ev: EvalSet, precision: float) -> dict[str, float]:
    """Thresholds for the whole flagging rule (any attribute below its kind's threshold, or
    the match below its own) reaching ``precision`` on the mixed set (half unmodified).

    Each kind's threshold is capped at the highest one that reaches ``precision`` on its
    own balanced set (a kind that never reaches it is disabled: 0, or -1 for ``match``, so
    kinds the model cannot see in the image raise no alarms). Below the caps every kind
    gets the same false-positive rate alpha on unmodified listings (its threshold is the
    alpha-quantile of their scores), and alpha is the largest that keeps the mixed set's
    precision at the target (bisection: flags only grow with alpha)."""
    clean = {k: np.sort([v for v in (kind_score(s, k) for s in ev.clean) if v is not None]) for k in ev.corrupted}
    caps = {k: threshold_for_precision(*detection_data(ev, k), precision) for k in ev.corrupted}
    mixed = mixed_set(ev)
    labels = np.array([y for _, y, _, _ in mixed])

    def at(alpha: float) -> dict[str, float]:
        out = {}
        for kind, scores in clean.items():
            name, off = ("match", -1.0) if kind == "image" else (kind, 0.0)
            quantile = float(scores[min(len(scores) - 1, int(alpha * len(scores)))]) if len(scores) else off
            out[name] = off if caps[kind] is None else min(caps[kind], quantile)
        return out

    def mixed_precision(th: dict[str, float]) -> float:
        p, _ = precision_recall(labels, np.array([flags(s, th) for s, _, _, _ in mixed]))
        return 0.0 if np.isnan(p) else p

    lo, hi = 0.0, 0.5
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mixed_precision(at(mid)) >= precision else (lo, mid)
    thresholds = at(lo)
    for name, t in sorted(thresholds.items()):
        log.info("threshold %s = %.4f%s", name, t, " (disabled)" if t <= (-1.0 if name == "match" else 0.0) else "")
    return thresholds


def retrieval(matcher: Matcher, ev: EvalSet, n_queries: int, negatives: int, seed: int) -> dict[str, float]:
    """R@1/5/10 image->text and text->image; negatives share the query's sub_category."""
    rng = np.random.default_rng(seed + 1)
    n = len(ev.listings)
    with torch.inference_mode():
        img = torch.cat([matcher.model.encode_image(normalize(ev.pixels[s:s + 256]).to(matcher.device))[1].cpu()
                         for s in range(0, n, 256)]).numpy()
    txt = matcher.embed_texts(ev.listings.titles)
    sub = np.asarray(ev.listings.column("sub_category"))
    titles = np.asarray([t.lower() for t in ev.listings.titles])
    queries = rng.choice(n, min(n_queries, n), replace=False)
    cand_i2t, cand_t2i = [], []
    for q in queries:
        distinct = titles != titles[q]
        distinct[q] = False
        same = np.flatnonzero(distinct & (sub == sub[q]))
        other = np.flatnonzero(distinct & (sub != sub[q]))
        take = rng.choice(same, min(negatives, len(same)), replace=False)
        if len(take) < negatives:
            take = np.r_[take, rng.choice(other, min(negatives - len(take), len(other)), replace=False)]
        cand = np.r_[q, take]
        cand_i2t.append(img[q] @ txt[cand].T)
        cand_t2i.append(txt[q] @ img[cand].T)
    width = min(len(c) for c in cand_i2t)
    i2t = recall_at_k(np.stack([c[:width] for c in cand_i2t]), np.zeros(len(queries), int))
    t2i = recall_at_k(np.stack([c[:width] for c in cand_t2i]), np.zeros(len(queries), int))
    out = {f"image_to_text_R@{k}": v for k, v in i2t.items()}
    out.update({f"text_to_image_R@{k}": v for k, v in t2i.items()})
    out["queries"], out["candidates"] = len(queries), width
    return out


def evaluate(matcher: Matcher, listings: Listings, n_queries: int = 1000, negatives: int = 100,
             seed: int = 0, max_listings: int | None = 5000) -> dict:
    """All metrics for ``listings`` at the matcher's thresholds (see module docstring)."""
    ev = build_eval_set(matcher, listings, max_listings, seed)
    report: dict = {"listings": len(ev.listings), "thresholds": {k: matcher.threshold(k) for k in
                                                                 ["match", *matcher.lexicon.kinds]}}
    report["retrieval"] = retrieval(matcher, ev, n_queries, negatives, seed)
    report["roc_auc"] = {}
    for kind in ev.corrupted:
        labels, score = detection_data(ev, kind)
        # Ablation: the same corruptions detected by the global cosine alone (no AGA).
        g_labels, g_score = detection_data(ev, kind, "image")
        report["roc_auc"][kind] = {"auc": roc_auc(labels, -score), "pairs": int(labels.sum()),
                                   "global_only_auc": roc_auc(g_labels, -g_score)}
    mixed_labels, mixed_flags, attributed, detected = [], [], 0, 0
    for s, label, kind, slot in mixed_set(ev):
        mixed_labels.append(label), mixed_flags.append(s.flagged)
        if label and s.flagged and kind != "image":
            detected += 1
            attributed += int(s.culprit() == slot)
    p, r = precision_recall(np.asarray(mixed_labels), np.asarray(mixed_flags))
    clean_flags = np.asarray(mixed_flags[: len(ev.clean)])
    report["at_thresholds"] = {"precision": p, "recall": r, "false_positive_rate": float(clean_flags.mean()),
                               "clean": len(ev.clean), "corrupted": len(mixed_labels) - len(ev.clean),
                               "attribution_accuracy": attributed / detected if detected else float("nan")}
    report["ground_truth"] = ground_truth(matcher, listings)
    return report


def ground_truth(matcher: Matcher, listings: Listings) -> dict:
    """Detection of mismatches labelled in a ``mismatch_kind`` column (synthetic samples),
    scoring the title together with the structured attribute columns, as a scan does."""
    kinds = listings.column("mismatch_kind")
    idx = [i for i, k in enumerate(kinds) if k]
    if not idx:
        return {}
    attrs = column_attributes(listings, matcher.lexicon, DEFAULT_ATTRIBUTE_COLUMNS)
    scores = matcher.score([listings.images[i] for i in idx], [listings.titles[i] for i in idx],
                           [attrs[i] for i in idx])
    out: dict = {}
    for i, s in zip(idx, scores):
        d = out.setdefault(kinds[i], {"total": 0, "flagged": 0, "right_kind": 0})
        d["total"] += 1
        d["flagged"] += int(s.flagged)
        d["right_kind"] += int(s.worst_kind in RIGHT_KINDS.get(kinds[i], {kinds[i]}))
    return out

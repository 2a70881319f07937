"""Evaluation as reviewers see the scan, and the data calibration is fitted on.

Listings are scored exactly as ``ecomatch scan`` scores them (title plus the structured
attribute columns, the same preprocessing, the swap search where the policy asks for it)
and ranked by the ``p_violation`` the scan writes (``ecomatch_model.verdict``).

Corruptions come from the catalogue's own columns, never from the model's lexicon:

- ``colour``: ``base_colour`` set to another listing's colour of another colour family
  (:data:`COLOUR_FAMILIES`), written into the title where the title names the old one;
- ``article_type``: ``article_type`` set to another listing's type of another
  ``sub_category``, written into the title likewise;
- ``image``: the photo swapped with another listing's of another ``sub_category``;
- ``gender`` (calibration only): Men <-> Women, Boys <-> Girls, column and title word.

For calibration only, the kinds the catalogue has no column for (pattern, material on the
real catalogue) are corrupted in the title with a value of another group of the lexicon, so
that those kinds get curves too. Evaluation reports colour, article type and image swaps,
each corrupted copy against every unmodified listing, and all three together.

Retrieval follows the published FashionGen protocol: each query is ranked against its
positive and 100 negatives drawn from the same ``sub_category`` where possible.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .api import Matcher
from .data import DEFAULT_ATTRIBUTE_COLUMNS, Listings, clean_indices, column_attributes, corrupt_attribute
from .metrics import recall_at_k, roc_auc
from .preprocess import decode_images
from .scores import ListingScore
from .verdict import (DEFAULT_PREVALENCE, MATCH, Assessment, CalibrationData, Policy, choose_cut, expected_at,
                      feedback_cut, fit_policy)

log = logging.getLogger(__name__)

EVAL_KINDS = ("colour", "article_type", "image")
# A swapped photo shows another listing: the global match or any visible attribute explains it.
RIGHT_KINDS = {"image": {"match", "article_type", "colour", "pattern"}}
FPR_POINTS = (0.01, 0.005)
REPORT_PREVALENCE = 0.02

# Colour families of catalogue colour names (lower case). A replacement colour shares no
# family with the old one; neighbours that reviewers would not call a contradiction (navy
# and blue, cream and beige, charcoal and grey) share one. Colours not listed are not used.
_FAMILIES = {
    "black": ["black", "charcoal"],
    "grey": ["grey", "grey melange", "charcoal", "steel", "silver", "metallic"],
    "white": ["white", "off white", "cream", "beige"],
    "earth": ["beige", "cream", "skin", "nude", "peach", "tan", "khaki", "taupe", "mushroom brown", "brown",
              "coffee brown", "bronze", "copper", "rust", "gold", "mustard", "olive"],
    "yellow": ["yellow", "mustard", "gold", "lime green", "fluorescent green"],
    "orange": ["orange", "peach", "rust", "copper"],
    "red": ["red", "maroon", "burgundy", "rose", "magenta", "rust"],
    "pink": ["pink", "rose", "magenta", "peach", "mauve", "lavender", "nude"],
    "purple": ["purple", "lavender", "mauve", "magenta", "burgundy"],
    "blue": ["blue", "navy blue", "turquoise blue", "teal"],
    "green": ["green", "olive", "sea green", "teal", "lime green", "fluorescent green", "turquoise blue", "khaki"],
}
COLOUR_FAMILIES: dict[str, frozenset[str]] = {}
for _family, _members in _FAMILIES.items():
    for _c in _members:
        COLOUR_FAMILIES[_c] = COLOUR_FAMILIES.get(_c, frozenset()) | {_family}
GENDER_SWAP = {"men": "Women", "women": "Men", "boys": "Girls", "girls": "Boys"}


@dataclass
class Variant:
    """A corrupted copy of clean listing ``row``: its title and columns, shown with the photo
    of listing ``image_row``."""

    kind: str
    row: int
    title: str
    columns: dict[str, str]
    image_row: int


def _singular(word: str) -> str:
    """A catalogue's plural article type as a title writes one: Watches -> Watch, Tshirts -> Tshirt."""
    if re.search(r"(ch|sh|x|ss)es$", word, re.I):
        return word[:-2]
    return word[:-1] if word.lower().endswith("s") and not word.lower().endswith("ss") else word


def _replace_words(title: str, old: str, new: str) -> str:
    """``title`` with whole-word, case-insensitive occurrences of ``old`` (or of its singular,
    when the title uses that) replaced by ``new`` (in the same number)."""
    for o, n in ((old, new), (_singular(old), _singular(new))):
        pattern = re.compile(rf"(?<!\w){re.escape(o)}(?!\w)", re.I)
        if o and pattern.search(title):
            return pattern.sub(lambda _: n, title)
    return title


def column_corruptions(listings: Listings, rng: np.random.Generator,
                       kinds: Sequence[str] = EVAL_KINDS) -> list[Variant]:
    """At most one corrupted copy of each listing per kind, from the catalogue's columns
    (see the module docstring); the replacement is another listing's value, so values come
    with the catalogue's own frequencies."""
    n = len(listings)
    colour, article, group = listings.column("base_colour"), listings.column("article_type"), \
        listings.column("sub_category")
    gender = listings.column("gender")
    rows = listings.rows()
    out: list[Variant] = []
    fam = [COLOUR_FAMILIES.get(c.strip().lower()) for c in colour]
    for kind in kinds:
        for i in range(n):
            cols = dict(rows[i])
            if kind == "colour" and fam[i]:
                others = [j for j in rng.permutation(n)[:64] if fam[j] and not fam[j] & fam[i]]
                if others:
                    new = colour[others[0]]
                    cols["base_colour"] = new
                    out.append(Variant(kind, i, _replace_words(listings.titles[i], colour[i], new), cols, i))
            elif kind == "article_type" and article[i] and group[i]:
                others = [j for j in rng.permutation(n)[:64] if article[j] and group[j] and group[j] != group[i]]
                if others:
                    new = article[others[0]]
                    cols["article_type"] = new
                    out.append(Variant(kind, i, _replace_words(listings.titles[i], article[i], new), cols, i))
            elif kind == "image" and group[i]:
                others = [j for j in rng.permutation(n)[:64] if group[j] and group[j] != group[i]]
                if others:
                    out.append(Variant(kind, i, listings.titles[i], cols, int(others[0])))
            elif kind == "gender" and gender[i].strip().lower() in GENDER_SWAP:
                new = GENDER_SWAP[gender[i].strip().lower()]
                cols["gender"] = new
                out.append(Variant(kind, i, _replace_words(listings.titles[i], gender[i], new), cols, i))
    return out


def lexicon_corruptions(listings: Listings, matcher: Matcher, rng: np.random.Generator,
                        kinds: Sequence[str]) -> list[Variant]:
    """Title-only corruptions of ``kinds`` from the lexicon's groups: for calibration of the
    kinds the catalogue has no column for."""
    enc = matcher.text_encoder
    rows = listings.rows()
    out = []
    for kind in kinds:
        for i, title in enumerate(listings.titles):
            toks = enc.tokens(title)
            hit = corrupt_attribute(toks, enc.lexicon.extract(toks)[: enc.max_attrs], enc.lexicon, rng, kind)
            if hit is not None:
                out.append(Variant(kind, i, hit[0], dict(rows[i]), i))
    return out


@dataclass
class EvalSet:
    """Unmodified listings and their corrupted copies, with raw scores as the scan makes them."""

    listings: Listings
    clean: list[ListingScore]
    variants: list[Variant]
    corrupted: list[ListingScore]

    def kinds(self) -> list[str]:
        return sorted({v.kind for v in self.variants})


def _attributes(matcher: Matcher, rows: Sequence[Mapping[str, str]]) -> list[list[tuple[str, str]]]:
    cols = {c: [r.get(c, "") for r in rows] for c in DEFAULT_ATTRIBUTE_COLUMNS}
    probe = Listings([""] * len(rows), [""] * len(rows), [b""] * len(rows), cols)
    return column_attributes(probe, matcher.lexicon, DEFAULT_ATTRIBUTE_COLUMNS)


def decodable(matcher: Matcher, listings: Listings, max_listings: int | None, seed: int) -> Listings:
    """The clean listings whose image decodes (at most ``max_listings``, drawn with ``seed``)."""
    rng = np.random.default_rng(seed)
    idx = clean_indices(listings)
    if max_listings is not None and len(idx) > max_listings:
        idx = np.sort(rng.choice(idx, max_listings, replace=False))
    _, ok = decode_images([listings.images[i] for i in idx], matcher.image_size)
    return listings.take(idx[ok])


def build_eval_set(matcher: Matcher, listings: Listings, max_listings: int | None, seed: int,
                   kinds: Sequence[str] = EVAL_KINDS, lexicon_kinds: Sequence[str] = ()) -> EvalSet:
    """Score the decodable clean listings and their corrupted copies (raw scores)."""
    base = decodable(matcher, listings, max_listings, seed)
    rng = np.random.default_rng(seed + 7)
    variants = column_corruptions(base, rng, kinds) + lexicon_corruptions(base, matcher, rng, lexicon_kinds)
    clean = matcher.score(base.images, base.titles, _attributes(matcher, base.rows()))
    corrupted = matcher.score([base.images[v.image_row] for v in variants], [v.title for v in variants],
                              _attributes(matcher, [v.columns for v in variants]))
    log.info("scored %d listings and %d corrupted copies (%s)", len(base), len(variants),
             ", ".join(f"{k} {sum(v.kind == k for v in variants)}" for k in sorted({v.kind for v in variants})))
    return EvalSet(base, clean, variants, corrupted)


def calibration_data(ev: EvalSet) -> CalibrationData:
    """Per check kind, unmodified mentions against the corrupted copies' changed mentions
    (a mention whose value the unmodified listing does not have); for ``match``, unmodified
    listings against image swaps."""
    neg: dict[str, list[float]] = {MATCH: [s.match for s in ev.clean]}
    pos: dict[str, list[float]] = {MATCH: []}
    for s in ev.clean:
        for a in s.attributes:
            neg.setdefault(a.kind, []).append(a.score)
    for v, s in zip(ev.variants, ev.corrupted):
        if v.kind == "image":
            pos[MATCH].append(s.match)
            continue
        before = {(a.kind, a.value) for a in ev.clean[v.row].attributes}
        pos.setdefault(v.kind, []).extend(a.score for a in s.attributes
                                          if a.kind == v.kind and (a.kind, a.value) not in before)
    return CalibrationData(neg, pos, list(ev.clean), [(v.kind, s) for v, s in zip(ev.variants, ev.corrupted)])


def calibrate(ev: EvalSet, precision: float | None = None, prevalence: float = DEFAULT_PREVALENCE,
              review_budget: float | None = None, fitted_on: Mapping | None = None) -> Policy:
    """Fit the policy's curves on ``ev`` and choose its cut: the highest recall whose expected
    precision at ``prevalence`` reaches ``precision``, or the most flags that fit in
    ``review_budget`` per 10,000 listings (recall is the mean over colour, article type and
    image swaps, the kinds evaluation reports)."""
    policy = fit_policy(calibration_data(ev), prevalence, fitted_on=fitted_on)
    p0, p1 = _p(policy, ev)
    p1 = {k: v for k, v in p1.items() if k in EVAL_KINDS} or p1
    cut, expected = choose_cut(p0, p1, prevalence, precision, review_budget)
    rule = {"precision": precision} if precision is not None else {"review_budget_per_10k": review_budget}
    point = {**rule, "prevalence": prevalence, **expected, "clean": len(p0),
             "corrupted": int(sum(len(v) for v in p1.values()))}
    for k, v in sorted(point.items()):
        log.info("operating point %s = %s", k, v)
    if precision is not None and not expected["expected_precision"] >= precision:
        log.warning("no cut reaches expected precision %.2f at prevalence %g on these listings: the strictest one "
                    "is used, and flags almost nothing", precision, prevalence)
    return policy.with_operating_point(cut, point)


# Reviewers' decisions of each label needed before they join the listing curve's fit.
FEEDBACK_MIN_EACH = 50


def score_listings(matcher: Matcher, listings: Listings) -> tuple[Listings, list[ListingScore]]:
    """The listings whose image decodes and their raw scores as the scan makes them (title and
    the catalogue's columns)."""
    _, ok = decode_images(listings.images, matcher.image_size)
    listings = listings.take(ok)
    return listings, matcher.score(listings.images, listings.titles, _attributes(matcher, listings.rows()))


def calibrate_with_feedback(ev: EvalSet, reviewed: Sequence[tuple[ListingScore, bool]], precision: float,
                            prevalence: float = DEFAULT_PREVALENCE, fitted_on: Mapping | None = None,
                            min_each: int = FEEDBACK_MIN_EACH) -> tuple[Policy, bool]:
    """:func:`calibrate` on ``ev`` with reviewers' labels: ``reviewed`` holds the raw scores
    of decided listings and whether each was confirmed. With at least ``min_each`` of each
    label they join the listing curve's fit (false alarms beside the unmodified listings,
    confirmed ones beside the corrupted copies); the cut chosen on ``ev`` for ``precision``
    is then raised by :func:`~ecomatch_model.verdict.feedback_cut` on the decided listings'
    new p_violation. Returns the policy and whether the decisions joined the fit."""
    data = calibration_data(ev)
    n_confirmed = sum(bool(y) for _, y in reviewed)
    refit = n_confirmed >= min_each and len(reviewed) - n_confirmed >= min_each
    if refit:
        data.clean += [s for s, y in reviewed if not y]
        data.corrupted += [("feedback", s) for s, y in reviewed if y]
    policy = fit_policy(data, prevalence, fitted_on=fitted_on)
    p0, p1 = _p(policy, ev)
    p1 = {k: v for k, v in p1.items() if k in EVAL_KINDS} or p1
    floor, _ = choose_cut(p0, p1, prevalence, precision)
    cut, point = feedback_cut([policy.p_violation(s) for s, _ in reviewed], [bool(y) for _, y in reviewed], floor,
                              precision)
    point = {**point, "prevalence": prevalence, **expected_at(cut, p0, p1, prevalence), "clean": len(p0),
             "corrupted": int(sum(len(v) for v in p1.values())), "feedback_in_fit": refit}
    return policy.with_operating_point(cut, point), refit


def _p(policy: Policy, ev: EvalSet) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    p0 = np.asarray([policy.p_violation(s) for s in ev.clean])
    p1: dict[str, list[float]] = {}
    for v, s in zip(ev.variants, ev.corrupted):
        p1.setdefault(v.kind, []).append(policy.p_violation(s))
    return p0, {k: np.asarray(x) for k, x in p1.items()}


def recall_at_fpr(p0: np.ndarray, p1: np.ndarray, fpr: float) -> float:
    """Recall of the strictest-but-one cut that flags at most ``fpr`` of unmodified listings
    (a listing is flagged when its p_violation is above the cut)."""
    desc = np.sort(p0)[::-1]
    k = int(np.floor(fpr * len(desc)))
    cut = desc[min(k, len(desc) - 1)]
    return float((p1 > cut).mean())


def assessments(matcher: Matcher, policy: Policy, ev: EvalSet) -> tuple[list[Assessment], list[Assessment]]:
    """The verdicts of the clean listings and of the corrupted copies, with the swap search
    where the policy asks for it (``Matcher.assess``, as the scan's SearchSwaps step does)."""
    base = ev.listings
    clean = matcher.assess(base.images, base.titles, _attributes(matcher, base.rows()), policy, ev.clean)
    bad = matcher.assess([base.images[v.image_row] for v in ev.variants], [v.title for v in ev.variants],
                         _attributes(matcher, [v.columns for v in ev.variants]), policy, ev.corrupted)
    return [a for _, a in clean], [a for _, a in bad]


def detection_report(matcher: Matcher, policy: Policy, ev: EvalSet) -> dict:
    """Per corruption kind and overall: ROC-AUC by p_violation, recall at the operating point
    and at 1% and 0.5% false-positive rate, precision at 2% prevalence, attribution accuracy;
    and the false-positive rate on unmodified listings."""
    clean, bad = assessments(matcher, policy, ev)
    p0 = np.asarray([a.p_violation for a in clean])
    per: dict[str, list[tuple[Variant, Assessment]]] = {}
    for v, a in zip(ev.variants, bad):
        if v.kind in EVAL_KINDS:
            per.setdefault(v.kind, []).append((v, a))
    fpr = float((p0 >= policy.cut).mean())
    out: dict = {"clean": len(p0), "false_positive_rate": fpr, "cut": policy.cut, "kinds": {}}

    def block(pairs: list[tuple[Variant, Assessment]]) -> dict:
        p1 = np.asarray([a.p_violation for _, a in pairs])
        recall = float((p1 >= policy.cut).mean())
        flagged = [(v, a) for v, a in pairs if a.violation]
        right = sum(a.worst_kind in RIGHT_KINDS.get(v.kind, {v.kind}) for v, a in flagged)
        q = REPORT_PREVALENCE
        prec = q * recall / (q * recall + (1 - q) * fpr) if recall or fpr else float("nan")
        d = {"corrupted": len(p1), "roc_auc": roc_auc(np.r_[np.ones(len(p1)), np.zeros(len(p0))], np.r_[p1, p0]),
             "recall": recall, "precision_at_2pct": prec,
             "attribution_accuracy": right / len(flagged) if flagged else float("nan")}
        for x in FPR_POINTS:
            d[f"recall_at_{x:g}_fpr"] = recall_at_fpr(p0, p1, x)
        return d

    for kind, pairs in sorted(per.items()):
        out["kinds"][kind] = block(pairs)
    if per:
        out["overall"] = block([x for pairs in per.values() for x in pairs])
    return out


def retrieval(matcher: Matcher, listings: Listings, n_queries: int, negatives: int, seed: int) -> dict[str, float]:
    """R@1/5/10 image->text and text->image; negatives share the query's sub_category."""
    rng = np.random.default_rng(seed + 1)
    n = len(listings)
    img = matcher.embed_images(listings.images)
    txt = matcher.embed_texts(listings.titles)
    sub = np.asarray(listings.column("sub_category"))
    titles = np.asarray([t.lower() for t in listings.titles])
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
        cand = np.r_[q, take].astype(int)
        cand_i2t.append(img[q] @ txt[cand].T)
        cand_t2i.append(txt[q] @ img[cand].T)
    width = min(len(c) for c in cand_i2t)
    i2t = recall_at_k(np.stack([c[:width] for c in cand_i2t]), np.zeros(len(queries), int))
    t2i = recall_at_k(np.stack([c[:width] for c in cand_t2i]), np.zeros(len(queries), int))
    out = {f"image_to_text_R@{k}": v for k, v in i2t.items()}
    out.update({f"text_to_image_R@{k}": v for k, v in t2i.items()})
    out["queries"], out["candidates"] = len(queries), width
    return out


def evaluate(matcher: Matcher, listings: Listings, policy: Policy | None = None, n_queries: int = 1000,
             negatives: int = 100, seed: int = 0, max_listings: int | None = 5000) -> dict:
    """All metrics for ``listings`` under ``policy`` (default: the checkpoint's)."""
    policy = policy or matcher.policy
    if policy is None:
        raise ValueError("the model has no calibration: run `ecomatch calibrate` first")
    report: dict = {"operating_point": {"cut": policy.cut, "prevalence": policy.prevalence,
                                        **dict(policy.operating_point)}}
    ground = ground_truth(matcher, policy, listings)
    if ground:
        report["ground_truth"] = ground
    ev = build_eval_set(matcher, listings, max_listings, seed)
    report["listings"] = len(ev.listings)
    if len(ev.listings) > 1:
        report["retrieval"] = retrieval(matcher, ev.listings, n_queries, negatives, seed)
    report["detection"] = detection_report(matcher, policy, ev)
    return report


def photo_agreement(matcher: Matcher, policy: Policy, a: Listings, b: Listings, max_listings: int | None = 5000,
                    seed: int = 0) -> dict:
    """The same listings with two photos each (``a``'s and ``b``'s, joined by listing id,
    e.g. the 60x80 and 224 folders): the mean absolute difference of ``p_violation`` and
    the share of equal verdicts, on the unmodified listings and on their corrupted copies
    (the same column corruptions for both photos; an image swap takes the other listing's
    photo from the same folder)."""
    where = {lid: i for i, lid in enumerate(b.ids)}
    pairs = [(i, where[lid]) for i, lid in enumerate(a.ids) if lid in where]
    if not pairs:
        raise ValueError("the two photo sets share no listing id")
    a, b = a.take([i for i, _ in pairs]), b.take([j for _, j in pairs])
    _, ok_a = decode_images(a.images, matcher.image_size)
    _, ok_b = decode_images(b.images, matcher.image_size)
    keep = sorted(set(int(i) for i in ok_a) & set(int(i) for i in ok_b))
    rng = np.random.default_rng(seed)
    if max_listings is not None and len(keep) > max_listings:
        keep = sorted(int(i) for i in rng.choice(keep, max_listings, replace=False))
    a, b = a.take(keep), b.take(keep)
    variants = column_corruptions(a, np.random.default_rng(seed + 7), EVAL_KINDS)
    verdicts = []
    for base in (a, b):
        clean = matcher.score(base.images, base.titles, _attributes(matcher, base.rows()))
        bad = matcher.score([base.images[v.image_row] for v in variants], [v.title for v in variants],
                            _attributes(matcher, [v.columns for v in variants]))
        verdicts.append(assessments(matcher, policy, EvalSet(base, clean, variants, bad)))

    def block(x: list[Assessment], y: list[Assessment]) -> dict:
        px, py = np.asarray([v.p_violation for v in x]), np.asarray([v.p_violation for v in y])
        fx, fy = np.asarray([v.violation for v in x]), np.asarray([v.violation for v in y])
        return {"listings": len(px), "mean_abs_diff_p_violation": float(np.abs(px - py).mean()) if len(px) else None,
                "verdict_agreement": float((fx == fy).mean()) if len(px) else None,
                "flagged_a": float(fx.mean()) if len(px) else None, "flagged_b": float(fy.mean()) if len(px) else None}

    (ca, va), (cb, vb) = verdicts
    return {"unmodified": block(ca, cb), "corrupted": block(va, vb), "all": block(ca + va, cb + vb)}


def ground_truth(matcher: Matcher, policy: Policy, listings: Listings) -> dict:
    """Detection of mismatches labelled in a ``mismatch_kind`` column (synthetic samples),
    scoring the title together with the structured attribute columns, as a scan does."""
    kinds = listings.column("mismatch_kind")
    idx = [i for i, k in enumerate(kinds) if k]
    if not idx:
        return {}
    attrs = column_attributes(listings, matcher.lexicon, DEFAULT_ATTRIBUTE_COLUMNS)
    results = matcher.assess([listings.images[i] for i in idx], [listings.titles[i] for i in idx],
                             [attrs[i] for i in idx], policy)
    out: dict = {}
    for i, (_, a) in zip(idx, results):
        d = out.setdefault(kinds[i], {"total": 0, "flagged": 0, "right_kind": 0})
        d["total"] += 1
        d["flagged"] += int(a.violation)
        d["right_kind"] += int(a.violation and a.worst_kind in RIGHT_KINDS.get(kinds[i], {kinds[i]}))
    return out

"""The compliance policy, in one place: from a listing's raw scores to its verdict.

Pure (numpy, no torch, no Beam). The scan, ``ecomatch evaluate``, ``ecomatch calibrate``,
``ecomatch explain`` and the HTML report all call it; the model engine only returns raw
scores (``ecomatch_model.scores``).

**Evidence.** Each check of a listing (every attribute mention's consistency score, and the
global match) goes through its kind's *curve*: a monotone map from the raw score to the log
likelihood ratio that the check is contradicted by the photo, fitted by isotonic regression
on held-out unmodified listings against corrupted copies of them (:func:`fit_policy`). A
kind without a curve gives no evidence. A listing's evidence is the log of the sum of its
checks' likelihood ratios (the Bayes combination of "one of these checks is contradicted",
equal priors; for small per-check probabilities it is a noisy-OR), and a second curve,
fitted the same way on whole listings, turns it into the listing's log likelihood ratio L.

**p_violation** = sigmoid(L + logit(prevalence)): the probability that the listing's photo
contradicts its text, in a catalogue where a share ``prevalence`` of listings do (stated in
the calibration, default 0.02). Kinds are comparable through it, and two listings tie only
when their evidence is equal.

**Verdict:** a violation when p_violation >= ``cut``, the operating point a team chooses
(:func:`choose_cut`: a target precision at the prevalence, or a review budget).

**Blame:** among the attributes whose evidence alone would make the listing a violation, the
one with the largest likelihood ratio (a contradicted attribute lowers the global match too,
so it is blamed before the match); when there is none, the check with the largest likelihood
ratio. When that is the global match, the swap search is worth trying
(:meth:`Policy.needs_swap_search`); if a swap of one mention (``scores.Swap``) makes the
listing ok, that mention is blamed and its new value suggested, otherwise ``worst_kind`` is
``match``.

**Reviewers' decisions** (:func:`feedback_cut`) move the cut up, never down: only flagged
listings are reviewed, so the decisions say how precise the flags are at and above the
scan's cut and nothing of the listings below it.

A calibration file (a checkpoint's ``calibration.json``, or ``--calibration FILE``) is read
and validated by :func:`read_policy` / :meth:`Policy.from_json` only.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import string
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .scores import AttributeScore, ListingScore, Swap

FORMAT = "ecomatch-calibration/1"
MATCH = "match"
DEFAULT_PREVALENCE = 0.02
# Log likelihood ratios are kept within this bound.
MAX_LOG_LR = 12.0
# Beyond its end knots a curve goes on this gently (log LR per unit of raw score): the data
# says nothing there, so the evidence stays about the end knot's, yet stronger raw evidence
# still ranks higher instead of tying.
EDGE_SLOPE = 0.01
MAX_KNOTS = 4096
# The combined evidence of a listing none of whose checks has a curve.
NO_EVIDENCE = -(MAX_LOG_LR + 1)
# A suggested value is stated as what the image shows only when the attention scores it at
# least this high and above the mentioned value; otherwise the reason says what it is not.
SUGGESTION_MIN = 0.5


class CalibrationError(ValueError):
    """A calibration file or object is unusable; the message names the file and the key."""


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# ---------------------------------------------------------------------------- curves
@dataclass(frozen=True)
class Curve:
    """A monotone piecewise-linear map through knots ``(x[i], y[i])``, x strictly increasing;
    beyond the knots it goes on with slope EDGE_SLOPE, y clipped to +-MAX_LOG_LR."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, v: float) -> float:
        x, y = self.x, self.y
        if len(x) == 1 or math.isinf(v):
            out = y[0] if (len(x) == 1 or v < x[0]) else y[-1]
        elif v < x[0]:
            out = y[0] + (v - x[0]) * EDGE_SLOPE * (1 if y[-1] >= y[0] else -1)
        elif v > x[-1]:
            out = y[-1] + (v - x[-1]) * EDGE_SLOPE * (1 if y[-1] >= y[0] else -1)
        else:
            i = min(max(bisect.bisect_right(x, v), 1), len(x) - 1)     # x[i-1] <= v <= x[i]
            out = y[i - 1] + (v - x[i - 1]) * (y[i] - y[i - 1]) / (x[i] - x[i - 1])
        return min(MAX_LOG_LR, max(-MAX_LOG_LR, out))

    def to_json(self) -> dict[str, list[float]]:
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}

    @classmethod
    def from_json(cls, data: Any, key: str, decreasing: bool) -> "Curve":
        """A curve from JSON, refused (naming ``key``) unless its knots are finite numbers,
        x strictly increasing and y monotone in the stated direction."""
        if not isinstance(data, dict) or set(data) != {"x", "y"}:
            raise CalibrationError(f"{key}: expected an object with exactly the keys x and y")
        xs, ys = data["x"], data["y"]
        if not isinstance(xs, list) or not isinstance(ys, list) or not 1 <= len(xs) == len(ys) <= MAX_KNOTS:
            raise CalibrationError(f"{key}: x and y must be lists of the same length, 1 to {MAX_KNOTS}")
        for name, vals in (("x", xs), ("y", ys)):
            for i, v in enumerate(vals):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise CalibrationError(f"{key}.{name}[{i}]: must be a finite number, got {v!r}")
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise CalibrationError(f"{key}.x: must be strictly increasing")
        if any((b > a) if decreasing else (b < a) for a, b in zip(ys, ys[1:])):
            raise CalibrationError(f"{key}.y: not monotone (must be {'non-increasing' if decreasing else 'non-decreasing'}"
                                   f" in x)")
        if any(abs(v) > MAX_LOG_LR for v in ys):
            raise CalibrationError(f"{key}.y: log likelihood ratios must lie within +-{MAX_LOG_LR:g}")
        return cls(tuple(float(v) for v in xs), tuple(float(v) for v in ys))


def _pav(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Pool-adjacent-violators: the non-decreasing weighted least-squares fit of ``values``
    (already in the order of the abscissa). Returns block means, block weights and members."""
    means, wts, members = [], [], []
    for i, (v, w) in enumerate(zip(values, weights)):
        means.append(float(v)), wts.append(float(w)), members.append([i])
        while len(means) > 1 and means[-2] >= means[-1]:
            w2 = wts[-2] + wts[-1]
            means[-2] = (means[-2] * wts[-2] + means[-1] * wts[-1]) / w2
            wts[-2] = w2
            members[-2] += members[-1]
            del means[-1], wts[-1], members[-1]
    return np.asarray(means), np.asarray(wts), [np.asarray(m) for m in members]


def fit_log_lr(anomaly_neg: Sequence[float], anomaly_pos: Sequence[float]) -> Curve:
    """Isotonic fit of the log likelihood ratio (positive against negative) as a non-decreasing
    function of ``anomaly`` (higher = more likely a positive). Equal anomalies are pooled
    first; each block's ratio is smoothed (+0.5 per class) so that none is infinite; knots
    sit at the blocks' mean anomaly."""
    neg, pos = np.asarray(anomaly_neg, np.float64), np.asarray(anomaly_pos, np.float64)
    if not len(neg) or not len(pos):
        raise ValueError("a curve needs both unmodified and corrupted examples")
    a = np.r_[neg, pos]
    label = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    uniq, inverse = np.unique(a, return_inverse=True)
    n_pos = np.bincount(inverse, weights=label, minlength=len(uniq))
    n_neg = np.bincount(inverse, weights=1 - label, minlength=len(uniq))
    # Balanced weights: each class counts as a whole, whatever its size.
    w = n_pos / len(pos) + n_neg / len(neg)
    r = np.where(w > 0, (n_pos / len(pos)) / np.maximum(w, 1e-300), 0.0)
    _, _, blocks = _pav(r, w)
    xs, ys = [], []
    for m in blocks:
        p = (n_pos[m].sum() + 0.5) / (len(pos) + 1)
        q = (n_neg[m].sum() + 0.5) / (len(neg) + 1)
        xs.append(float(np.average(uniq[m], weights=n_pos[m] + n_neg[m])))
        ys.append(math.log(p / q))
    ys_arr = np.clip(np.maximum.accumulate(np.asarray(ys)), -MAX_LOG_LR, MAX_LOG_LR)
    return Curve(tuple(xs), tuple(float(v) for v in ys_arr))


def combine(evidence: Sequence[float]) -> float:
    """A listing's combined evidence: log of the sum of its checks' likelihood ratios."""
    finite = [v for v in evidence if v != -math.inf]
    return float(np.logaddexp.reduce(finite)) if finite else NO_EVIDENCE


def _flip(c: Curve) -> Curve:
    """The curve of f(-v): knots mirrored, so that evidence falls as the raw score rises."""
    return Curve(tuple(-v for v in reversed(c.x)), tuple(reversed(c.y)))


# ---------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Finding:
    """An attribute that is evidence against the listing: an element of a violation's
    ``attributes``. ``p_contradicted`` is this mention's own probability of contradicting the
    photo at the calibration's prevalence."""

    kind: str
    value: str
    score: float
    p_contradicted: float
    suggested_value: str | None
    suggested_score: float | None


@dataclass(frozen=True)
class Assessment:
    """A listing's verdict: ``p_violation``, ``violation`` (p_violation >= cut), the blamed
    attribute (``culprit``, an index into the score's attributes, or None) and its kind
    (``worst_kind``: the culprit's kind, else ``match`` for a violation nothing single
    explains, None when ok), the findings worst first and the reasons in words."""

    p_violation: float
    violation: bool
    worst_kind: str | None
    culprit: int | None
    match_p: float
    findings: tuple[Finding, ...] = ()
    reasons: tuple[str, ...] = ()


def display(value: str) -> str:
    """A lexicon value as people write it: "navy blue" -> "Navy Blue"."""
    return string.capwords(value)


def source(origin: str) -> str:
    """Where a mention came from, as reasons say it: ``title`` or ``column NAME``."""
    return "title" if origin == "title" else f"column {origin}"


def real_alternative(a: AttributeScore) -> bool:
    """Whether the model's best other value is worth stating as what the image shows."""
    return bool(a.suggestion) and a.suggestion_score >= SUGGESTION_MIN and a.suggestion_score > a.score


@dataclass(frozen=True)
class Policy:
    """Curves per check kind (``match`` and attribute kinds), the listing curve, the
    prevalence the probabilities are stated at, the verdict cut and a description of the
    operating point (expected precision, recall, false-positive rate; how it was chosen)."""

    checks: Mapping[str, Curve]
    listing: Curve
    prevalence: float = DEFAULT_PREVALENCE
    cut: float = 0.5
    operating_point: Mapping[str, Any] = field(default_factory=dict)
    fitted_on: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ evidence
    def check_log_lr(self, kind: str, raw: float) -> float:
        """A check's log likelihood ratio of contradiction; -inf (no evidence) for a kind
        without a curve."""
        curve = self.checks.get(kind)
        return curve(raw) if curve is not None else -math.inf

    def evidence(self, s: ListingScore, match: float | None = None,
                 replace: tuple[int, float] | None = None) -> list[float]:
        """Per check, its log likelihood ratio: the attributes in order, then the match.
        ``match`` and ``replace`` = (attribute index, score) evaluate a what-if (a swap)."""
        out = [self.check_log_lr(a.kind, replace[1] if replace and replace[0] == j else a.score)
               for j, a in enumerate(s.attributes)]
        return out + [self.check_log_lr(MATCH, s.match if match is None else match)]

    def probability(self, log_lr: float) -> float:
        """Log likelihood ratio -> probability at the calibration's prevalence (0 for a check
        without a curve, whose ratio is -inf)."""
        return _sigmoid(log_lr + _logit(self.prevalence))

    def p_from_evidence(self, ev: Sequence[float]) -> float:
        return self.probability(self.listing(combine(ev)))

    def p_violation(self, s: ListingScore) -> float:
        return self.p_from_evidence(self.evidence(s))

    def alone(self, ev: Sequence[float]) -> list[int]:
        """The attributes whose evidence alone would make the listing a violation."""
        return [j for j, e in enumerate(ev[:-1]) if e != -math.inf and self.p_from_evidence([e]) >= self.cut]

    def needs_swap_search(self, s: ListingScore) -> bool:
        """Whether the swap search can change this listing's blame: a violation whose
        strongest evidence is the global match, with mentions to swap and none of them a
        violation on its own."""
        if not s.attributes:
            return False
        ev = self.evidence(s)
        return (self.p_from_evidence(ev) >= self.cut and int(np.argmax(ev)) == len(s.attributes)
                and not self.alone(ev))

    def explains(self, s: ListingScore, swap: Swap | None) -> bool:
        """Whether ``swap`` alone makes the listing ok (its match and the swapped mention's
        score in place of the originals)."""
        if swap is None or not 0 <= swap.index < len(s.attributes):
            return False
        return self.p_from_evidence(self.evidence(s, swap.match, (swap.index, swap.score))) < self.cut

    # ------------------------------------------------------------------ the verdict
    def assess(self, s: ListingScore, origins: Sequence[str] | None = None, swap: Swap | None = None) -> Assessment:
        """The verdict, blame, findings and reasons of one listing (see the module docstring).
        ``origins[j]`` says where mention j came from (``title`` or a column name)."""
        origins = list(origins) if origins is not None else ["title"] * len(s.attributes)
        ev = self.evidence(s)
        p = self.p_from_evidence(ev)
        match_p = self.probability(ev[-1])
        if p < self.cut:
            return Assessment(p, False, None, None, match_p)
        # An attribute that is a violation on its own is blamed before the global match (a
        # contradicted attribute lowers the match too); else the strongest evidence, and for
        # the match the swap that restores the listing, if any.
        alone = self.alone(ev)
        top = max(alone, key=lambda j: ev[j]) if alone else int(np.argmax(ev))
        explained = top == len(s.attributes) and self.explains(s, swap)
        culprit = swap.index if explained else (top if top < len(s.attributes) else None)
        order = sorted((j for j in range(len(s.attributes)) if ev[j] > 0 and j != culprit), key=lambda j: -ev[j])
        findings, reasons = [], []
        if explained:
            a = s.attributes[culprit]
            findings.append(Finding(a.kind, a.value, a.score, self.probability(ev[culprit]), swap.value, swap.score))
            reasons.append(f"{source(origins[culprit])} says {display(a.value)}; with {display(swap.value)} instead "
                           f"the image matches the title (match {swap.match:.2f} instead of {s.match:.2f})")
        for j in ([] if explained or culprit is None else [culprit]) + order:
            a = s.attributes[j]
            findings.append(Finding(a.kind, a.value, a.score, self.probability(ev[j]),
                                    a.suggestion or None, a.suggestion_score if a.suggestion else None))
            reasons.append(self.attribute_reason(a, origins[j], self.probability(ev[j])))
        if ev[-1] > 0:
            reasons.append(f"the image does not match the title (match {s.match:.2f}; probability of a "
                           f"contradiction {match_p:.2f})")
        kind = s.attributes[culprit].kind if culprit is not None else MATCH
        return Assessment(p, True, kind, culprit, match_p, tuple(findings), tuple(reasons))

    @staticmethod
    def attribute_reason(a: AttributeScore, origin: str, p: float) -> str:
        """``title says Red; the image looks Navy Blue (colour 0.12, probability of a
        contradiction 0.93; Navy Blue 0.81)``, or ``... the image does not look Red (...)``
        when no other value is a real alternative."""
        numbers = f"{a.kind} {a.score:.2f}, probability of a contradiction {p:.2f}"
        if not real_alternative(a):
            return f"{source(origin)} says {display(a.value)}; the image does not look {display(a.value)} ({numbers})"
        return (f"{source(origin)} says {display(a.value)}; the image looks {display(a.suggestion)} "
                f"({numbers}; {display(a.suggestion)} {a.suggestion_score:.2f})")

    # ------------------------------------------------------------------ files
    def with_operating_point(self, cut: float, operating_point: Mapping[str, Any],
                             prevalence: float | None = None) -> "Policy":
        return Policy(self.checks, self.listing, self.prevalence if prevalence is None else prevalence, cut,
                      dict(operating_point), self.fitted_on)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "prevalence": self.prevalence, "cut": self.cut,
                "checks": {k: c.to_json() for k, c in sorted(self.checks.items())},
                "listing": self.listing.to_json(), "operating_point": dict(self.operating_point),
                "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_json(cls, data: Any, kinds: Sequence[str], where: str = "calibration") -> "Policy":
        """Validate and build a policy; CalibrationError naming ``where`` and the key for NaN,
        out-of-range, non-monotone, unknown-kind or unknown-key entries."""
        def fail(msg: str) -> CalibrationError:
            return CalibrationError(f"{where}: {msg}")
        if not isinstance(data, dict):
            raise fail("expected a JSON object")
        known = {"format", "prevalence", "cut", "checks", "listing", "operating_point", "fitted_on"}
        if set(data) - known:
            raise fail(f"unknown key(s) {', '.join(sorted(set(data) - known))}")
        if data.get("format") != FORMAT:
            raise fail(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
        for key, low, high in (("prevalence", 0.0, 1.0), ("cut", 0.0, 1.0)):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high \
                    or (key == "prevalence" and v in (0, 1)):
                raise fail(f"{key}: must be a number in {'(0, 1)' if key == 'prevalence' else '[0, 1]'}, got {v!r}")
        checks = data.get("checks")
        if not isinstance(checks, dict) or not checks:
            raise fail("checks: expected an object of kind -> curve")
        for kind in checks:
            if kind != MATCH and kind not in kinds:
                raise fail(f"checks.{kind}: unknown kind (known: {', '.join([MATCH, *kinds])})")
        try:
            curves = {k: Curve.from_json(v, f"checks.{k}", decreasing=True) for k, v in checks.items()}
            listing = Curve.from_json(data.get("listing"), "listing", decreasing=False)
        except CalibrationError as exc:
            raise fail(str(exc)) from None
        extra = {}
        for key in ("operating_point", "fitted_on"):
            v = data.get(key, {})
            if not isinstance(v, dict) or any(
                    isinstance(x, float) and not math.isfinite(x) for x in v.values()):
                raise fail(f"{key}: expected an object of finite values")
            extra[key] = v
        return cls(curves, listing, float(data["prevalence"]), float(data["cut"]), **extra)


def read_policy(text: str | bytes, kinds: Sequence[str], where: str) -> Policy:
    """A calibration file's bytes -> :class:`Policy` (the one reader of checkpoint files and
    ``--calibration``); CalibrationError naming ``where`` otherwise."""
    try:
        data = json.loads(text, parse_constant=lambda c: float(c))
    except ValueError as exc:
        raise CalibrationError(f"{where}: not JSON: {exc}") from None
    return Policy.from_json(data, kinds, where)


def read_policy_file(path: str, kinds: Sequence[str]) -> Policy:
    """A calibration file, local or any fsspec URL (``gs://...``), as a validated policy."""
    import fsspec    # only here: the rest of the module needs no I/O

    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: cannot read: {exc}") from None
    return read_policy(data, kinds, path)


def policy_bytes(policy: Policy) -> bytes:
    return (json.dumps(policy.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def describe(policy: Policy, source: str) -> dict[str, Any]:
    """What a scan's ``summary.json`` says of its calibration: where it came from, its sha256
    (so that ``--state`` knows whether verdicts can be carried), the cut, the prevalence,
    the operating point with its expected precision, recall and false-positive rate, and
    the reviewers' decisions it was refitted from (``fitted_on["feedback"]``; None if none)."""
    return {"source": source, "sha256": hashlib.sha256(policy_bytes(policy)).hexdigest(), "cut": policy.cut,
            "prevalence": policy.prevalence, "operating_point": dict(policy.operating_point),
            "feedback": policy.fitted_on.get("feedback")}


# ---------------------------------------------------------------------------- fitting
@dataclass
class CalibrationData:
    """Raw scores of held-out listings for fitting: per check kind, the scores of unmodified
    mentions and of corrupted ones (``match``: unmodified listings against image swaps), and
    the listings themselves, unmodified and corrupted (with each one's corruption kind)."""

    check_neg: dict[str, list[float]]
    check_pos: dict[str, list[float]]
    clean: list[ListingScore]
    corrupted: list[tuple[str, ListingScore]]


def fit_policy(data: CalibrationData, prevalence: float = DEFAULT_PREVALENCE, min_examples: int = 20,
               fitted_on: Mapping[str, Any] | None = None) -> Policy:
    """Curves for every kind with at least ``min_examples`` of both classes, then the listing
    curve on the listings' combined evidence; the cut is left at 0.5 (see :func:`choose_cut`)."""
    checks = {}
    for kind in sorted(set(data.check_neg) & set(data.check_pos)):
        neg, pos = data.check_neg[kind], data.check_pos[kind]
        if len(neg) >= min_examples and len(pos) >= min_examples:
            checks[kind] = _flip(fit_log_lr([-v for v in neg], [-v for v in pos]))
    if not checks:
        raise ValueError("no kind has enough unmodified and corrupted examples to calibrate")
    partial = Policy(checks, Curve((0.0,), (0.0,)), prevalence)

    listing = fit_log_lr([combine(partial.evidence(s)) for s in data.clean],
                         [combine(partial.evidence(s)) for _, s in data.corrupted])
    return Policy(checks, listing, prevalence, 0.5, {}, dict(fitted_on or {}))


def rates(policy: Policy, clean: Sequence[ListingScore], corrupted: Sequence[tuple[str, ListingScore]],
          kinds: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """p_violation of the unmodified listings, and of the corrupted ones per kind in ``kinds``."""
    p0 = np.asarray([policy.p_violation(s) for s in clean])
    p1 = {k: np.asarray([policy.p_violation(s) for kk, s in corrupted if kk == k]) for k in kinds}
    return p0, {k: v for k, v in p1.items() if len(v)}


def expected_at(cut: float, p0: np.ndarray, p1: Mapping[str, np.ndarray], prevalence: float) -> dict[str, float]:
    """At verdict cut ``cut``: the false-positive rate on unmodified listings, recall (the mean
    over corruption kinds), the expected precision and flags per 10,000 at ``prevalence``."""
    fpr = float((p0 >= cut).mean()) if len(p0) else float("nan")
    recall = float(np.mean([(v >= cut).mean() for v in p1.values()])) if p1 else float("nan")
    flagged = prevalence * recall + (1 - prevalence) * fpr
    precision = prevalence * recall / flagged if flagged > 0 else float("nan")
    return {"expected_precision": precision, "expected_recall": recall, "false_positive_rate": fpr,
            "flags_per_10k": 1e4 * flagged}


def choose_cut(p0: np.ndarray, p1: Mapping[str, np.ndarray], prevalence: float, precision: float | None = None,
               review_budget: float | None = None) -> tuple[float, dict[str, float]]:
    """The verdict cut: with ``precision``, the one with the highest recall whose expected
    precision at ``prevalence`` reaches it; with ``review_budget``, the lowest whose expected
    flags per 10,000 listings stay within it. Cuts lie halfway between observed values, so a
    listing never sits on one. Returns the cut and what is expected there."""
    if (precision is None) == (review_budget is None):
        raise ValueError("give exactly one of precision and review_budget")
    values = np.unique(np.r_[p0, *p1.values()])[::-1]            # candidate cuts, strictest first
    cuts = np.r_[min(1.0, values[0] + 1e-9), (values[:-1] + values[1:]) / 2, max(0.0, values[-1] - 1e-9)] \
        if len(values) > 1 else np.r_[values, 0.0]
    best, best_recall = float(cuts[0]), -1.0
    for c in cuts:
        e = expected_at(float(c), p0, p1, prevalence)
        if review_budget is not None:
            if e["flags_per_10k"] > review_budget:
                break
            best = float(c)
        elif not math.isnan(e["expected_precision"]) and e["expected_precision"] >= precision \
                and e["expected_recall"] > best_recall:
            best, best_recall = float(c), e["expected_recall"]
    return best, expected_at(best, p0, p1, prevalence)


# Reviewed listings at or above a cut chosen from reviewers' decisions, at least.
FEEDBACK_MIN_REVIEWED = 10


def feedback_cut(severities: Sequence[float], confirmed: Sequence[bool], scan_cut: float, precision: float,
                 min_reviewed: int = FEEDBACK_MIN_REVIEWED) -> tuple[float, dict[str, Any]]:
    """The verdict cut that reviewers' decisions call for, and what it gives on them.

    ``severities`` are the reviewed listings' p_violation in the scan, ``confirmed`` their
    labels (True: a real violation, False: a false alarm), ``scan_cut`` the scan's cut.
    Reviewed listings are a biased sample: only flagged ones (p_violation >= ``scan_cut``) are
    reviewed, so nothing is known of the listings below the cut and the rule never lowers it.
    It raises the cut to the lowest one, halfway between reviewed severities, at or above
    which the confirmed share of the reviewed listings (at least ``min_reviewed`` of them)
    reaches ``precision``; it keeps ``scan_cut`` when the share over all reviewed listings
    reaches it already. Decisions below ``scan_cut`` (not flags of this scan) are not used.
    That precision is the reviewed listings': it is the scan's own where reviewers decided
    every flag at or above the cut, as report.html lists them, most severe first. Raises
    ValueError when no cut reaches ``precision`` with ``min_reviewed`` listings."""
    s, y = np.asarray(severities, np.float64), np.asarray(confirmed, bool)
    if s.shape != y.shape:
        raise ValueError("one label per severity")
    used = s >= scan_cut
    s, y = s[used], y[used]
    if len(s) < min_reviewed:
        raise ValueError(f"{len(s)} decisions at or above the scan's cut {scan_cut:.4f}; at least {min_reviewed} "
                         "are needed")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    reviewed = np.arange(1, len(s) + 1)
    share = np.cumsum(y) / reviewed                 # confirmed share of the reviewed at or above s[i]
    ends = [i for i in range(len(s)) if i == len(s) - 1 or s[i] > s[i + 1]]    # whole groups of equal severity
    ok = [i for i in ends if reviewed[i] >= min_reviewed and share[i] >= precision]
    if not ok:
        best = max((i for i in ends if reviewed[i] >= min_reviewed), key=lambda i: share[i])
        raise ValueError(f"no cut reaches precision {precision:g} on the reviewed listings: the best with at least "
                         f"{min_reviewed} is {share[best]:.3f}, at or above p_violation {s[best]:.4f}")
    i = max(ok)
    cut = float(scan_cut) if i == len(s) - 1 else max(float(scan_cut), float((s[i] + s[i + 1]) / 2))
    return cut, {"rule": "feedback", "precision": precision, "previous_cut": float(scan_cut),
                 "reviewed": int(len(s)), "ignored_below_cut": int((~used).sum()),
                 "reviewed_precision_before": float(share[-1]), "reviewed_at_cut": int(reviewed[i]),
                 "reviewed_precision": float(share[i])}

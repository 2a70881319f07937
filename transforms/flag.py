"""The ``FlagViolations`` stage: scores and thresholds -> a verdict per listing.

A listing is a **violation** when its global match score is below the match threshold or
any attribute's consistency score is below its kind's threshold.

Each check has a *shortfall* d, positive exactly when it fails:

- attribute j (score and threshold in [0, 1]): ``d_j = threshold_j - score_j``;
- global match (cosine in [-1, 1]): ``d_match = (threshold_match - match) / 2``, halved
  so that it spans the same [-1, 1] as the attributes' shortfalls.

``severity = (1 + max(d)) / 2``, in [0, 1] and defined for every listing (a listing without
attributes still has the match check). It grows with the worst shortfall and equals 0.5 at
a threshold: violations score above 0.5, ok listings at or below it (a shortfall under
float precision can round a violation's severity to exactly 0.5).

``worst_kind`` is ``ListingScore.worst_kind``, the rule ``ecomatch_model.evaluate`` measures:
the failing attribute with the largest shortfall; when only the global match fails, the
attribute whose change alone restores the match (``ListingScore.explained``: the title with
another value of that kind matches the image at or above the match threshold); ``match``
when only the global match fails and no single change explains it; None for ``ok``
listings. A violation's ``attributes`` are its failing attributes, worst first, each with
the model's best other value of its kind as the suggestion, or else the explaining
attribute, with the value that restores the match as the suggestion (its own score may be
above its threshold); its ``reasons`` say the same in words, then the global mismatch if any.
"""
from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from ecomatch_model.api import AttributeScore, ListingScore

from .progress import NAMESPACE
from .score import ScoredListing

MATCH = "match"


@dataclass(frozen=True)
class Finding:
    """A failing attribute: an element of a violation's ``attributes`` list."""

    kind: str
    value: str
    score: float
    threshold: float
    suggested_value: str | None
    suggested_score: float | None


@dataclass(frozen=True)
class Verdict:
    """A scored listing's verdict; ``reasons`` and ``attributes`` are empty when ``ok``."""

    listing_id: str
    verdict: str                    # "ok" or "violation"
    severity: float
    match_score: float
    worst_kind: str | None
    content_hash: str
    reasons: tuple[str, ...] = ()
    attributes: tuple[Finding, ...] = ()
    carried: bool = False           # taken from an earlier run, unchanged since (transforms/state.py)

    def score_row(self) -> dict[str, Any]:
        """The row of ``scores/*.parquet``."""
        return {"listing_id": self.listing_id, "verdict": self.verdict, "severity": self.severity,
                "match_score": self.match_score, "worst_kind": self.worst_kind, "content_hash": self.content_hash}

    def violation_row(self) -> dict[str, Any]:
        """The row of ``violations/*.parquet``."""
        return {"listing_id": self.listing_id, "severity": self.severity, "match_score": self.match_score,
                "worst_kind": self.worst_kind, "reasons": list(self.reasons),
                "attributes": [asdict(f) for f in self.attributes]}


def display(value: str) -> str:
    """A lexicon value as people write it: "navy blue" -> "Navy Blue"."""
    return string.capwords(value)


def source(origin: str) -> str:
    """Where a mention came from, as reasons say it: ``title`` or ``column NAME``."""
    return "title" if origin == "title" else f"column {origin}"


def attribute_reason(a: AttributeScore, origin: str) -> str:
    """``title says Red; the image looks Navy Blue (colour 0.12 < threshold 0.40; ...)``."""
    where = source(origin)
    numbers = f"{a.kind} {a.score:.2f} < threshold {a.threshold:.2f}"
    if not a.suggestion:
        return f"{where} says {display(a.value)}; the image does not look {display(a.value)} ({numbers})"
    return (f"{where} says {display(a.value)}; the image looks {display(a.suggestion)} "
            f"({numbers}; {display(a.suggestion)} {a.suggestion_score:.2f})")


def explained_reason(a: AttributeScore, origin: str, s: ListingScore) -> str:
    """``title says Tshirt; with Backpack instead the image matches the title (match 0.91 >= threshold 0.86)``."""
    return (f"{source(origin)} says {display(a.value)}; with {display(s.explained_value)} instead the image matches the "
            f"title (match {s.explained_match:.2f} >= threshold {s.match_threshold:.2f})")


def match_reason(match: float, threshold: float) -> str:
    return f"the image does not match the title (match {match:.2f} < threshold {threshold:.2f})"


def flag_listing(scored: ScoredListing) -> Verdict:
    """The verdict for one scored listing (see the module docstring for the formulas)."""
    s = scored.score
    match_shortfall = (s.match_threshold - s.match) / 2
    failing = [(s.attributes[j], scored.origins[j]) for j in s.failing()]
    worst = s.worst_kind
    severity = (1 + max([match_shortfall] + [a.threshold - a.score for a in s.attributes])) / 2
    reasons = [attribute_reason(a, origin) for a, origin in failing]
    findings = [Finding(a.kind, a.value, a.score, a.threshold, a.suggestion or None,
                        a.suggestion_score if a.suggestion else None) for a, _ in failing]
    j = s.culprit()
    if not failing and j is not None:      # the global match fails alone, and one attribute explains it
        a = s.attributes[j]
        reasons.append(explained_reason(a, scored.origins[j], s))
        findings.append(Finding(a.kind, a.value, a.score, a.threshold, s.explained_value, s.explained_score))
    reasons += [match_reason(s.match, s.match_threshold)] if s.match_fails else []
    return Verdict(scored.listing_id, "violation" if worst else "ok", severity, s.match, worst,
                   scored.content_hash, tuple(reasons), tuple(findings))


class _FlagFn(beam.DoFn):
    """Flags listings and counts verdicts (progress is ``TrackProgress``'s, transforms/progress.py)."""

    def process(self, scored: ScoredListing) -> Iterator[Verdict]:
        v = flag_listing(scored)
        Metrics.counter(NAMESPACE, "ok" if v.verdict == "ok" else "violations").inc()
        if v.worst_kind is not None:
            Metrics.counter(NAMESPACE, f"violations_{v.worst_kind}").inc()
        yield v


class FlagViolations(beam.PTransform):
    """ScoredListing -> :class:`Verdict` (one per listing)."""

    def expand(self, scored: beam.PCollection[ScoredListing]) -> beam.PCollection[Verdict]:
        return scored | "Flag" >> beam.ParDo(_FlagFn())

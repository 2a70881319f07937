"""The ``FlagViolations`` stage: raw scores -> a verdict per listing, by the one policy of
``ecomatch_model.verdict`` (no rule of its own here).

``severity`` is the policy's ``p_violation``: the probability, at the calibration's stated
prevalence, that the listing's photo contradicts its text; a listing is a violation when it
reaches the operating point's cut. ``worst_kind`` is the blamed attribute's kind (or
``match`` when no single attribute explains a global mismatch), None for ``ok`` listings; a
violation's ``attributes`` are the policy's findings (the blamed mention first, with the
model's best other value or the swap that restores the match as the suggestion) and its
``reasons`` say the same in words.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from ecomatch_model.verdict import MATCH, Finding, Policy

from .progress import NAMESPACE
from .score import ScoredListing

__all__ = ["MATCH", "Verdict", "flag_listing", "FlagViolations"]


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


def flag_listing(scored: ScoredListing, policy: Policy) -> Verdict:
    """The verdict for one scored listing."""
    a = policy.assess(scored.score, scored.origins, scored.swap)
    return Verdict(scored.listing_id, "violation" if a.violation else "ok", a.p_violation, scored.score.match,
                   a.worst_kind, scored.content_hash, a.reasons, a.findings)


class _FlagFn(beam.DoFn):
    """Flags listings and counts verdicts (progress is ``TrackProgress``'s, transforms/progress.py)."""

    def __init__(self, policy: Policy):
        self._policy = policy

    def process(self, scored: ScoredListing) -> Iterator[Verdict]:
        v = flag_listing(scored, self._policy)
        Metrics.counter(NAMESPACE, "ok" if v.verdict == "ok" else "violations").inc()
        if v.worst_kind is not None:
            Metrics.counter(NAMESPACE, f"violations_{v.worst_kind}").inc()
        yield v


class FlagViolations(beam.PTransform):
    """ScoredListing -> :class:`Verdict` (one per listing) under ``policy``."""

    def __init__(self, policy: Policy):
        super().__init__()
        self._policy = policy

    def expand(self, scored: beam.PCollection[ScoredListing]) -> beam.PCollection[Verdict]:
        return scored | "Flag" >> beam.ParDo(_FlagFn(self._policy))

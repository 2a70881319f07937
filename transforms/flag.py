"""The ``FlagViolations`` stage: raw scores -> a verdict per listing, by the one policy of
``ecomatch_model.verdict`` (no rule of its own here).

``severity`` is the policy's ``p_violation``: the probability, at the calibration's stated
prevalence, that the listing's photo contradicts its text; a listing is a violation when it
reaches the operating point's cut. ``worst_kind`` is the blamed attribute's kind (or
``match`` when no single attribute explains a global mismatch), None for ``ok`` listings; a
violation's ``attributes`` are the policy's findings (the blamed mention first, with the
model's best other value or the swap that restores the match as the suggestion) and its
``reasons`` say the same in words. A violation also carries what a reviewer needs to act
without joining back to the catalogue (:class:`~transforms.decode.ListingContext`: title,
``image_uri`` with credentials masked, the ``--carry-columns`` values) and its source file;
an ok listing keeps only its seller (``--seller-column``), for the per-seller counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from ecomatch_model.verdict import MATCH, Finding, Policy

from .decode import ListingContext
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
    source: str = ""                # the input file
    seller: str | None = None       # the --seller-column value, for every verdict
    context: ListingContext | None = None   # violations only

    def score_row(self) -> dict[str, Any]:
        """The row of ``scores/*.parquet``."""
        return {"listing_id": self.listing_id, "verdict": self.verdict, "severity": self.severity,
                "match_score": self.match_score, "worst_kind": self.worst_kind, "content_hash": self.content_hash}

    def violation_row(self, carry_columns: Sequence[str] = ()) -> dict[str, Any]:
        """The row of ``violations/*.parquet``, with one column per name of ``carry_columns``."""
        c = self.context or ListingContext("")
        return {"listing_id": self.listing_id, "severity": self.severity, "match_score": self.match_score,
                "worst_kind": self.worst_kind, "reasons": list(self.reasons),
                "attributes": [asdict(f) for f in self.attributes], "title": c.title, "image_uri": c.image_uri,
                "source": self.source, **{name: c.get(name) for name in carry_columns}}


def flag_listing(scored: ScoredListing, policy: Policy, seller_column: str | None = None) -> Verdict:
    """The verdict for one scored listing; the listing's context is kept for a violation only."""
    a = policy.assess(scored.score, scored.origins, scored.swap)
    context = scored.context if a.violation else None
    seller = scored.context.get(seller_column) if scored.context else None
    return Verdict(scored.listing_id, "violation" if a.violation else "ok", a.p_violation, scored.score.match,
                   a.worst_kind, scored.content_hash, a.reasons, a.findings, source=scored.source, seller=seller,
                   context=context)


class _FlagFn(beam.DoFn):
    """Flags listings and counts verdicts (progress is ``TrackProgress``'s, transforms/progress.py)."""

    def __init__(self, policy: Policy, seller_column: str | None = None):
        self._policy, self._seller_column = policy, seller_column

    def process(self, scored: ScoredListing) -> Iterator[Verdict]:
        v = flag_listing(scored, self._policy, self._seller_column)
        Metrics.counter(NAMESPACE, "ok" if v.verdict == "ok" else "violations").inc()
        if v.worst_kind is not None:
            Metrics.counter(NAMESPACE, f"violations_{v.worst_kind}").inc()
        yield v


class FlagViolations(beam.PTransform):
    """ScoredListing -> :class:`Verdict` (one per listing) under ``policy``; ``seller_column``
    names the carried column whose value each verdict keeps as its ``seller``."""

    def __init__(self, policy: Policy, seller_column: str | None = None):
        super().__init__()
        self._policy, self._seller_column = policy, seller_column

    def expand(self, scored: beam.PCollection[ScoredListing]) -> beam.PCollection[Verdict]:
        return scored | "Flag" >> beam.ParDo(_FlagFn(self._policy, self._seller_column))

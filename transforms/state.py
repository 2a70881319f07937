"""Incremental scans: the ``CarryForward`` stage, between ``ReadListings`` and ``DecodeListings``.

``ecomatch scan --state PREFIX`` names an earlier run's output prefix. Every listing read is
hashed before it is decoded (its ``content_hash``, ``transforms/decode.py``: model weights,
title, structured attributes, image bytes) and joined by listing id with that run's
``scores/`` and ``violations/`` in a ``CoGroupByKey``, so the earlier run is never held in
one process:

- same id, same hash: the earlier verdict is carried forward (``Verdict.carried``), neither
  decoded nor scored; only its verdict columns are read from the earlier ``violations/``
  (:data:`~transforms.reports.VERDICT_COLUMNS`), the title, ``image_uri``, source and carried
  columns are the listing's as read now (they are not all in the content hash);
- a new id, or a changed hash, or a listing that cannot be hashed: decoded and scored as
  usual (decoding reports the unusable ones);
- an id of the earlier run that is not read any more: one ``removed/`` row.

The hash covers the model's weights, so a new model version rescans everything. The launcher
(:func:`previous_run`) uses a state only when its run is complete (``summary.json``), had
the same model, calibration and scoring rules (``SCORING_RULES``, ``transforms/reports.py``)
and every shard it lists has a readable footer with the expected columns; otherwise it says
why and the scan is a full one. A row group of the state that still cannot be read while the
job runs is skipped with a warning (:func:`state_rows`): its listings are scored again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from ecomatch_model.verdict import Finding

from .decode import DEFAULT_FETCH_CONCURRENCY, FetchingFn, ListingDecoder
from .errors import redact
from .flag import Verdict
from .listings import RawListing
from .progress import NAMESPACE
from .reports import SCORES, SCORES_SCHEMA, SCORING_RULES, VERDICT_COLUMNS, VIOLATIONS, read_summary

CARRIED, REMOVED = "carried", "removed"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviousRun:
    """A complete earlier run whose verdicts can be carried forward: its prefix and shards."""

    prefix: str
    scores: list[str]
    violations: list[str]


def previous_run(prefix: str, model_sha256: str, calibration_sha256: str) -> tuple[PreviousRun | None, str]:
    """The run under ``prefix`` when this scan (model ``model_sha256``, calibration
    ``calibration_sha256``) can carry its verdicts forward, else None and the reason."""
    try:
        summary = read_summary(prefix)
        sha = summary["model"]["sha256"]
        then = summary.get("calibration", {}).get("sha256") if isinstance(summary.get("calibration"), dict) else None
        shards = {name: [FileSystems.join(prefix, p) for p in summary["files"][name]] for name in (SCORES, VIOLATIONS)}
    except (OSError, ValueError, KeyError, TypeError):
        return None, "it holds no complete run (no readable summary.json)"
    if sha != model_sha256:
        return None, f"it was scanned with another model (sha256 {sha[:12]})"
    if then != calibration_sha256:
        return None, "it was scanned with another calibration"
    rules = summary.get("scoring_rules", 1)         # runs before the version was recorded: 1
    if rules != SCORING_RULES:
        return None, f"it was scanned under other scoring rules (version {rules}; this scan's is {SCORING_RULES})"
    for path, columns in [*((p, SCORES_SCHEMA.names) for p in shards[SCORES]),
                          *((p, VERDICT_COLUMNS) for p in shards[VIOLATIONS])]:
        why = unreadable_shard(path, columns)
        if why:
            return None, f"its shard {path} cannot be read ({why})"
    return PreviousRun(prefix, shards[SCORES], shards[VIOLATIONS]), ""


def unreadable_shard(path: str, columns: Sequence[str]) -> str:
    """Why the earlier run's shard at ``path`` cannot be used (no footer, one of ``columns``
    missing), or "" when its footer and columns are fine."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            names = pq.read_metadata(f).schema.to_arrow_schema().names
    except Exception as exc:  # noqa: BLE001 (missing, truncated, not Parquet: OSError, ArrowInvalid, ...)
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    missing = [n for n in columns if n not in names]
    return f"columns {', '.join(missing)} are missing" if missing else ""


def state_rows(path: str, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of one of the earlier run's shards, a row group at a time. A row group that
    cannot be read (a corrupt page the footer check could not see) is skipped with a
    warning: its listings are then scored again, never lost."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                try:
                    rows = pf.read_row_group(g, columns=list(columns)).to_pylist()
                except Exception as exc:  # noqa: BLE001 (ArrowInvalid, OSError, ...)
                    Metrics.counter(NAMESPACE, "state_unreadable").inc()
                    log.warning("--state: row group %d of %s cannot be read (%s); its listings are scored again",
                                g + 1, redact(path), type(exc).__name__)
                    continue
                yield from rows
    except Exception as exc:  # noqa: BLE001 (the file went away or lost its footer since launch)
        Metrics.counter(NAMESPACE, "state_unreadable").inc()
        log.warning("--state: %s cannot be read (%s); its listings are scored again", redact(path), type(exc).__name__)


class KeyedHash(FetchingFn):
    """Each listing as ``(listing_id, (content_hash, raw))``, its http(s) image fetched
    concurrently (:class:`~transforms.decode.FetchingFn`); the hash is None when the listing
    cannot be hashed (no id or title, image unreadable or too large), and decoding then
    reports why."""

    def early(self, raw: RawListing) -> list | None:
        if not raw.listing_id or raw.title is None or raw.invalid:
            return [(raw.listing_id or "", (None, raw))]
        return None

    def finish(self, raw: RawListing, data: bytes | None, exc: BaseException | None) -> list:
        # A failure is decoding's to report, as an error record (it fetches the image again).
        return [(raw.listing_id, (None if exc is not None else self._decoder.listing_hash(raw, data), raw))]


def carried_verdict(score: Mapping[str, Any], violations: Iterable[Mapping[str, Any]]) -> Verdict | None:
    """The earlier verdict from its ``scores/`` row and, for a violation, its ``violations/`` row
    (None when that row is missing: the listing is then scored again)."""
    key = (score["severity"], score["match_score"], score["worst_kind"])
    if score["verdict"] == "ok":
        return Verdict(score["listing_id"], "ok", *key, score["content_hash"], carried=True)
    row = next((v for v in violations if (v["severity"], v["match_score"], v["worst_kind"]) == key), None)
    if row is None:
        return None
    return Verdict(score["listing_id"], "violation", *key, score["content_hash"], tuple(row["reasons"]),
                   tuple(Finding(**a) for a in row["attributes"]), carried=True)


def split_by_state(joined: tuple[str, Mapping[str, list]], decoder: ListingDecoder | None = None,
                   seller_column: str | None = None) -> Iterator[RawListing | TaggedOutput]:
    """One listing id's rows now and in the earlier run -> listings to decode (main output),
    carried verdicts (``carried``, with the listing's context as read now: ``decoder.context``)
    and a removed row (``removed``)."""
    listing_id, rows = joined
    now, scores, violations = list(rows["now"]), list(rows[SCORES]), list(rows[VIOLATIONS])
    by_hash = {s["content_hash"]: s for s in scores}
    for content_hash, raw in now:
        score = by_hash.get(content_hash) if content_hash else None
        verdict = carried_verdict(score, violations) if score else None
        if verdict is None:
            yield raw
        else:
            Metrics.counter(NAMESPACE, "carried").inc()
            context = decoder.context(raw) if decoder else None
            yield TaggedOutput(CARRIED, replace(
                verdict, source=raw.source, seller=context.get(seller_column) if context else None,
                context=context if verdict.verdict == "violation" else None))
    if not now and scores:
        yield TaggedOutput(REMOVED, {"listing_id": listing_id, "verdict": scores[0]["verdict"],
                                     "content_hash": scores[0]["content_hash"]})


class CarryForward(beam.PTransform):
    """RawListing -> (RawListing to decode, carried :class:`Verdict`, removed row) PCollections
    against :class:`PreviousRun`; each listing read leaves in exactly one of the first two."""

    def __init__(self, previous: PreviousRun, decoder: ListingDecoder, seller_column: str | None = None,
                 concurrency: int = DEFAULT_FETCH_CONCURRENCY):
        super().__init__()
        self._previous, self._decoder, self._seller_column = previous, decoder, seller_column
        self._concurrency = concurrency

    def expand(self, listings: beam.PCollection[RawListing]
               ) -> tuple[beam.PCollection[RawListing], beam.PCollection[Verdict], beam.PCollection[dict]]:
        now = listings | "HashListings" >> beam.ParDo(KeyedHash(self._decoder, self._concurrency))
        earlier = {name: (listings.pipeline
                          | f"Previous{name.title()}Files" >> beam.Create(files)
                          | f"ReadPrevious{name.title()}" >> beam.FlatMap(state_rows, columns)
                          | f"Key{name.title()}" >> beam.Map(lambda row: (row["listing_id"], row)))
                   for name, files, columns in ((SCORES, self._previous.scores, SCORES_SCHEMA.names),
                                                (VIOLATIONS, self._previous.violations, VERDICT_COLUMNS))}
        split = ({"now": now, **earlier}
                 | "JoinState" >> beam.CoGroupByKey()
                 | "SplitByState" >> beam.FlatMap(split_by_state, self._decoder, self._seller_column)
                 .with_outputs(CARRIED, REMOVED, main="changed"))
        return split.changed, split[CARRIED], split[REMOVED]

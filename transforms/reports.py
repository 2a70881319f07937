"""The ``WriteReports`` stage and the output layout under PREFIX (local path or ``gs://``):

- ``scores/part-RUN_ID-SSSSS-of-NNNNN.parquet``: one row per scored listing (:data:`SCORES_SCHEMA`);
- ``violations/part-*.parquet``: one row per violation (:data:`VIOLATIONS_SCHEMA`, then one
  string column per ``--carry-columns`` name: :func:`violations_schema`);
- ``errors/part-*.parquet``: one row per listing that could not be scored (:data:`ERRORS_SCHEMA`),
  stage ``decode`` or ``score``; with ``--skip-bad-files`` also one row per input file or
  row group that could not be read (stage ``read``, no listing id), not a listing and so
  counted apart, as ``skipped_inputs``;
- ``removed/part-*.parquet``: with ``--state``, one row per listing id of the earlier run that
  is not read any more (:data:`REMOVED_SCHEMA`, ``transforms/state.py``);
- ``summary.json``: counts, model, calibration (source, sha256, the verdict cut, the
  prevalence ``severity`` is stated at, the operating point's expected precision, recall and
  false-positive rate: ``ecomatch_model.verdict.describe``), the scoring rules' version
  (:data:`SCORING_RULES`), input, runner, times and throughput, and the shard files of this
  run. It is written last, only once every shard is final and the counts reconcile
  (read = scored + errors, scored = ok + violations); otherwise the job fails. A prefix
  without ``summary.json`` holds no complete run. ``duplicates`` counts the listing ids
  read more than once (``ids``) and the rows carrying them (``rows``): every such row is
  scored or reported like any other. Credentials in the input, output and
  model locations are masked (:func:`~transforms.errors.redact`). ``incremental`` splits
  ``scored`` into the verdicts carried forward from the ``--state`` run (``carried``) and
  those the model gave now (``scored``), and counts the ``removed`` ids. ``scoring_devices``
  lists, per worker (host name) and device (``cuda:0``, ``cpu``), how many listings the model
  scored there: a GPU job whose workers fell back to the CPU shows ``cpu`` (``infra.nightly``
  alerts on it). With a seller column (``--seller-column``), ``sellers`` lists the
  :data:`TOP_SELLERS` sellers with the most violations (:func:`sellers_block`), counted in the
  pipeline per seller, never gathered in one process.
- ``run.json``: ``{"run_id": ...}``, the run that owns the prefix, written at launch
  (:func:`claim_prefix`); the last run to claim a prefix owns it.
- ``report.html``: not written here but by the step after, ``WriteHtmlReport``
  (``transforms/html_report.py``), from the one ``summary.json`` this stage outputs.

Counts come from the data (PCollections of events), not from Beam metrics, so a bundle
that a runner retries is counted once: only its committed attempt's outputs exist.

Shards go through Beam's file sinks (temporary files, then finalize). Every report
directory gets at least one shard, so an empty report still carries its schema.

One run per prefix: every shard name carries the run id, ``summary.json`` carries it too and
lists the run's shards, and a run writes ``summary.json`` only while ``run.json`` still names
it (checked before and after writing); a run whose prefix another scan claimed since fails
with :class:`PrefixTakenError` and publishes nothing. Readers take the shards from
``summary.json`` (``files``), never from a directory listing: a losing run's shards may
linger, named with its own id, until the next launch clears the prefix.

Reruns replace: :func:`clear_outputs` deletes the previous run's ``summary.json`` and report
directories (and nothing else under PREFIX) when the job is launched. Deleting up front,
rather than writing to a run-specific prefix and swapping, keeps readers on one fixed
layout and needs no rename, which object stores do not have; the price is that a failed
rerun leaves no report, and its missing ``summary.json`` says so.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.pvalue import AsList

from .errors import ErrorRecord, redact
from .flag import MATCH, Verdict

SCORES, VIOLATIONS, ERRORS, SUMMARY = "scores", "violations", "errors", "summary.json"
RUN = "run.json"              # which run owns the prefix: written at launch, checked before summary.json
REMOVED = "removed"           # written with --state only
REPORT = "report.html"        # written after summary.json, by the job's WriteHtmlReport (transforms.html_report)
# What a listing's rows say for the same model, calibration and input: raise it whenever that
# changes, so that ``--state`` rescans a run made under the older rules instead of carrying
# its rows forward. 1: a failing attribute is blamed, else the global match; 2: a global
# mismatch is blamed on the attribute whose swap restores the match; 3: severity is the
# calibrated p_violation of ``ecomatch_model.verdict``.
SCORING_RULES = 3

SCORES_SCHEMA = pa.schema([
    ("listing_id", pa.string()), ("verdict", pa.string()), ("severity", pa.float64()),
    ("match_score", pa.float64()), ("worst_kind", pa.string()), ("content_hash", pa.string()),
])
ATTRIBUTE_TYPE = pa.struct([
    ("kind", pa.string()), ("value", pa.string()), ("score", pa.float64()), ("p_contradicted", pa.float64()),
    ("suggested_value", pa.string()), ("suggested_score", pa.float64()),
])
VIOLATIONS_SCHEMA = pa.schema([
    ("listing_id", pa.string()), ("severity", pa.float64()), ("match_score", pa.float64()),
    ("worst_kind", pa.string()), ("reasons", pa.list_(pa.string())), ("attributes", pa.list_(ATTRIBUTE_TYPE)),
    ("title", pa.string()), ("image_uri", pa.string()), ("source", pa.string()),
])
# The columns of a violation's verdict (what --state carries forward; the rest is the listing's).
VERDICT_COLUMNS = ("listing_id", "severity", "match_score", "worst_kind", "reasons", "attributes")
TOP_SELLERS = 20


def violations_schema(carry_columns: Sequence[str] = ()) -> pa.Schema:
    """:data:`VIOLATIONS_SCHEMA` with one string column per ``--carry-columns`` name, in order."""
    return pa.schema([*VIOLATIONS_SCHEMA, *((c, pa.string()) for c in carry_columns)])


ERRORS_SCHEMA = pa.schema([
    ("listing_id", pa.string()), ("source", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])
REMOVED_SCHEMA = pa.schema([("listing_id", pa.string()), ("verdict", pa.string()), ("content_hash", pa.string())])


class CountMismatchError(RuntimeError):
    """The scan's counts do not reconcile: some listing was lost or counted twice."""


@dataclass(frozen=True)
class ScanInfo:
    """What the launcher knows about a scan, for ``summary.json``."""

    input: str
    input_files: int
    output: str
    model_name: str
    model_sha256: str
    calibration: Mapping[str, Any]  # ecomatch_model.verdict.describe
    kinds: Sequence[str]            # attribute kinds, for per-kind counts
    runner: str
    started_at: float = field(default_factory=time.time)
    state: str | None = None        # the earlier run whose verdicts are carried forward
    run_id: str = ""                # in every shard name and in summary.json; "" outside a scan (tests)
    carry_columns: Sequence[str] = ()   # --carry-columns: extra columns of violations/
    seller_column: str | None = None    # the carried column that names the seller


class PrefixTakenError(RuntimeError):
    """Another run started writing to this run's output prefix: this one publishes nothing."""


def new_run_id(now: float | None = None) -> str:
    """A run id: the launch time (UTC) and 8 random hex digits, e.g. ``20261201T204500Z-3f2a9c1b``."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def claim_prefix(prefix: str, run_id: str) -> None:
    """Write ``run.json``: from now on ``prefix`` belongs to ``run_id`` (the last run to claim it)."""
    with FileSystems.create(FileSystems.join(prefix, RUN), mime_type="application/json") as f:
        f.write((json.dumps({"run_id": run_id}) + "\n").encode("utf-8"))


def prefix_owner(prefix: str) -> str | None:
    """The run id in ``prefix``'s ``run.json``, or None when it has none that can be read."""
    try:
        with FileSystems.open(FileSystems.join(prefix, RUN), mime_type="application/json") as f:
            return json.loads(f.read().decode("utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_owner(prefix: str, run_id: str) -> None:
    """Raise :class:`PrefixTakenError` unless ``run_id`` still owns ``prefix``."""
    owner = prefix_owner(prefix)
    if owner != run_id:
        raise PrefixTakenError(f"another scan (run {owner}) started writing to {redact(prefix)} after this one "
                               f"(run {run_id}); this run publishes no summary.json")


def check_writable(prefix: str) -> None:
    """Write and delete an empty probe file under ``prefix``; raises OSError saying why when
    that fails (a prefix under a regular file, a read-only or system location, no permission)."""
    probe = FileSystems.join(prefix, f".ecomatch-write-check-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe, mime_type="application/octet-stream") as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as exc:  # noqa: BLE001 (OSError, BeamIOError, a client's own errors)
        cause = getattr(exc, "exception_details", None) or exc
        raise OSError(f"cannot write under {redact(prefix)}: {' '.join(str(cause).split())[:300]}") from None


def clear_outputs(prefix: str) -> None:
    """Delete a previous run's reports under ``prefix`` (see the module docstring)."""
    for name in (SUMMARY, REPORT, SCORES, VIOLATIONS, ERRORS, REMOVED):
        path = FileSystems.join(prefix, name)
        files = [m.path for m in FileSystems.match([path + "/**"])[0].metadata_list]
        if files:
            FileSystems.delete(files)
        if FileSystems.exists(path):      # summary.json, or a local directory now empty
            FileSystems.delete([path])


def verdict_events(v: Verdict) -> Iterator[str]:
    """Count keys of one verdict: scored, carried or inferred, its verdict and, for violations, its kind."""
    yield "scored"
    yield "carried" if v.carried else "inferred"
    yield v.verdict
    if v.worst_kind is not None:
        yield f"kind:{v.worst_kind}"


def error_events(e: ErrorRecord) -> Iterator[str]:
    """Count keys of one error record: a listing's error and its type, or a skipped input."""
    if e.stage == "read":
        yield "skipped_input"
        return
    yield "errors"
    yield f"error:{e.error_type}"


def device_event(scored: Any) -> str:
    """Count key of one listing scored by the model: its device and worker (``ScoredListing``)."""
    return f"device:{scored.device}\t{scored.worker}"


def scoring_devices(events: Mapping[str, int]) -> list[dict[str, Any]]:
    """``summary.json``'s ``scoring_devices``: per worker and device, the listings the model scored there."""
    rows = [(*k[7:].split("\t", 1), n) for k, n in events.items() if k.startswith("device:")]
    return [{"worker": w, "device": d, "listings": int(n)} for d, w, n in sorted(rows, key=lambda r: (r[1], r[0]))]


def seller_counts(v: Verdict) -> Iterator[tuple[str, tuple[int, int]]]:
    """(seller, (violations, scored)) of one verdict whose listing names a seller."""
    if v.seller:
        yield v.seller, (int(v.verdict == "violation"), 1)


def _sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    pairs = list(pairs)
    return sum(a for a, _ in pairs), sum(b for _, b in pairs)


def _seller_rank(kv: tuple[str, tuple[int, int]]) -> tuple:
    """Larger for more violations, then a higher share, then the seller's name in alphabetical order."""
    seller, (violations, scored) = kv
    return violations, violations / scored, [-ord(ch) for ch in seller] + [1]


def sellers_block(column: str | None, top: Sequence[tuple[str, tuple[int, int]]], with_violations: Sequence[int]
                  ) -> dict[str, Any] | None:
    """``summary.json``'s ``sellers``: the seller column, how many sellers have a violation, and
    the :data:`TOP_SELLERS` with the most (violations, scored listings, their share)."""
    if not column:
        return None
    ranked = sorted(top, key=_seller_rank, reverse=True)[:TOP_SELLERS]
    return {"column": column, "with_violations": int(sum(with_violations)),
            "top": [{"seller": s, "violations": v, "scored": n, "share": round(v / n, 6)}
                    for s, (v, n) in ranked]}


def duplicate_events(id_count: tuple[str, int]) -> Iterator[str]:
    """Count keys of a listing id read ``n`` times: none when n is 1, else one
    ``duplicate_id`` and ``n`` ``duplicate_row``."""
    _, n = id_count
    if n > 1:
        yield "duplicate_id"
        yield from ["duplicate_row"] * n


def summary_counts(events: Mapping[str, int], kinds: Sequence[str]) -> dict[str, Any]:
    """The ``counts`` block of ``summary.json``; raises :class:`CountMismatchError` when
    read != scored + errors, scored != ok + violations, or the per-kind counts do not add up."""
    def get(key: str) -> int:
        return int(events.get(key, 0))

    counts: dict[str, Any] = {"read": get("read"), "scored": get("scored"), "ok": get("ok"),
                              "violations": get("violation"), "errors": get("errors")}
    counts["violations_per_kind"] = {k: get(f"kind:{k}") for k in [MATCH, *kinds]}
    counts["errors_per_type"] = {k[6:]: n for k, n in sorted(events.items()) if k.startswith("error:")}
    problems = []
    if counts["read"] != counts["scored"] + counts["errors"]:
        problems.append(f"read {counts['read']} != scored {counts['scored']} + errors {counts['errors']}")
    if counts["scored"] != counts["ok"] + counts["violations"]:
        problems.append(f"scored {counts['scored']} != ok {counts['ok']} + violations {counts['violations']}")
    if sum(counts["violations_per_kind"].values()) != counts["violations"]:
        problems.append(f"violations per kind {counts['violations_per_kind']} do not add up to {counts['violations']}")
    if problems:
        raise CountMismatchError("scan counts do not reconcile: " + "; ".join(problems))
    return counts


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _relative(prefix: str, path: str) -> str:
    root = prefix.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else path


def write_summary(events: Mapping[str, int], info: ScanInfo, scores: Sequence[str], violations: Sequence[str],
                  errors: Sequence[str], removed: Sequence[str] = (), sellers: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Build ``summary.json`` from the event counts, the final shard names and the sellers
    block (:func:`sellers_block`), write it under the output prefix, and return it."""
    counts = summary_counts(events, info.kinds)
    finished = time.time()
    seconds = max(finished - info.started_at, 1e-9)
    summary = {
        "counts": counts,
        "duplicates": {"ids": int(events.get("duplicate_id", 0)), "rows": int(events.get("duplicate_row", 0))},
        "skipped_inputs": int(events.get("skipped_input", 0)),
        "incremental": {"state": redact(info.state) if info.state else None, "carried": int(events.get("carried", 0)),
                        "scored": int(events.get("inferred", 0)), "removed": int(events.get("removed", 0))},
        "model": {"name": redact(info.model_name), "sha256": info.model_sha256},
        "calibration": dict(info.calibration),
        "scoring_rules": SCORING_RULES,
        "input": {"pattern": redact(info.input), "files": info.input_files},
        "output": redact(info.output),
        "runner": info.runner,
        "scoring_devices": scoring_devices(events),
        "carry_columns": list(info.carry_columns),
        "sellers": sellers,
        "started_at": _iso(info.started_at),
        "finished_at": _iso(finished),
        "seconds": round(seconds, 3),
        "listings_per_second": round(counts["read"] / seconds, 3),
        "files": {name: sorted(_relative(info.output, p) for p in paths)
                  for name, paths in ((SCORES, scores), (VIOLATIONS, violations), (ERRORS, errors),
                                      *([(REMOVED, removed)] if info.state else []))},
    }
    if info.run_id:
        summary["run_id"] = info.run_id
        check_owner(info.output, info.run_id)
    path = FileSystems.join(info.output, SUMMARY)
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    if info.run_id and prefix_owner(info.output) != info.run_id:    # claimed while we wrote: take it back
        FileSystems.delete([path])
        check_owner(info.output, info.run_id)
    return summary


def summary_step(events, info, scores, violations, errors, *side, with_removed=False):  # untyped: Beam checks hints
    """``WriteSummary``: :func:`write_summary` with its side inputs, the removed shards (with
    ``--state``) then, with a seller column, the top sellers and the count of sellers with a violation."""
    removed, rest = (side[0], side[1:]) if with_removed else ((), side)
    return write_summary(events, info, scores, violations, errors, removed,
                         sellers_block(info.seller_column, *rest) if rest else None)


def read_summary(prefix: str) -> dict[str, Any]:
    """The ``summary.json`` of the scan written to ``prefix``."""
    with FileSystems.open(FileSystems.join(prefix, SUMMARY), mime_type="application/json") as f:
        return json.loads(f.read().decode("utf-8"))


def _shards(prefix: str, name: str, schema: pa.Schema, run_id: str = "") -> WriteToParquet:
    part = f"part-{run_id}" if run_id else "part"
    return WriteToParquet(FileSystems.join(prefix, name, part), schema, file_name_suffix=".parquet")


class WriteReports(beam.PTransform):
    """``{"listings", "verdicts", "errors"}`` PCollections, ``"removed"`` rows with
    ``--state`` and (optionally) the model's ``"scored"`` listings, for ``scoring_devices``,
    -> the reports under the output prefix; returns a PCollection holding the one
    ``summary.json`` dict."""

    def __init__(self, info: ScanInfo):
        super().__init__()
        self._info = info

    def expand(self, pcolls: Mapping[str, beam.PCollection]) -> beam.PCollection[dict]:
        out = self._info.output
        verdicts, errors = pcolls["verdicts"], pcolls["errors"]
        scores = (verdicts
                  | "ScoreRows" >> beam.Map(Verdict.score_row)
                  | "WriteScores" >> _shards(out, SCORES, SCORES_SCHEMA, self._info.run_id))
        violations = (verdicts
                      | "KeepViolations" >> beam.Filter(lambda v: v.verdict == "violation")
                      | "ViolationRows" >> beam.Map(Verdict.violation_row, list(self._info.carry_columns))
                      | "WriteViolations" >> _shards(out, VIOLATIONS, violations_schema(self._info.carry_columns),
                                                     self._info.run_id))
        error_files = (errors
                       | "ErrorRows" >> beam.Map(ErrorRecord.row)
                       | "WriteErrors" >> _shards(out, ERRORS, ERRORS_SCHEMA, self._info.run_id))
        # Every listing read is in exactly one of verdicts and errors, with its id.
        duplicates = ((verdicts | "VerdictIds" >> beam.Map(lambda v: v.listing_id),
                       errors | "ErrorIds" >> beam.Map(lambda e: e.listing_id))
                      | "AllIds" >> beam.Flatten()
                      | "KnownIds" >> beam.Filter(bool)
                      | "CountIds" >> beam.combiners.Count.PerElement()
                      | "DuplicateEvents" >> beam.FlatMap(duplicate_events))
        removed = [pcolls[REMOVED]] if REMOVED in pcolls else []
        scored = [pcolls["scored"]] if "scored" in pcolls else []
        removed_files = [r | "WriteRemoved" >> _shards(out, REMOVED, REMOVED_SCHEMA, self._info.run_id)
                         for r in removed]
        events = ((pcolls["listings"] | "ReadEvents" >> beam.Map(lambda _: "read"),
                   verdicts | "VerdictEvents" >> beam.FlatMap(verdict_events),
                   errors | "ErrorEvents" >> beam.FlatMap(error_events),
                   duplicates,
                   *(r | "RemovedEvents" >> beam.Map(lambda _: "removed") for r in removed),
                   *(d | "DeviceEvents" >> beam.Map(device_event) for d in scored))
                  | "AllEvents" >> beam.Flatten()
                  | "CountEvents" >> beam.combiners.Count.PerElement()
                  | "EventCounts" >> beam.combiners.ToDict())
        sellers = [] if not self._info.seller_column else [
            verdicts | "SellerCounts" >> beam.FlatMap(seller_counts) | "PerSeller" >> beam.CombinePerKey(_sum_pairs)
            | "WithViolations" >> beam.Filter(lambda kv: kv[1][0] > 0)]
        seller_args = [] if not sellers else [
            AsList(sellers[0] | "TopSellers" >> beam.combiners.Top.Of(TOP_SELLERS, key=_seller_rank)
                   | "TopList" >> beam.FlatMap(lambda top: top)),
            AsList(sellers[0] | "CountSellers" >> beam.combiners.Count.Globally())]
        return events | "WriteSummary" >> beam.Map(summary_step, self._info, AsList(scores), AsList(violations),
                                                    AsList(error_files), *map(AsList, removed_files), *seller_args,
                                                    with_removed=bool(removed_files))

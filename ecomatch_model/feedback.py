"""Reviewers' decisions on a scan's violations, as ``report.html`` exports them (CSV or JSON),
read and validated for ``ecomatch calibrate --feedback FILE`` (the rule that turns them into
an operating point is :func:`ecomatch_model.verdict.feedback_cut`).

A decision row: ``listing_id``, ``decision`` (``confirmed`` or ``false_alarm``),
``worst_kind``, ``severity`` (the scan's ``p_violation``) and ``calibration_sha256`` (the
scan's calibration, from its ``summary.json``). CSV has a header naming at least those
columns (others are ignored, so a spreadsheet's extra columns do no harm); JSON is
``{"format": "ecomatch-decisions/1", "decisions": [row, ...]}`` or a bare list of rows.
Pure (no torch, no Beam). Anything unusable is a :class:`FeedbackError` of one line naming
the file and the row.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

FORMAT = "ecomatch-decisions/1"
FIELDS = ("listing_id", "decision", "worst_kind", "severity", "calibration_sha256")
LABELS = ("confirmed", "false_alarm")
MAX_BYTES = 64 * 1024 * 1024
MAX_ROWS = 1_000_000
MAX_ID_CHARS = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FeedbackError(ValueError):
    """A decisions file is unusable; the message (one line) names the file and the row."""


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on one flagged listing."""

    listing_id: str
    decision: str                   # "confirmed" or "false_alarm"
    worst_kind: str
    severity: float                 # the scan's p_violation
    calibration_sha256: str

    @property
    def confirmed(self) -> bool:
        return self.decision == "confirmed"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _decision(row: Mapping[str, Any], fail) -> Decision:
    """One row (a CSV dict of strings, or a JSON object) as a :class:`Decision`."""
    listing_id, decision, kind, sha = (row.get(k) for k in ("listing_id", "decision", "worst_kind",
                                                            "calibration_sha256"))
    if not isinstance(listing_id, str) or not listing_id.strip() or len(listing_id) > MAX_ID_CHARS:
        raise fail(f"listing_id must be a non-empty string of at most {MAX_ID_CHARS} characters, got "
                   f"{_show(listing_id)}")
    if decision not in LABELS:
        raise fail(f"decision must be confirmed or false_alarm, got {_show(decision)}")
    if not isinstance(kind, str) or len(kind) > 100:
        raise fail(f"worst_kind must be a string, got {_show(kind)}")
    raw = row.get("severity")
    try:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError
        severity = float(raw)
    except ValueError:
        raise fail(f"severity must be a number, got {_show(raw)}") from None
    if not math.isfinite(severity) or not 0.0 <= severity <= 1.0:
        raise fail(f"severity must be a probability in [0, 1], got {_show(raw)}")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise fail(f"calibration_sha256 must be 64 lowercase hex digits, got {_show(sha)}")
    return Decision(listing_id, decision, kind, severity, sha)


def _csv_rows(text: str, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    i = 0
    try:
        header = reader.fieldnames or []
        missing = [f for f in FIELDS if f not in header]
        if missing:
            raise FeedbackError(f"{where}: header: missing column(s) {', '.join(missing)} (expected "
                                f"{','.join(FIELDS)})")
        for row in reader:
            i += 1
            if None in row or None in row.values():
                raise FeedbackError(f"{where}: row {i}: expected {len(header)} fields, got a different number")
            yield f"row {i}", row
    except csv.Error as exc:
        raise FeedbackError(f"{where}: row {i + 1}: not valid CSV: {exc}") from None


def _json_rows(text: str, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    try:
        data = json.loads(text, parse_constant=lambda c: c)        # NaN and Infinity stay strings: refused below
    except ValueError as exc:
        raise FeedbackError(f"{where}: not JSON: {exc}") from None
    if isinstance(data, dict):
        if data.get("format") != FORMAT or not isinstance(data.get("decisions"), list):
            raise FeedbackError(f"{where}: expected {{\"format\": \"{FORMAT}\", \"decisions\": [...]}}")
        data = data["decisions"]
    if not isinstance(data, list):
        raise FeedbackError(f"{where}: expected a list of decisions")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise FeedbackError(f"{where}: row {i}: expected an object, got {_show(row)}")
        yield f"row {i}", row


def parse_decisions(data: bytes, where: str) -> list[Decision]:
    """The decisions in a file's bytes (CSV, or JSON when it starts with ``{`` or ``[``): at
    least one, each listing decided once, all made on one calibration; FeedbackError otherwise."""
    if len(data) > MAX_BYTES:
        raise FeedbackError(f"{where}: {len(data)} bytes, over {MAX_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedbackError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if "\x00" in text:
        raise FeedbackError(f"{where}: holds NUL characters: not a decisions file")
    rows = _json_rows(text, where) if text.lstrip()[:1] in ("{", "[") else _csv_rows(text, where)
    out: list[Decision] = []
    seen: dict[str, str] = {}
    for label, row in rows:
        if len(out) >= MAX_ROWS:
            raise FeedbackError(f"{where}: more than {MAX_ROWS} decisions")
        d = _decision(row, lambda msg, label=label: FeedbackError(f"{where}: {label}: {msg}"))
        if d.listing_id in seen:
            raise FeedbackError(f"{where}: {label}: listing_id {_show(d.listing_id)} was already decided in "
                                f"{seen[d.listing_id]}")
        seen[d.listing_id] = label
        out.append(d)
    if not out:
        raise FeedbackError(f"{where}: no decisions")
    shas = sorted({d.calibration_sha256 for d in out})
    if len(shas) > 1:
        raise FeedbackError(f"{where}: decisions made on {len(shas)} different calibrations "
                            f"({', '.join(s[:12] for s in shas)}): use the decisions of one scan")
    return out


def read_decisions(path: str) -> tuple[list[Decision], str]:
    """A decisions file (local or any fsspec URL) and the sha256 of its bytes."""
    import fsspec    # only here: parsing needs no I/O

    try:
        with fsspec.open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise FeedbackError(f"{path}: cannot read: {exc}") from None
    return parse_decisions(data, path), hashlib.sha256(data).hexdigest()

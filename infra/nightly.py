"""The nightly scan's dates and its morning check.

Locations given to the flex template (:mod:`infra.launch`) and to this check may hold
``{date}`` (the run's day, UTC, ``YYYY-MM-DD``) and ``{yesterday}`` (the day before), so that
one fixed schedule writes each night under its own prefix: ``gs://reports/scan/{date}``.

    python -m infra.nightly gs://BUCKET/scan/{date} --violation-rate 0.01:0.25 \\
        [--max-error-rate 0.01] [--min-read N] [--min-listings-per-second X] [--expect-device cuda]
        [--date YYYY-MM-DD]

reads ``summary.json`` under the prefix and exits 0 when the run is complete and inside the
bounds, 1 when it is outside them (one line per problem on stderr), and 2 when the prefix has no
``summary.json`` (the job has not finished, failed, or was never launched). Run after the scan's
usual finishing time, any non-zero exit is an alert (``infra/schedule.sh`` wires it to Cloud
Monitoring). A violation rate far from the usual one means the catalogue, the model or the
calibration changed. ``--expect-device cuda`` fails a run in which any listing was scored
on another device (``summary.json``'s ``scoring_devices``: a GPU worker that fell back to the
CPU); a throughput floor catches slow workers too.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from transforms.reports import SUMMARY, read_summary


def expand_dates(value: str, day: dt.date) -> str:
    """``value`` with ``{date}`` and ``{yesterday}`` replaced by ``day`` and the day before."""
    return (value.replace("{date}", day.isoformat())
            .replace("{yesterday}", (day - dt.timedelta(days=1)).isoformat()))


def utc_today() -> dt.date:
    """The current day in UTC, the day of a nightly run."""
    return dt.datetime.now(dt.timezone.utc).date()


@dataclass(frozen=True)
class Bounds:
    """What a healthy nightly run looks like."""

    violation_rate: tuple[float, float]     # violations / scored, inclusive band
    max_error_rate: float = 1.0             # errors / read
    min_read: int = 0                       # listings read
    min_listings_per_second: float = 0.0
    expect_device: str | None = None        # e.g. "cuda": every listing the model scored was scored there


def device_problems(summary: Mapping[str, Any], expected: str) -> list[str]:
    """Why the model's listings were not all scored on a device named ``expected`` (``cuda``
    matches ``cuda:0``); empty when they were, or when the model scored nothing (all carried)."""
    devices = summary.get("scoring_devices")
    scored = summary["counts"]["scored"] - summary.get("incremental", {}).get("carried", 0)   # by the model
    if devices is None:
        return [f"summary.json does not record the scoring devices ({scored} listings scored; expected {expected})"
                ] if scored else []
    elsewhere = [d for d in devices if d["device"].split(":")[0] != expected and d["device"] != expected]
    if not elsewhere:
        return []
    n, total = sum(d["listings"] for d in elsewhere), sum(d["listings"] for d in devices)
    where = ", ".join(sorted({f"{d['worker']} on {d['device']}" for d in elsewhere}))
    return [f"{n} of {total} listings were scored on another device than {expected} ({where}): "
            f"workers fell back to the CPU?"]


def summary_problems(summary: Mapping[str, Any], bounds: Bounds) -> list[str]:
    """Why the run described by ``summary`` (a ``summary.json``) is outside ``bounds``; empty when it is not."""
    c = summary["counts"]
    problems = []
    if c["read"] < bounds.min_read:
        problems.append(f"read {c['read']} listings, expected at least {bounds.min_read}")
    if c["scored"] == 0:
        problems.append("no listing was scored")
    else:
        rate, (low, high) = c["violations"] / c["scored"], bounds.violation_rate
        if not low <= rate <= high:
            problems.append(f"violation rate {rate:.4f} ({c['violations']} of {c['scored']} scored) is outside "
                            f"the expected band [{low:g}, {high:g}]")
    if c["read"] and c["errors"] / c["read"] > bounds.max_error_rate:
        problems.append(f"error rate {c['errors'] / c['read']:.4f} ({c['errors']} of {c['read']} read) is above "
                        f"{bounds.max_error_rate:g}")
    if summary["listings_per_second"] < bounds.min_listings_per_second:
        problems.append(f"throughput {summary['listings_per_second']:.1f} listings/s is below "
                        f"{bounds.min_listings_per_second:g} (workers on the CPU?)")
    if bounds.expect_device:
        problems += device_problems(summary, bounds.expect_device)
    return problems


def band(text: str) -> tuple[float, float]:
    """``LOW:HIGH`` with 0 <= LOW <= HIGH <= 1, as an argparse type."""
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, got {text!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH <= 1, got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.nightly",
                                description="Check a finished scan's summary.json against the expected bounds.")
    p.add_argument("prefix", help="the scan's output prefix; {date} and {yesterday} are expanded")
    p.add_argument("--violation-rate", type=band, required=True, help="expected violations/scored band, LOW:HIGH")
    p.add_argument("--max-error-rate", type=float, default=1.0, help="highest errors/read (default: %(default)s)")
    p.add_argument("--min-read", type=int, default=0, help="fewest listings read (default: %(default)s)")
    p.add_argument("--min-listings-per-second", type=float, default=0.0,
                   help="lowest end-to-end throughput (default: %(default)s)")
    p.add_argument("--expect-device", default=None, metavar="DEVICE",
                   help="fail when any listing was scored on another device, e.g. cuda for a GPU job "
                        "(default: any device)")
    p.add_argument("--date", type=dt.date.fromisoformat, default=None,
                   help="the run's day, YYYY-MM-DD (default: today, UTC)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Check one run; the exit status is the verdict (see the module docstring)."""
    args = build_parser().parse_args(argv)
    prefix = expand_dates(args.prefix, args.date or utc_today())
    try:
        summary = read_summary(prefix)
    except OSError as exc:
        print(f"ecomatch nightly: no complete run under {prefix}: {SUMMARY} unreadable ({exc})", file=sys.stderr)
        return 2
    problems = summary_problems(summary, Bounds(args.violation_rate, args.max_error_rate, args.min_read,
                                                args.min_listings_per_second, args.expect_device))
    for problem in problems:
        print(f"ecomatch nightly: {prefix}: {problem}", file=sys.stderr)
    if not problems:
        c = summary["counts"]
        print(f"ecomatch nightly: {prefix}: ok: {c['read']} read, {c['violations']} violations, {c['errors']} errors, "
              f"{summary['listings_per_second']:.1f} listings/s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Progress reporting: the Beam metrics namespace, a per-process progress log and the
``TrackProgress`` step that feeds it.

The launcher knows how many listings the job will read (the Parquet footers' row counts,
``survey_input``); ``TrackProgress`` counts every listing finished (a verdict or an error
row) and logs ``done/total``, the rate and the time left every ``LOG_INTERVAL_S`` seconds.
A log is per process: where the runner says how many processes share the work (the
in-process runner; ``--direct_num_workers`` with ``multi_processing``), the job's progress
is estimated from this process's share; elsewhere (Dataflow) each worker logs its own count
beside the job's total.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

import apache_beam as beam

NAMESPACE = "ecomatch"
LOG_INTERVAL_S = 30.0

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLog:
    """Counts listings done in this process; once started, a daemon thread logs :meth:`line`
    every ``interval`` seconds while the process lives. ``total`` is the job's listings (None:
    unknown), ``processes`` how many processes share them evenly (None: unknown)."""

    def __init__(self, what: str, interval: float = LOG_INTERVAL_S, total: int | None = None,
                 processes: int | None = None):
        self.what, self.interval = what, interval
        self.total, self.processes = total, processes
        self.count = 0
        self.started: float | None = None
        self._lock, self._stopped = threading.Lock(), threading.Event()

    def start(self) -> None:
        """Start the clock and the logging thread (once; later calls do nothing)."""
        with self._lock:
            if self.started is None:
                self.started = time.monotonic()
                threading.Thread(target=self._loop, name="ecomatch-progress", daemon=True).start()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.count += n

    def line(self) -> str:
        """This process's count and rate; with the total, done/total and the time left."""
        with self._lock:
            elapsed = time.monotonic() - self.started if self.started is not None else 0.0
            count = self.count
        rate, w = (count / elapsed if elapsed else 0.0), self.what
        if not self.total:
            return f"{count} {w} ({rate:.1f} {w}/s)"
        if not self.processes:
            return f"{count} {w} in this process ({rate:.1f} {w}/s) of {self.total} in the job"
        done, job_rate = min(count * self.processes, self.total), rate * self.processes
        eta = duration((self.total - done) / job_rate) if job_rate else "unknown"
        share = "" if self.processes == 1 else f" (estimated from this process's {count}, 1 of {self.processes})"
        return (f"{done}/{self.total} {w} ({100.0 * done / self.total:.0f}%), {job_rate:.1f} {w}/s, "
                f"ETA {eta}{share}")

    def stop(self) -> None:
        """End the logging thread (the shared log's runs as long as its process)."""
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            log.info("progress: %s", self.line())


_shared: ProgressLog | None = None
_shared_lock = threading.Lock()


def listings_progress(total: int | None = None, processes: int | None = None) -> ProgressLog:
    """The process-wide progress log of listings done (made on first use, with that call's
    ``total`` and ``processes``)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ProgressLog("listings", total=total, processes=processes)
        return _shared


class _ProgressFn(beam.DoFn):
    """Holds this process's progress log (started in ``setup``) and counts each element in it."""

    def __init__(self, total: int | None, processes: int | None):
        self._total, self._processes = total, processes
        self._log: ProgressLog | None = None

    def setup(self) -> None:
        self._log = listings_progress(self._total, self._processes)
        self._log.start()

    def process(self, element: Any) -> Iterator[Any]:
        if getattr(element, "stage", None) != "read":      # a skipped file or row group is no listing
            self._log.add()
        return iter(())


class TrackProgress(beam.PTransform):
    """PCollections of finished listings (verdicts, error rows) -> the progress log; outputs nothing.
    ``total``: the listings the job reads; ``processes``: how many processes share the work."""

    def __init__(self, total: int | None, processes: int | None):
        super().__init__()
        self._fn = _ProgressFn(total, processes)

    def expand(self, finished: tuple[beam.PCollection, ...]) -> beam.PCollection:
        return finished | "AllFinished" >> beam.Flatten() | "Count" >> beam.ParDo(self._fn)

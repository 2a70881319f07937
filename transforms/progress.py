"""Progress reporting: the Beam metrics namespace and a per-process progress log."""
from __future__ import annotations

import logging
import threading
import time

NAMESPACE = "ecomatch"
LOG_INTERVAL_S = 30.0

log = logging.getLogger(__name__)


class ProgressLog:
    """Counts listings done in this process; once started, a daemon thread logs the count
    and the rate since the start every ``interval`` seconds while the process lives."""

    def __init__(self, what: str, interval: float = LOG_INTERVAL_S):
        self.what, self.interval = what, interval
        self.count = 0
        self.started: float | None = None
        self._lock = threading.Lock()

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
        """``"<n> <what> (<rate> <what>/s)"`` for this process so far."""
        with self._lock:
            elapsed = time.monotonic() - self.started if self.started is not None else 0.0
            return f"{self.count} {self.what} ({self.count / elapsed if elapsed else 0.0:.1f} {self.what}/s)"

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            log.info("progress: %s", self.line())


_shared: ProgressLog | None = None
_shared_lock = threading.Lock()


def listings_progress() -> ProgressLog:
    """The process-wide progress log of listings scored (made on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ProgressLog("listings")
        return _shared

"""Beam's routine notices, kept out of ``ecomatch scan``'s log unless ``--verbose``.

Importing and running Beam logs lines that are true of every run and need no action: that
BigQuery's optional clients are missing, that a file sink writes one shard per bundle, that
the ``resource`` module is unusable for RunInference's memory figure, BatchElements' timing
statistics, and so on. :data:`ROUTINE` lists them by logger and message start; everything
else Beam logs (warnings about the job, the Dataflow job's URL and state) still shows.

This module does not import Beam, so that the filters are in place before Beam's own import
logs its first notice (``pipelines/scan.py`` and ``ecomatch scan`` install them first).
"""
from __future__ import annotations

import logging

# logger name -> starts of its messages that are routine. "root": Beam logs these two
# through the logging module's functions, not a named logger.
ROUTINE: dict[str, tuple[str, ...]] = {
    "root": ("apitools not found", "Resource module is not available", "starting control server",
             "starting data server", "starting state server", "starting logging server", "Requesting worker at",
             "self.control_address"),
    "apache_beam.io.gcp.bigquery": ("No module named google.cloud.bigquery_storage_v1",),
    "apache_beam.io.iobase": ("*** WriteImpl min_shards undef",),
    "apache_beam.io.filebasedsink": ("Renamed ",),
    "apache_beam.transforms.util": ("BatchElements statistics",),
    "apache_beam.runners.worker.statecache": ("Creating state cache",),
    # Local multi-process runs: the servers' ports, and each worker process's log lines relayed a second
    # time (the worker process has already written them to the same terminal).
    "apache_beam.runners.portability.fn_api_runner.worker_handlers": ("starting control server",
                                                                      "starting data server",
                                                                      "starting state server",
                                                                      "starting logging server"),
    "apache_beam.runners.portability.local_job_service": ("Worker: ",),
    # An SDK harness connecting to and leaving its runner (local multi-process and LOOPBACK runs).
    "apache_beam.runners.worker.sdk_worker": ("Creating insecure", "Control channel established",
                                              "State channel established", "Initializing SDKHarness",
                                              "No more requests from control plane", "SDK Harness waiting",
                                              "Closing all cached", "Done consuming work"),
    "apache_beam.runners.worker.data_plane": ("Creating client data channel", "Data channel established",
                                              "Closing all cached"),
    # A string annotation Beam cannot resolve: the type check falls back to Any, as intended.
    "apache_beam.typehints.native_type_compatibility": ("Converting string literal type hint to Any",
                                                        "Converting NewType type hint to Any",
                                                        "Using Any for unsupported type"),
}


class _Routine(logging.Filter):
    """Drops the records whose message starts with one of ``starts`` while switched on."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts, self.on = starts, True

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.on:
            return True
        msg = record.msg if isinstance(record.msg, str) else str(record.msg)
        return not msg.startswith(self.starts)


_filters: dict[str, _Routine] = {}


def quiet_routine_notices(quiet: bool = True) -> None:
    """Drop (``quiet``) or let through (``quiet=False``, ``--verbose``) the notices of
    :data:`ROUTINE` in this process, from now on. Idempotent."""
    for name, starts in ROUTINE.items():
        f = _filters.get(name)
        if f is None:
            f = _filters[name] = _Routine(starts)
            (logging.getLogger() if name == "root" else logging.getLogger(name)).addFilter(f)
        f.on = quiet

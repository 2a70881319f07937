"""Beam stages of the violation scan, one composite PTransform each:

``ReadListings`` (listings.py) -> ``DecodeListings`` (decode.py) -> ``ScoreListings``
(score.py) -> ``FlagViolations`` (flag.py) -> ``WriteReports`` (reports.py).

Per-element logic lives in plain functions beside each stage; bad rows become
``ErrorRecord`` (errors.py); counters and the progress log are in progress.py.
"""
from .storage import use_storage_emulator

# In every process that runs scan code (local worker processes too); a no-op unless
# STORAGE_EMULATOR_HOST is set (transforms/storage.py).
use_storage_emulator()

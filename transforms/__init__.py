"""Beam stages of the violation scan, one composite PTransform each:

``ReadListings`` (listings.py) -> ``DecodeListings`` (decode.py) -> ``ScoreListings``
(score.py) -> ``FlagViolations`` (flag.py) -> ``WriteReports`` (reports.py).

Per-element logic lives in plain functions beside each stage; bad rows become
``ErrorRecord`` (errors.py); counters and the progress log are in progress.py.
"""

"""Runnable Beam jobs; ``pipelines.scan`` is the nightly violation scan (``ecomatch scan``)."""

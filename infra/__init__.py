"""The scan on Google Cloud Dataflow: the GPU worker image (``Dockerfile``), the flex template
(``metadata.json``, :mod:`infra.launch`), the nightly schedule and its checks
(:mod:`infra.nightly`, ``schedule.sh``). See ``infra/README.md``."""

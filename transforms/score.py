"""The ``ScoreListings`` stage: ``RunInference`` with an ecomatch ``ModelHandler``.

The model is loaded once per process (Beam's shared handle) or, when CUDA is present on
the worker or ``model_copies`` is set, once per VM in a process shared by all SDK worker
processes (``share_model_across_processes``): one model per GPU, fed by every process. The
device is chosen once at load: CUDA when present, else the CPU with a log line. On CUDA
the :class:`Matcher` fast path applies (towers in bf16, pinned non-blocking copies of uint8
pixels normalised on the GPU, optional ``torch.compile``) and the default batch is
``GPU_BATCH_SIZE``. ``BatchElements`` makes batches of exactly
``batch_size`` listings (only a bundle's last batch is shorter), and a short batch is padded
to ``batch_size`` by repeating its last listing, so every forward pass has the same shape.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from ecomatch_model.api import CPU_BATCH_SIZE, GPU_BATCH_SIZE, ListingScore, Matcher, load
from ecomatch_model.text import EncodedText

from .decode import DecodedListing
from .errors import ErrorRecord, dead_letter_errors
from .progress import NAMESPACE

log = logging.getLogger(__name__)


@dataclass
class ListingBatch:
    """Stacked, fixed-shape model inputs for ``n`` real listings padded to ``len(pixels)``."""

    n: int
    pixels: np.ndarray      # (B, 3, S, S) uint8
    text: EncodedText       # ids, mask (B, L); attr_mask (B, A, L); attr_valid, attr_value (B, A)


def stack_batch(listings: Sequence[DecodedListing], size: int) -> ListingBatch:
    """Stack listings into one batch of ``max(size, len(listings))`` rows, padding with
    copies of the last listing (padding rows are scored and then dropped)."""
    rows = list(listings) + [listings[-1]] * max(0, size - len(listings))
    text = EncodedText(np.stack([r.ids for r in rows]), np.stack([r.mask for r in rows]),
                       np.stack([r.attr_mask for r in rows]), np.stack([r.attr_valid for r in rows]),
                       np.stack([r.attr_value for r in rows]), [list(r.mentions) for r in rows],
                       [list(r.tokens) for r in rows])
    return ListingBatch(len(listings), np.stack([r.pixels for r in rows]), text)


class ListingScorer:
    """A loaded :class:`Matcher` behind one call that takes and returns plain data, so it
    serves in-process or through Beam's cross-process proxy alike."""

    def __init__(self, matcher: Matcher):
        self.matcher = matcher

    def score(self, batch: ListingBatch) -> list[ListingScore]:
        out = self.matcher.forward(torch.from_numpy(batch.pixels), batch.text)   # uint8, normalised on the device
        return self.matcher.results(out, batch.text, batch.n)

    def device(self) -> str:
        """Where the model scores: ``"cuda:0"``, ``"cpu"``, ... (a call, so that it crosses the proxy too)."""
        return str(self.matcher.device)


class EcomatchModelHandler(ModelHandler[DecodedListing, PredictionResult, ListingScorer]):
    """RunInference handler for an ecomatch checkpoint (bundled name, path or URL).

    ``thresholds`` override the checkpoint's calibrated ones; ``model_copies`` (when set)
    shares that many model copies across all processes of a worker VM; ``torch_threads``
    (when set) caps torch's CPU threads in the loading process, so that several worker
    processes on one machine do not each start a thread per core. ``device`` (default: CUDA
    when present where the model loads, else the CPU), ``precision`` and ``compile`` are
    :class:`Matcher`'s. ``batch_size`` defaults to ``GPU_BATCH_SIZE`` when ``device`` is
    CUDA, or is unset and this process (the launcher) sees CUDA, else ``CPU_BATCH_SIZE``:
    batches are sized when the pipeline is built, so a launcher without a GPU for GPU
    workers should pass ``device="cuda"`` or the batch size.
    """

    def __init__(self, model: str, thresholds: Mapping[str, float] | None = None, batch_size: int | None = None,
                 model_copies: int | None = None, torch_threads: int | None = None, *, device: str | None = None,
                 precision: str | None = None, compile: bool = False):
        super().__init__()
        self._model, self._thresholds = model, dict(thresholds or {})
        self._device, self._precision, self._compile = device, precision, compile
        self._batch_size = batch_size or (GPU_BATCH_SIZE if self._wants_cuda() else CPU_BATCH_SIZE)
        self._copies, self._threads = model_copies, torch_threads

    def _wants_cuda(self) -> bool:
        return str(self._device).startswith("cuda") if self._device else torch.cuda.is_available()

    def load_model(self) -> ListingScorer:
        if self._threads:
            torch.set_num_threads(self._threads)
        matcher = load(self._model, device=self._device, batch_size=self._batch_size, precision=self._precision,
                       compile=self._compile)
        matcher.thresholds.update(self._thresholds)
        log.info("loaded model %s (sha256 %s) on %s, %s, batch %d%s", self._model, matcher.sha256[:12],
                 matcher.device, matcher.precision, matcher.batch_size, ", compiled" if self._compile else "")
        return ListingScorer(matcher)

    def run_inference(self, batch: Sequence[DecodedListing], model: ListingScorer,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        scores = model.score(stack_batch(batch, self._batch_size))
        # model_id: where the model ran, for summary.json's scoring_devices (its name is the scan's one model).
        device = model.device()
        return [PredictionResult(x, s, device) for x, s in zip(batch, scores)]

    def get_num_bytes(self, batch: Sequence[DecodedListing]) -> int:
        return sum(x.pixels.nbytes + x.attr_mask.nbytes + x.ids.nbytes for x in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def share_model_across_processes(self) -> bool:
        # Asked on the worker: with a GPU there, one model on it serves every SDK process.
        return self._copies is not None or self._wants_cuda()

    def model_copies(self) -> int:
        return self._copies or 1


@dataclass
class ScoredListing:
    """A listing's scores with what the reports need of its input."""

    listing_id: str
    source: str
    content_hash: str
    origins: list[str]      # per attribute of ``score``: "title" or the column it came from
    score: ListingScore
    device: str = ""        # where it was scored ("cuda:0", "cpu") and on which worker (host name)
    worker: str = ""


def to_scored(result: PredictionResult) -> ScoredListing:
    """RunInference's PredictionResult -> :class:`ScoredListing`."""
    x: DecodedListing = result.example
    Metrics.counter(NAMESPACE, "scored").inc()
    return ScoredListing(x.listing_id, x.source, x.content_hash, list(x.origins), result.inference,
                         str(result.model_id or ""), socket.gethostname())


class ScoreListings(beam.PTransform):
    """DecodedListing -> (ScoredListing, ErrorRecord) PCollections via ``RunInference``;
    a batch that fails inference becomes one error record per listing in it."""

    def __init__(self, handler: EcomatchModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, decoded: beam.PCollection[DecodedListing]
               ) -> tuple[beam.PCollection[ScoredListing], beam.PCollection[ErrorRecord]]:
        results, failed = decoded | "RunInference" >> RunInference(self._handler).with_exception_handling()
        scored = results | "ToScored" >> beam.Map(to_scored)
        errors = failed.failed_inferences | "ScoreErrors" >> beam.FlatMap(dead_letter_errors, stage="score")
        return scored, errors

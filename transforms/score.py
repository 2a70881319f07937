"""The ``ScoreListings`` and ``SearchSwaps`` stages: ``RunInference`` with ecomatch
``ModelHandler`` subclasses. Both return raw scores only; the verdict is ``FlagViolations``' (the
policy of ``ecomatch_model.verdict``).

``ScoreListings`` scores every listing; a listing that the policy says deserves the swap
search (a violation whose strongest evidence is the global match) keeps its decoded input,
and ``SearchSwaps`` re-reads just those titles with one mention at a time swapped
(``Matcher.search_swaps``), in batches of :data:`SWAP_BATCH_SIZE`.

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
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from ecomatch_model.api import CPU_BATCH_SIZE, GPU_BATCH_SIZE, Matcher, load
from ecomatch_model.scores import ListingScore, Swap
from ecomatch_model.text import EncodedText
from ecomatch_model.verdict import Policy

from .decode import DecodedListing, ListingContext
from .errors import ErrorRecord, dead_letter_errors
from .progress import NAMESPACE

log = logging.getLogger(__name__)

# Listings per swap-search batch: few listings need it (8 in a real shard of 4,000), and each
# brings up to SWAP_CANDIDATES re-embedded titles per mention.
SWAP_BATCH_SIZE = 8


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

    def search_swaps(self, batch: ListingBatch) -> list[Swap | None]:
        return self.matcher.search_swaps(torch.from_numpy(batch.pixels), batch.text, batch.n)

    def device(self) -> str:
        """Where the model scores: ``"cuda:0"``, ``"cpu"``, ... (a call, so that it crosses the proxy too)."""
        return str(self.matcher.device)


class EcomatchModelHandler(ModelHandler[DecodedListing, PredictionResult, ListingScorer]):
    """RunInference handler for an ecomatch checkpoint (bundled name, path or URL).

    ``model_copies`` (when set)
    shares that many model copies across all processes of a worker VM; ``torch_threads``
    (when set) caps torch's CPU threads in the loading process, so that several worker
    processes on one machine do not each start a thread per core. ``device`` (default: CUDA
    when present where the model loads, else the CPU), ``precision`` and ``compile`` are
    :class:`Matcher`'s. ``batch_size`` defaults to ``GPU_BATCH_SIZE`` when ``device`` is
    CUDA, or is unset and this process (the launcher) sees CUDA, else ``CPU_BATCH_SIZE``:
    batches are sized when the pipeline is built, so a launcher without a GPU for GPU
    workers should pass ``device="cuda"`` or the batch size.
    """

    def __init__(self, model: str, batch_size: int | None = None,
                 model_copies: int | None = None, torch_threads: int | None = None, *, device: str | None = None,
                 precision: str | None = None, compile: bool = False):
        super().__init__()
        self._model = model
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


class SwapSearchHandler(EcomatchModelHandler):
    """RunInference handler for the swap search: ScoredListing (with its decoded input) ->
    the same listing with ``swap`` set and the input dropped. Batches of ``SWAP_BATCH_SIZE``
    listings, padded to that size so every forward pass has one shape."""

    def __init__(self, scoring: EcomatchModelHandler):
        super().__init__(scoring._model, scoring._batch_size, scoring._copies, scoring._threads,
                         device=scoring._device, precision=scoring._precision, compile=False)

    def run_inference(self, batch: Sequence["ScoredListing"], model: ListingScorer,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        swaps = model.search_swaps(stack_batch([x.decoded for x in batch], SWAP_BATCH_SIZE))
        return [PredictionResult(x, replace(x, swap=s, decoded=None), self._model) for x, s in zip(batch, swaps)]

    def get_num_bytes(self, batch: Sequence["ScoredListing"]) -> int:
        return sum(x.decoded.pixels.nbytes for x in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": SWAP_BATCH_SIZE}


@dataclass
class ScoredListing:
    """A listing's raw scores with what the reports need of its input; ``decoded`` is kept
    only until the swap search (``SearchSwaps``) for the listings that need it, ``swap`` is
    its result."""

    listing_id: str
    source: str
    content_hash: str
    origins: list[str]      # per attribute of ``score``: "title" or the column it came from
    score: ListingScore
    swap: Swap | None = None
    decoded: DecodedListing | None = None
    device: str = ""        # where it was scored ("cuda:0", "cpu") and on which worker (host name)
    worker: str = ""
    context: ListingContext | None = None   # title, image_uri, carried columns: for the violation rows


def to_scored(result: PredictionResult, policy: Policy) -> ScoredListing:
    """RunInference's PredictionResult -> :class:`ScoredListing`, keeping the decoded input
    when ``policy`` asks for the swap search."""
    x: DecodedListing = result.example
    Metrics.counter(NAMESPACE, "scored").inc()
    keep = x if policy.needs_swap_search(result.inference) else None
    return ScoredListing(x.listing_id, x.source, x.content_hash, list(x.origins), result.inference, decoded=keep,
                         device=str(result.model_id or ""), worker=socket.gethostname(), context=x.context)


class ScoreListings(beam.PTransform):
    """DecodedListing -> (ScoredListing, ErrorRecord) PCollections via ``RunInference``;
    a batch that fails inference becomes one error record per listing in it."""

    def __init__(self, handler: EcomatchModelHandler, policy: Policy):
        super().__init__()
        self._handler, self._policy = handler, policy

    def expand(self, decoded: beam.PCollection[DecodedListing]
               ) -> tuple[beam.PCollection[ScoredListing], beam.PCollection[ErrorRecord]]:
        results, failed = decoded | "RunInference" >> RunInference(self._handler).with_exception_handling()
        scored = results | "ToScored" >> beam.Map(to_scored, policy=self._policy)
        errors = failed.failed_inferences | "ScoreErrors" >> beam.FlatMap(dead_letter_errors, stage="score")
        return scored, errors


def _unsearched(dead_letter: tuple[Any, tuple[type, str, Sequence[str]]]) -> Iterator[ScoredListing]:
    """The listings of a swap-search batch that failed, without the swap: the verdict does not
    depend on it (only the blame does), so the listings are kept and the failure counted."""
    batch, (exc_type, _, _) = dead_letter
    for x in batch if isinstance(batch, list) else [batch]:
        Metrics.counter(NAMESPACE, "swap_search_failed").inc()
        log.warning("swap search failed for listing %r (%s); blamed without it", x.listing_id, exc_type.__name__)
        yield replace(x, decoded=None)


class SearchSwaps(beam.PTransform):
    """ScoredListing -> ScoredListing: the listings holding their decoded input get the swap
    search (``SwapSearchHandler``), the rest pass through untouched. A batch whose search
    fails keeps its listings, without a swap (``_unsearched``)."""

    def __init__(self, handler: SwapSearchHandler):
        super().__init__()
        self._handler = handler

    def expand(self, scored: beam.PCollection[ScoredListing]) -> beam.PCollection[ScoredListing]:
        ask, rest = scored | "NeedsSwaps" >> beam.Partition(lambda x, _: 0 if x.decoded is not None else 1, 2)
        results, failed = ask | "RunSwapSearch" >> RunInference(self._handler).with_exception_handling()
        searched = results | "ToSearched" >> beam.Map(lambda r: r.inference)
        kept = failed.failed_inferences | "KeepUnsearched" >> beam.FlatMap(_unsearched)
        return (searched, kept, rest) | "AllScored" >> beam.Flatten()

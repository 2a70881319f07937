"""Python API: ``load()`` a checkpoint and score listings with a :class:`Matcher`.

On CUDA a Matcher takes the fast path by itself: the two towers held in bf16 with AGA and
the heads in float32 (``precision="bf16-weights"``; scores come back as float32), MLP widths
padded to multiples of 8 and NHWC stem convolutions (``model.for_inference``), batches
of ``GPU_BATCH_SIZE``, inputs copied from pinned memory on a side stream so one batch's
copy overlaps another's compute, uint8 pixels normalised on the device,
and :meth:`Matcher.score` decoding JPEGs in batches on the GPU (``decode_batch``) where
torchvision is present, for photos at least ``GPU_DECODE_MIN_FACTOR`` times the model
input; smaller photos, other formats and everything nvJPEG refuses take Pillow on the CPU.
Measured on an H100 against the Pillow path (fp32 both): 224x224 photos at 80x80 moved
scores by at most 0.015; 60x80 photos decoded on the GPU at 80x80 moved one score in 512 by
0.087 (chroma upsampling), over the 0.08 tolerance, which is why those stay on Pillow
(a later run of the same check measured 0.047 there).
``gpu_decode=False`` turns GPU decode off. ``precision="bf16"`` is autocast instead (the default
ran 4% to 16% faster on an H100), ``"fp32"`` reproduces the CPU's scores. ``compile=True`` adds
``torch.compile``. On the CPU nothing changes unless asked
(``precision="bf16"`` works there too, which is how the tests check its tolerance).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .data import replace_mention, swap_values
from .model import MatchOutput, for_inference
from .preprocess import ImageInput, decode_batch, normalize, preprocess, torchvision_jpeg_decoder
from .text import EncodedText, TextEncoder

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_ATTR_THRESHOLD = 0.5
DEFAULT_MATCH_THRESHOLD = 0.0
CPU_BATCH_SIZE = 64
GPU_BATCH_SIZE = 512            # paper at 224x224 in bf16 needs about 10 GiB of activations here
# "bf16": autocast (weights float32, matrix products in bf16); "bf16-weights": the two towers
# held in bf16, activations too (half the memory traffic of autocast's float32 residual
# stream), with AGA and the heads in float32.
PRECISIONS = ("fp32", "bf16", "bf16-weights")
# GPU decode takes only JPEGs at least this many times the model input (see decode_batch).
GPU_DECODE_MIN_FACTOR = 2
# Matcher.explain_matches tries at most this many values per mention (AGA's likeliest of
# another group): the same sample_data/ results as all of them (up to 90 article types) with
# the default model's stages 6 and 7, a third of the re-embedded titles; 8 lost one right
# kind there with stage 6.
EXPLAIN_CANDIDATES = 16


@dataclass
class AttributeScore:
    """One attribute mention of a listing, scored against the image."""

    kind: str
    value: str
    span: tuple[int, int]          # token span in the title (appended tokens for column values)
    score: float                   # consistency of ``value`` with the image, 0..1
    threshold: float
    suggestion: str                # best-scoring other value of the same kind
    suggestion_score: float
    attention: np.ndarray = field(repr=False)  # (G, G) attention over the image grid

    @property
    def consistent(self) -> bool:
        return self.score >= self.threshold


@dataclass
class ListingScore:
    """A listing's global match and its attribute scores.

    The flagging rule lives here so the scan and the evaluation share it: a listing is
    flagged when the match or any attribute is below its threshold. The attribute blamed
    (:meth:`culprit`) is the failing attribute with the largest shortfall (threshold -
    score); when only the global match fails, it is the attribute whose change alone
    restores the match (``explained``: the title with ``explained_value`` in its place
    matches the image at ``explained_match``, at or above the match threshold; AGA scores
    that value ``explained_score``), if any. ``worst_kind`` is the culprit's kind, else
    ``"match"`` when the global match fails, else None.
    """

    match: float
    match_threshold: float
    attributes: list[AttributeScore]
    explained: int | None = None
    explained_value: str = ""
    explained_match: float = float("nan")
    explained_score: float = float("nan")

    def failing(self) -> list[int]:
        """Indices of the attributes below their thresholds, largest shortfall first."""
        bad = [j for j, a in enumerate(self.attributes) if a.score < a.threshold]
        return sorted(bad, key=lambda j: self.attributes[j].score - self.attributes[j].threshold)

    @property
    def match_fails(self) -> bool:
        return self.match < self.match_threshold

    @property
    def flagged(self) -> bool:
        return self.match_fails or any(a.score < a.threshold for a in self.attributes)

    def culprit(self) -> int | None:
        """Index of the attribute blamed (see the class docstring), or None."""
        failing = self.failing()
        if failing:
            return failing[0]
        return self.explained if self.match_fails else None

    @property
    def worst_kind(self) -> str | None:
        j = self.culprit()
        return self.attributes[j].kind if j is not None else ("match" if self.match_fails else None)


def check_thresholds(data: object, kinds: Sequence[str]) -> dict[str, float]:
    """A thresholds object ({kind: threshold}, as in a checkpoint's thresholds.json) as
    floats, every kind among ``kinds`` or ``match`` (match in [-1, 1], the others in
    [0, 1]); ValueError saying what is wrong otherwise."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of kind -> threshold")
    out = {}
    for kind, value in data.items():
        low = -1.0 if kind == "match" else 0.0
        if kind != "match" and kind not in kinds:
            raise ValueError(f"unknown kind {kind!r} (known: {', '.join(['match', *kinds])})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 1.0:
            raise ValueError(f"{kind} must be a number in [{low:g}, 1], got {value!r}")
        out[kind] = float(value)
    return out


def resolve_model_path(path_or_name: str) -> str:
    """A bundled model name ("default", ...) or a path/URL -> a checkpoint location."""
    bundled = MODELS_DIR / path_or_name
    if "/" not in path_or_name and "\\" not in path_or_name and bundled.is_dir():
        return str(bundled)
    if "://" in path_or_name or os.path.isdir(path_or_name):
        return path_or_name
    known = sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir()) if MODELS_DIR.is_dir() else []
    raise FileNotFoundError(f"no model at {path_or_name!r}: not a directory, URL or bundled model "
                            f"(bundled: {', '.join(known) or 'none'})")


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU (logged)."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    log.info("CUDA not available; scoring on the CPU")
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _copy_stream(device: torch.device) -> "torch.cuda.Stream":
    """One side stream per CUDA device for host-to-device copies, made once."""
    return torch.cuda.Stream(device)


def to_device(arrays: Sequence[np.ndarray | torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Host arrays -> tensors on ``device`` (a tensor already there is kept). On CUDA each is
    staged in pinned memory and copied without blocking on a side stream that the current
    stream then waits for, so a batch's copy overlaps the compute of the batch before it
    (the shared model serves several worker processes at once)."""
    host = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in arrays]
    if device.type != "cuda":
        return [t.to(device) for t in host]
    compute, side = torch.cuda.current_stream(device), _copy_stream(device)
    with torch.cuda.stream(side):
        out = [t.pin_memory().to(device, non_blocking=True) if t.device.type == "cpu" else t.to(device)
               for t in host]
    compute.wait_stream(side)
    for t in out:
        t.record_stream(compute)      # allocated on the side stream, used on the compute stream
    return out


class Matcher:
    """Scores listings (image + title) with a loaded checkpoint.

    ``score(images, titles)`` returns one :class:`ListingScore` per listing;
    ``embed_images`` / ``embed_texts`` return L2-normalised (B, E) numpy arrays.
    ``batch_size`` defaults to ``GPU_BATCH_SIZE`` on CUDA, else ``CPU_BATCH_SIZE``;
    ``precision`` ("fp32", "bf16" autocast or "bf16-weights", see ``PRECISIONS``) defaults
    to bf16-weights on CUDA, else fp32;
    ``compile`` runs the forward through ``torch.compile``.
    """

    def __init__(self, ckpt: Checkpoint, name: str = "", device: str | None = None, batch_size: int | None = None,
                 *, precision: str | None = None, compile: bool = False, gpu_decode: bool | None = None):
        self.ckpt = ckpt
        self.name = name
        self.device = pick_device(device)
        cuda = self.device.type == "cuda"
        self.precision = precision or ("bf16-weights" if cuda else "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        # A copy made for inference (on CUDA: NHWC convolutions, aligned MLP widths), made
        # where the checkpoint is: the checkpoint's model stays as loaded.
        self.model = for_inference(ckpt.model, self.device, self.precision)
        self.cfg = ckpt.model.cfg
        self.lexicon = ckpt.lexicon
        self.text_encoder = TextEncoder(ckpt.vocab, ckpt.lexicon, self.cfg.text.max_len, self.cfg.max_attrs)
        self.thresholds = dict(ckpt.thresholds)
        self.batch_size = batch_size or (GPU_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
        self._compiled = torch.compile(self.model) if compile else None
        # On by default on CUDA where torchvision can decode (else Pillow's path, as on the CPU).
        self.gpu_decode = (cuda and torchvision_jpeg_decoder() is not None) if gpu_decode is None else gpu_decode

    @property
    def image_size(self) -> int:
        return self.cfg.image.image_size

    @property
    def sha256(self) -> str:
        return self.ckpt.weights_sha256

    def threshold(self, kind: str) -> float:
        default = DEFAULT_MATCH_THRESHOLD if kind == "match" else DEFAULT_ATTR_THRESHOLD
        return float(self.thresholds.get(kind, default))

    # ------------------------------------------------------------------ batches
    def encode_texts(self, titles: Sequence[str],
                     attributes: Sequence[Sequence[tuple[str, str]]] | None = None) -> EncodedText:
        return self.text_encoder.encode(titles, attributes)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor, enc: EncodedText) -> MatchOutput:
        """One fixed-shape batch through the model. ``pixels`` (B, 3, S, S): float already
        normalised, or uint8, sent as such and normalised on the device (4x fewer bytes to
        copy). Outputs are float32 whatever the precision."""
        inputs = to_device([pixels, enc.ids, enc.mask, enc.attr_mask, enc.attr_valid, enc.attr_value], self.device)
        if inputs[0].dtype == torch.uint8:
            inputs[0] = normalize(inputs[0])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = (self.model if self._compiled is None else self._compiled)(*inputs)
        return MatchOutput(*(t.float() for t in (out.image_embed, out.text_embed, out.match, out.attr_logits,
                                                 out.attr_score, out.attention)))

    def results(self, out: MatchOutput, enc: EncodedText, n: int | None = None) -> list[ListingScore]:
        """Turn a batch's model output into per-listing scores with suggestions: the first
        ``n`` listings (default all; the rest are a padded batch's filler)."""
        logits = out.attr_logits.float().cpu()
        own = torch.from_numpy(enc.attr_value)
        others = logits.scatter(-1, own.unsqueeze(-1), float("-inf"))            # (B, A, V)
        best_other = others.max(-1)                                               # (B, A)
        match = out.match.float().cpu().numpy()
        scores = out.attr_score.float().cpu().numpy()
        attn = out.attention.float().cpu().numpy()
        sugg_idx, sugg_score = best_other.indices.numpy(), torch.sigmoid(best_other.values).numpy()
        listings = []
        for i, mentions in enumerate(enc.mentions[:n]):
            attrs = []
            for j, m in enumerate(mentions):
                kind, sugg = self.lexicon.values[sugg_idx[i, j]]
                has_other = np.isfinite(best_other.values[i, j].item())
                attrs.append(AttributeScore(m.kind, m.value, (m.start, m.end), float(scores[i, j]),
                                            self.threshold(m.kind), sugg if has_other else "",
                                            float(sugg_score[i, j]) if has_other else 0.0, attn[i, j]))
            listings.append(ListingScore(float(match[i]), self.threshold("match"), attrs))
        self.explain_matches(out, enc, listings, logits)
        return listings

    def explain_matches(self, out: MatchOutput, enc: EncodedText, listings: list[ListingScore],
                        logits: torch.Tensor) -> None:
        """For each listing flagged by the global match alone: re-embed its text with one
        mention at a time swapped for each value of another group of its kind (as training
        corrupts titles; AGA's ``EXPLAIN_CANDIDATES`` likeliest where there are more), and
        blame the mention whose best swap brings the match with the image up to the match
        threshold; the highest such match wins. Sets ``explained*`` in place. Listings
        without their words in ``enc.tokens`` are left as they are."""
        todo = [i for i, s in enumerate(listings)
                if s.match_fails and not s.failing() and i < len(enc.tokens) and enc.mentions[i]]
        texts, owners = [], []
        for i in todo:
            for j, m in enumerate(enc.mentions[i]):
                candidates = swap_values(self.lexicon, m.kind, m.value)
                if len(candidates) > EXPLAIN_CANDIDATES:   # the values AGA finds likeliest in the image
                    ids = torch.tensor([self.lexicon.value_id[(m.kind, v)] for v in candidates])
                    top = torch.argsort(logits[i, j, ids], descending=True)[:EXPLAIN_CANDIDATES].tolist()
                    candidates = [candidates[k] for k in top]
                for v in candidates:
                    texts.append(replace_mention(enc.tokens[i], m, v))
                    owners.append((i, j, v))
        if not texts:
            return
        img = out.image_embed.float().cpu().numpy()
        # Whole batches only (the last filled with copies): one input shape, so the CPU
        # kernels' per-shape caches stop growing with the catalogue (78 MB more peak RSS
        # on 35,535 listings without this).
        padded = texts + texts[-1:] * (-len(texts) % self.batch_size)
        cos = (self.embed_texts(padded)[: len(texts)] * img[[i for i, _, _ in owners]]).sum(1)   # (N,)
        best: dict[int, tuple[float, int, str]] = {}
        for (i, j, v), c in zip(owners, cos.tolist()):
            if c > best.get(i, (-np.inf,))[0]:
                best[i] = (c, j, v)
        for i, (c, j, v) in best.items():
            s = listings[i]
            if c >= s.match_threshold:
                s.explained, s.explained_value, s.explained_match = j, v, c
                s.explained_score = float(torch.sigmoid(logits[i, j, self.lexicon.value_id[(s.attributes[j].kind, v)]]))

    def pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> model input: with ``gpu_decode`` on CUDA (B, 3, S, S) uint8 decoded in a
        batch on the GPU (Pillow for what nvJPEG does not take), else float32 normalised on the CPU."""
        if self.device.type == "cuda" and self.gpu_decode:
            return decode_batch(images, self.image_size, self.device, min_factor=GPU_DECODE_MIN_FACTOR)
        return preprocess(images, self.image_size)

    # ------------------------------------------------------------------ public API
    def score(self, images: Sequence[ImageInput], titles: Sequence[str],
              attributes: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[ListingScore]:
        """Score listings. ``attributes[i]`` optionally lists (kind, value) pairs from
        structured columns, checked alongside the attributes found in the title."""
        if len(images) != len(titles):
            raise ValueError(f"{len(images)} images but {len(titles)} titles")
        out: list[ListingScore] = []
        for s in range(0, len(titles), self.batch_size):
            sl = slice(s, s + self.batch_size)
            enc = self.encode_texts(titles[sl], attributes[sl] if attributes is not None else None)
            out.extend(self.results(self.forward(self.pixels(images[sl]), enc), enc))
        return out

    @torch.inference_mode()
    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        chunks = [self.model.encode_image(preprocess(images[s:s + self.batch_size], self.image_size)
                                          .to(self.device))[1].float().cpu().numpy()
                  for s in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.cfg.embed_dim), np.float32)

    @torch.inference_mode()
    def embed_texts(self, titles: Sequence[str]) -> np.ndarray:
        chunks = []
        for s in range(0, len(titles), self.batch_size):
            enc = self.encode_texts(titles[s:s + self.batch_size])
            _, emb = self.model.encode_text(torch.from_numpy(enc.ids).to(self.device),
                                            torch.from_numpy(enc.mask).to(self.device))
            chunks.append(emb.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.cfg.embed_dim), np.float32)


def load(path_or_name: str = "default", device: str | None = None, batch_size: int | None = None,
         *, precision: str | None = None, compile: bool = False, gpu_decode: bool | None = None) -> Matcher:
    """Load a checkpoint (bundled name, local directory or fsspec URL such as ``gs://``);
    the keywords are :class:`Matcher`'s."""
    location = resolve_model_path(path_or_name)
    return Matcher(load_checkpoint(location), name=path_or_name, device=device, batch_size=batch_size,
                   precision=precision, compile=compile, gpu_decode=gpu_decode)

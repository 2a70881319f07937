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
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .data import replace_mention, swap_values
from .model import MatchOutput, for_inference
from .preprocess import ImageInput, decode_batch, normalize, preprocess, torchvision_jpeg_decoder
from .scores import AttributeScore, ListingScore, Swap
from .text import EncodedText, TextEncoder
from .verdict import Assessment, Policy

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
CPU_BATCH_SIZE = 64
GPU_BATCH_SIZE = 512            # paper at 224x224 in bf16 needs about 10 GiB of activations here
# "bf16": autocast (weights float32, matrix products in bf16); "bf16-weights": the two towers
# held in bf16, activations too (half the memory traffic of autocast's float32 residual
# stream), with AGA and the heads in float32.
PRECISIONS = ("fp32", "bf16", "bf16-weights")
# GPU decode takes only JPEGs at least this many times the model input (see decode_batch).
GPU_DECODE_MIN_FACTOR = 2
# Matcher.search_swaps tries at most this many values per mention (AGA's likeliest of
# another group): the same sample_data/ results as all of them (up to 90 article types) with
# the default model's stages 6 and 7, a third of the re-embedded titles; 8 lost one right
# kind there with stage 6.
SWAP_CANDIDATES = 16


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

    ``score(images, titles)`` returns one :class:`ListingScore` of raw scores per listing
    (no thresholds: what is a violation is ``ecomatch_model.verdict``'s to say);
    ``search_swaps`` finds, for listings the policy asks about, the best single-mention swap;
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
        self.policy = ckpt.policy          # the checkpoint's calibration: assess()'s default; scoring never reads it
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
        """Turn a batch's model output into per-listing raw scores with suggestions: the first
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
                                            sugg if has_other else "",
                                            float(sugg_score[i, j]) if has_other else 0.0, attn[i, j]))
            listings.append(ListingScore(float(match[i]), attrs))
        return listings

    def search_swaps(self, pixels: torch.Tensor, enc: EncodedText, n: int | None = None) -> list[Swap | None]:
        """For each of the first ``n`` listings of a batch (default all): re-embed its title with
        one mention at a time swapped for each value of another group of its kind (as training
        corrupts titles; AGA's ``SWAP_CANDIDATES`` likeliest where there are more) and return
        the swap whose title matches the image best (None for a listing without mentions).
        Which listings deserve the search, and whether a swap explains one, is the policy's
        call (``ecomatch_model.verdict``)."""
        out = self.forward(pixels, enc)
        logits = out.attr_logits.float().cpu()
        texts, owners = [], []
        for i, mentions in enumerate(enc.mentions[:n]):
            for j, m in enumerate(mentions):
                candidates = swap_values(self.lexicon, m.kind, m.value)
                if len(candidates) > SWAP_CANDIDATES:    # the values AGA finds likeliest in the image
                    ids = torch.tensor([self.lexicon.value_id[(m.kind, v)] for v in candidates])
                    top = torch.argsort(logits[i, j, ids], descending=True)[:SWAP_CANDIDATES].tolist()
                    candidates = [candidates[k] for k in top]
                for v in candidates:
                    texts.append(replace_mention(enc.tokens[i], m, v))
                    owners.append((i, j, v))
        found: list[Swap | None] = [None] * len(enc.mentions[:n])
        if not texts:
            return found
        img = out.image_embed.float().cpu().numpy()
        # Whole batches only (the last filled with copies): one input shape, so the CPU
        # kernels' per-shape caches stop growing with the catalogue.
        padded = texts + texts[-1:] * (-len(texts) % self.batch_size)
        cos = (self.embed_texts(padded)[: len(texts)] * img[[i for i, _, _ in owners]]).sum(1)   # (N,)
        for (i, j, v), c in zip(owners, cos.tolist()):
            if found[i] is None or c > found[i].match:
                kind = enc.mentions[i][j].kind
                found[i] = Swap(j, v, float(c), float(torch.sigmoid(logits[i, j, self.lexicon.value_id[(kind, v)]])))
        return found

    def pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> model input: with ``gpu_decode`` on CUDA (B, 3, S, S) uint8 decoded in a
        batch on the GPU (Pillow for what nvJPEG does not take), else float32 normalised on the CPU."""
        if self.device.type == "cuda" and self.gpu_decode:
            return decode_batch(images, self.image_size, self.device, min_factor=GPU_DECODE_MIN_FACTOR)
        return preprocess(images, self.image_size)

    # ------------------------------------------------------------------ public API
    def score(self, images: Sequence[ImageInput], titles: Sequence[str],
              attributes: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[ListingScore]:
        """Raw scores of listings. ``attributes[i]`` optionally lists (kind, value) pairs from
        structured columns, checked alongside the attributes found in the title."""
        if len(images) != len(titles):
            raise ValueError(f"{len(images)} images but {len(titles)} titles")
        out: list[ListingScore] = []
        for s in range(0, len(titles), self.batch_size):
            sl = slice(s, s + self.batch_size)
            enc = self.encode_texts(titles[sl], attributes[sl] if attributes is not None else None)
            out.extend(self.results(self.forward(self.pixels(images[sl]), enc), enc))
        return out

    def assess(self, images: Sequence[ImageInput], titles: Sequence[str],
               attributes: Sequence[Sequence[tuple[str, str]]] | None = None, policy: Policy | None = None,
               scores: Sequence[ListingScore] | None = None) -> list[tuple[ListingScore, Assessment]]:
        """Raw scores (``scores``, when already made by :meth:`score`) and verdicts of listings
        under ``policy`` (default: the checkpoint's), with the swap search for the listings the
        policy asks about, as the scan does."""
        policy = policy or self.policy
        if policy is None:
            raise ValueError("the model has no calibration: run `ecomatch calibrate` first")
        scores = list(scores) if scores is not None else self.score(images, titles, attributes)
        ask = [i for i, s in enumerate(scores) if policy.needs_swap_search(s)]
        swaps: dict[int, Swap | None] = {}
        for s in range(0, len(ask), self.batch_size):
            chunk = ask[s:s + self.batch_size]
            enc = self.encode_texts([titles[i] for i in chunk],
                                    [attributes[i] for i in chunk] if attributes is not None else None)
            swaps.update(zip(chunk, self.search_swaps(self.pixels([images[i] for i in chunk]), enc)))
        return [(s, policy.assess(s, swap=swaps.get(i))) for i, s in enumerate(scores)]

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

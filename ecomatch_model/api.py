"""Python API: ``load()`` a checkpoint and score listings with a :class:`Matcher`."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .model import MatchOutput
from .preprocess import ImageInput, preprocess
from .text import EncodedText, TextEncoder

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_ATTR_THRESHOLD = 0.5
DEFAULT_MATCH_THRESHOLD = 0.0


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
    flagged when the match or any attribute is below its threshold; ``worst_kind`` is the
    failing attribute with the largest shortfall (threshold - score), else ``"match"`` when
    only the global match fails, else None.
    """

    match: float
    match_threshold: float
    attributes: list[AttributeScore]

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

    @property
    def worst_kind(self) -> str | None:
        failing = self.failing()
        return self.attributes[failing[0]].kind if failing else ("match" if self.match_fails else None)


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


class Matcher:
    """Scores listings (image + title) with a loaded checkpoint.

    ``score(images, titles)`` returns one :class:`ListingScore` per listing;
    ``embed_images`` / ``embed_texts`` return L2-normalised (B, E) numpy arrays.
    """

    def __init__(self, ckpt: Checkpoint, name: str = "", device: str | None = None, batch_size: int = 64):
        self.ckpt = ckpt
        self.name = name
        self.device = pick_device(device)
        self.model = ckpt.model.to(self.device).eval()
        self.cfg = ckpt.model.cfg
        self.lexicon = ckpt.lexicon
        self.text_encoder = TextEncoder(ckpt.vocab, ckpt.lexicon, self.cfg.text.max_len, self.cfg.max_attrs)
        self.thresholds = dict(ckpt.thresholds)
        self.batch_size = batch_size

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
        """One fixed-shape batch through the model (pixels already normalised)."""
        dev = self.device
        return self.model(pixels.to(dev), torch.from_numpy(enc.ids).to(dev), torch.from_numpy(enc.mask).to(dev),
                          torch.from_numpy(enc.attr_mask).to(dev), torch.from_numpy(enc.attr_valid).to(dev),
                          torch.from_numpy(enc.attr_value).to(dev))

    def results(self, out: MatchOutput, enc: EncodedText) -> list[ListingScore]:
        """Turn a batch's model output into per-listing scores with suggestions."""
        logits = out.attr_logits.float().cpu()
        own = torch.from_numpy(enc.attr_value)
        others = logits.scatter(-1, own.unsqueeze(-1), float("-inf"))            # (B, A, V)
        best_other = others.max(-1)                                               # (B, A)
        match = out.match.float().cpu().numpy()
        scores = out.attr_score.float().cpu().numpy()
        attn = out.attention.float().cpu().numpy()
        sugg_idx, sugg_score = best_other.indices.numpy(), torch.sigmoid(best_other.values).numpy()
        listings = []
        for i, mentions in enumerate(enc.mentions):
            attrs = []
            for j, m in enumerate(mentions):
                kind, sugg = self.lexicon.values[sugg_idx[i, j]]
                has_other = np.isfinite(best_other.values[i, j].item())
                attrs.append(AttributeScore(m.kind, m.value, (m.start, m.end), float(scores[i, j]),
                                            self.threshold(m.kind), sugg if has_other else "",
                                            float(sugg_score[i, j]) if has_other else 0.0, attn[i, j]))
            listings.append(ListingScore(float(match[i]), self.threshold("match"), attrs))
        return listings

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
            out.extend(self.results(self.forward(preprocess(images[sl], self.image_size), enc), enc))
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


def load(path_or_name: str = "default", device: str | None = None, batch_size: int = 64) -> Matcher:
    """Load a checkpoint (bundled name, local directory or fsspec URL such as ``gs://``)."""
    location = resolve_model_path(path_or_name)
    return Matcher(load_checkpoint(location), name=path_or_name, device=device, batch_size=batch_size)

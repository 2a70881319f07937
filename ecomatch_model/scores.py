"""What the model engine returns: raw scores, with no thresholds and no verdict.

:class:`ListingScore` is the global match (cosine) and one :class:`AttributeScore` per
attribute mention; :class:`Swap` is the swap search's best alternative title. What counts as
a violation is decided from them by ``ecomatch_model.verdict`` alone. Plain data (numpy, no
torch), so that the scan can move it between pipeline steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AttributeScore:
    """One attribute mention of a listing, scored against the image."""

    kind: str
    value: str
    span: tuple[int, int]          # token span in the title (appended tokens for column values)
    score: float                   # consistency of ``value`` with the image, 0..1
    suggestion: str                # best-scoring other value of the same kind ("" if none)
    suggestion_score: float
    attention: np.ndarray = field(repr=False)  # (G, G) attention over the image grid


@dataclass
class ListingScore:
    """A listing's global match (cosine of the image and title embeddings, -1..1) and its
    attribute mentions' scores."""

    match: float
    attributes: list[AttributeScore]


@dataclass(frozen=True)
class Swap:
    """The swap search's result for a listing: the title with mention ``index`` changed to
    ``value`` (a value of another group of its kind) matches the image at ``match``, the best
    of every swap tried; the attribute attention scores ``value`` at ``score``."""

    index: int
    value: str
    match: float
    score: float

"""Deterministic synthetic catalogue listings.

Product photos are drawn procedurally with Pillow (garment, shoe, bag, watch, cap and
sunglasses silhouettes on plain light backgrounds, in known colours and patterns) and paired
with catalogue-style titles and structured attributes. A known share of listings carries a
deliberate mismatch between the seller's claim (title and columns) and the photo; the
ground truth of what the photo shows sits in the ``mismatch_kind``/``mismatch_truth``
columns.

Everything derives from integer seeds: the same arguments give the same table, JPEG bytes
included, and listing ``i`` draws from its own generator seeded by ``(seed, i)``.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

from .lexicon_seeds import SEEDS

__all__ = ["ARTICLES", "COLOURS", "PATTERNS", "MISMATCH_KINDS", "BRANDS", "STYLE_WORDS",
           "SCHEMA", "Article", "render_image", "make_listings", "write_sample"]


# ---------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Article:
    """A drawable article type: its catalogue column values and plausible attributes."""

    article_type: str          # catalogue column value, e.g. "Tshirts"
    sub_category: str
    master_category: str
    fabric: bool               # patterns apply only to fabric items
    genders: tuple[str, ...]   # gender column values
    materials: tuple[str, ...]  # lexicon material values


_MW = ("Men", "Women")
_MWU = ("Men", "Women", "Unisex")
_W = ("Women",)

# Keys are lexicon article_type values.
ARTICLES: dict[str, Article] = {
    "tshirt": Article("Tshirts", "Topwear", "Apparel", True, _MW, ("cotton", "polyester")),
    "shirt": Article("Shirts", "Topwear", "Apparel", True, _MW, ("cotton", "linen", "silk")),
    "sweater": Article("Sweaters", "Topwear", "Apparel", True, _MW, ("wool", "cotton")),
    "dress": Article("Dresses", "Dress", "Apparel", True, _W, ("cotton", "silk", "polyester")),
    "trousers": Article("Trousers", "Bottomwear", "Apparel", True, _MW,
                        ("cotton", "linen", "denim", "polyester")),
    "shorts": Article("Shorts", "Bottomwear", "Apparel", True, _MW, ("cotton", "denim")),
    "skirt": Article("Skirts", "Bottomwear", "Apparel", True, _W, ("cotton", "denim", "silk")),
    "casual shoes": Article("Casual Shoes", "Shoes", "Footwear", False, _MWU, ("canvas", "leather")),
    "heels": Article("Heels", "Shoes", "Footwear", False, _W, ("leather",)),
    "handbag": Article("Handbags", "Bags", "Accessories", True, _W, ("leather", "canvas")),
    "backpack": Article("Backpacks", "Bags", "Accessories", True, _MWU, ("polyester", "canvas")),
    "watch": Article("Watches", "Watches", "Accessories", False, _MWU, ("metal", "leather")),
    "cap": Article("Caps", "Headwear", "Accessories", True, _MWU, ("cotton", "polyester")),
    "sunglasses": Article("Sunglasses", "Eyewear", "Accessories", False, _MWU, ("metal",)),
}

_FABRIC: tuple[str, ...] = tuple(a for a, spec in ARTICLES.items() if spec.fabric)

# Lexicon colour values -> RGB, chosen to stay apart at 64x64 after JPEG.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (246, 246, 243),
    "grey": (128, 128, 130),
    "navy blue": (28, 38, 96),
    "blue": (40, 105, 215),
    "red": (205, 30, 38),
    "maroon": (118, 22, 44),
    "green": (40, 155, 65),
    "olive": (112, 118, 42),
    "yellow": (242, 208, 40),
    "orange": (242, 128, 28),
    "pink": (242, 142, 182),
    "purple": (122, 52, 155),
    "brown": (112, 70, 38),
    "beige": (218, 198, 160),
}

PATTERNS: tuple[str, ...] = ("solid", "striped", "checked", "polka dot")
_PATTERN_P = (0.55, 0.15, 0.15, 0.15)  # base-rate of each pattern on fabric items

MISMATCH_KINDS: tuple[str, ...] = ("colour", "article_type", "pattern", "image")

BRANDS: tuple[str, ...] = (
    "Ardent", "Norvale", "Lumora", "Tavoro", "Quillon", "Marlowe", "Vexa", "Ostrava",
    "Halden", "Corvin", "Pellora", "Zephyra", "Trevane", "Alvero", "Sorrel Hill", "Nimbus Row",
    "Falkor", "Duskwood", "Kestrel & Co", "Brisk Lane",
)

# Style fillers per master category; none of their words is a lexicon surface form.
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "Apparel": ("Slim Fit", "Regular Fit", "Relaxed Fit", "Classic", "Casual", "Everyday",
                "Essential"),
    "Footwear": ("Classic", "Casual", "Everyday", "Lightweight", "Comfort"),
    "Accessories": ("Classic", "Everyday", "Premium", "Signature", "Urban", "Minimal"),
}

_GENDER_FORMS: dict[str, tuple[str, ...]] = {
    "Men": ("Men", "Men's", "Mens"),
    "Women": ("Women", "Women's", "Womens"),
    "Unisex": ("Unisex",),
}

# Title layouts; empty slots vanish, a dangling connector at the end is dropped.
_TEMPLATES: tuple[str, ...] = (
    "{brand} {gender} {pattern} {colour} {material} {style} {article}",
    "{brand} {gender} {style} {material} {article} - {colour} {pattern}",
    "{brand} {gender} {colour} {style} {article} in {pattern} {material}",
)

SCHEMA = pa.schema([
    ("listing_id", pa.string()), ("title", pa.string()), ("image", pa.binary()),
    ("gender", pa.string()), ("master_category", pa.string()), ("sub_category", pa.string()),
    ("article_type", pa.string()), ("base_colour", pa.string()), ("pattern", pa.string()),
    ("material", pa.string()), ("mismatch_kind", pa.string()), ("mismatch_truth", pa.string()),
])

_JPEG_QUALITY = 88


def _group(kind: str, value: str) -> str:
    return SEEDS[kind][value][0]


def _title_case(text: str) -> str:
    """Upper-case the first letter after start, space or hyphen ("men's t-shirt" ->
    "Men's T-Shirt"), unlike ``str.title`` which would give "Men'S"."""
    return re.sub(r"(^|[\s-])([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


# ---------------------------------------------------------------------------- shapes
# A shape is a list of primitives in unit coordinates (x right, y down). Layer "body" is
# the item itself; "dark" and "light" are details (seams, collars, dials) drawn in a
# darker/lighter shade of the item colour, clipped to the body.
@dataclass(frozen=True)
class _Prim:
    layer: str
    pts: np.ndarray
    width: float = 0.0  # 0: filled polygon; > 0: polyline of that width


def _poly(layer: str, pts: Sequence[Sequence[float]]) -> _Prim:
    return _Prim(layer, np.asarray(pts, np.float64))


def _line(layer: str, width: float, pts: Sequence[Sequence[float]]) -> _Prim:
    return _Prim(layer, np.asarray(pts, np.float64), width)


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 360.0,
         n: int = 28) -> list[tuple[float, float]]:
    """Points along an ellipse from angle ``a0`` to ``a1`` (degrees, y down)."""
    t = np.radians(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _limb(start: tuple[float, float], direction: tuple[float, float], length: float,
          w0: float, w1: float) -> list[tuple[float, float]]:
    """A tapered quad (sleeve, trouser leg, strap) from ``start`` along ``direction``."""
    p = np.asarray(start)
    d = np.asarray(direction, np.float64)
    d /= np.hypot(*d)
    nrm = np.array([-d[1], d[0]])
    q = p + d * length
    return [tuple(p + nrm * w0 / 2), tuple(q + nrm * w1 / 2), tuple(q - nrm * w1 / 2),
            tuple(p - nrm * w0 / 2)]


def _mirror(prims: list[_Prim]) -> list[_Prim]:
    """The prims reflected about x = 0.5."""
    return [_Prim(p.layer, p.pts * [-1, 1] + [1, 0], p.width) for p in prims]


def _symmetric(half: list[_Prim]) -> list[_Prim]:
    return half + _mirror(half)


def _top(half_width: float, sleeve_dir: tuple[float, float], sleeve_len: float,
         sleeve_w: tuple[float, float], shirt: bool, ribbed: bool) -> list[_Prim]:
    """T-shirt, shirt or sweater laid flat: body, two sleeves, neckline details."""
    x0, x1 = 0.5 - half_width, 0.5 + half_width
    shoulder = (x0 + 0.03, 0.17)
    sleeve = [_poly("body", _limb(shoulder, sleeve_dir, sleeve_len, *sleeve_w))]
    if ribbed:  # cuff band at the sleeve end
        unit = np.asarray(sleeve_dir) / np.hypot(*sleeve_dir)
        cuff = tuple(np.asarray(shoulder) + unit * (sleeve_len - 0.07))
        sleeve.append(_poly("dark", _limb(cuff, sleeve_dir, 0.07, sleeve_w[1], sleeve_w[1])))
    prims = _symmetric(sleeve)
    prims.append(_poly("body", [(0.39, 0.06), (x0, 0.12), (x0 + 0.01, 0.97), (x1 - 0.01, 0.97),
                                (x1, 0.12), (0.61, 0.06)]))
    if shirt:
        prims += _symmetric([_poly("light", [(0.38, 0.05), (0.5, 0.13), (0.45, 0.21), (0.36, 0.11)])])
        prims.append(_line("dark", 0.014, [(0.5, 0.14), (0.5, 0.97)]))
        prims += [_poly("light", _arc(0.5, y, 0.013, 0.013, n=10)) for y in (0.28, 0.45, 0.62, 0.79)]
    else:
        prims.append(_poly("dark", _arc(0.5, 0.06, 0.11, 0.075, 0, 180, n=16)))
    if ribbed:
        prims.append(_poly("dark", [(x0 + 0.01, 0.90), (x1 - 0.01, 0.90), (x1 - 0.01, 0.97),
                                    (x0 + 0.01, 0.97)]))
    return prims


def _bottoms(leg_len: float, spread: float, hem_w: float) -> list[_Prim]:
    """Trousers or shorts: waistband, hip block and two legs."""
    prims = _symmetric([_poly("body", _limb((0.39, 0.18), (-spread, 1.0), leg_len, 0.22, hem_w))])
    prims += [
        _poly("body", [(0.29, 0.0), (0.71, 0.0), (0.72, 0.24), (0.28, 0.24)]),
        _poly("dark", [(0.29, 0.0), (0.71, 0.0), (0.71, 0.055), (0.29, 0.055)]),
        _line("dark", 0.012, [(0.5, 0.055), (0.5, 0.22)]),
    ]
    return prims


def _dress() -> list[_Prim]:
    hem = _arc(0.5, 0.93, 0.31, 0.07, 0, 180, n=12)
    return _symmetric([_line("body", 0.03, [(0.41, 0.0), (0.40, 0.14)])]) + [
        _poly("body", [(0.36, 0.12), (0.64, 0.12), (0.60, 0.42), (0.40, 0.42)]),
        _poly("body", [(0.40, 0.40), (0.60, 0.40), (0.81, 0.93), *hem, (0.19, 0.93)]),
        _poly("dark", [(0.39, 0.38), (0.61, 0.38), (0.61, 0.43), (0.39, 0.43)]),
        _poly("dark", _arc(0.5, 0.12, 0.09, 0.05, 0, 180, n=12)),
    ]


def _skirt() -> list[_Prim]:
    hem = _arc(0.5, 0.58, 0.40, 0.06, 0, 180, n=12)
    pleats = [_line("dark", 0.01, [(0.5 + k, 0.07), (0.5 + 2.1 * k, 0.60)]) for k in (-0.1, 0.0, 0.1)]
    return [
        _poly("body", [(0.32, 0.0), (0.68, 0.0), (0.90, 0.58), *hem, (0.10, 0.58)]),
        _poly("dark", [(0.32, 0.0), (0.68, 0.0), (0.69, 0.06), (0.31, 0.06)]),
        *pleats,
    ]


def _casual_shoe() -> list[_Prim]:
    return [
        _poly("body", [(0.06, 0.70), (0.06, 0.46), (0.11, 0.36), (0.24, 0.35), (0.32, 0.44),
                       (0.50, 0.42), (0.70, 0.49), (0.89, 0.55), (0.97, 0.64), (0.97, 0.72)]),
        _poly("body", [(0.04, 0.68), (0.98, 0.68), (0.97, 0.79), (0.05, 0.79)]),
        _poly("light", [(0.04, 0.71), (0.98, 0.71), (0.97, 0.79), (0.05, 0.79)]),
        _line("light", 0.025, [(0.30, 0.62), (0.52, 0.56), (0.76, 0.62)]),
        *[_line("dark", 0.018, [(x, 0.44), (x + 0.05, 0.52)]) for x in (0.40, 0.47, 0.54)],
    ]


def _heel() -> list[_Prim]:
    return [
        _poly("body", [(0.10, 0.30), (0.16, 0.27), (0.24, 0.35), (0.50, 0.53), (0.74, 0.58),
                       (0.90, 0.64), (0.97, 0.72), (0.92, 0.77), (0.70, 0.77), (0.52, 0.73),
                       (0.30, 0.59), (0.18, 0.52), (0.10, 0.50)]),
        _poly("body", [(0.10, 0.46), (0.20, 0.49), (0.17, 0.90), (0.13, 0.90)]),
        _line("dark", 0.02, [(0.17, 0.29), (0.25, 0.37), (0.50, 0.54)]),
        _poly("dark", [(0.12, 0.86), (0.18, 0.86), (0.17, 0.90), (0.13, 0.90)]),
    ]


def _handbag() -> list[_Prim]:
    return [
        _line("body", 0.05, _arc(0.5, 0.42, 0.21, 0.31, 180, 360, n=20)),
        _poly("body", [(0.18, 0.38), (0.82, 0.38), (0.92, 0.95), (0.08, 0.95)]),
        _line("dark", 0.015, [(0.17, 0.50), (0.83, 0.50)]),
        _poly("light", [(0.46, 0.48), (0.54, 0.48), (0.54, 0.57), (0.46, 0.57)]),
    ]


def _backpack() -> list[_Prim]:
    pocket = [(0.30, 0.60), (0.70, 0.60), (0.72, 0.90), (0.28, 0.90), (0.30, 0.60)]
    return _symmetric([_line("body", 0.05, [(0.24, 0.30), (0.15, 0.86)])]) + [
        _line("body", 0.035, _arc(0.5, 0.12, 0.07, 0.07, 180, 360, n=12)),
        _poly("body", [*_arc(0.5, 0.34, 0.29, 0.24, 180, 360, n=20), (0.79, 0.97), (0.21, 0.97)]),
        _line("dark", 0.015, pocket),
        _line("light", 0.015, _arc(0.5, 0.50, 0.27, 0.12, 190, 350, n=12)),
    ]


def _watch() -> list[_Prim]:
    return [
        _poly("body", _limb((0.5, 0.0), (0.0, 1.0), 1.0, 0.24, 0.24)),
        _poly("body", _arc(0.5, 0.5, 0.24, 0.24)),
        _poly("body", [(0.72, 0.46), (0.78, 0.46), (0.78, 0.54), (0.72, 0.54)]),
        _poly("light", _arc(0.5, 0.5, 0.17, 0.17)),
        _line("dark", 0.022, [(0.5, 0.5), (0.5, 0.38)]),
        _line("dark", 0.018, [(0.5, 0.5), (0.60, 0.56)]),
        *[_poly("dark", _arc(0.5, y, 0.018, 0.018, n=10)) for y in (0.82, 0.89)],
    ]


def _cap() -> list[_Prim]:
    seams = [_line("dark", 0.012, [(0.42, 0.27), (x, 0.70)]) for x in (0.28, 0.56)]
    return [
        _poly("body", _arc(0.42, 0.70, 0.34, 0.44, 180, 360)),
        _poly("body", [(0.62, 0.62), (0.88, 0.63), (0.99, 0.71), (0.92, 0.78), (0.62, 0.74)]),
        _line("dark", 0.02, [(0.09, 0.69), (0.75, 0.69)]),
        _poly("dark", _arc(0.42, 0.27, 0.03, 0.02, n=10)),
        *seams,
    ]


def _sunglasses() -> list[_Prim]:
    return _symmetric([
        _poly("body", _arc(0.27, 0.50, 0.19, 0.15)),
        _line("body", 0.03, [(0.09, 0.45), (0.01, 0.41)]),
        _line("dark", 0.02, _arc(0.27, 0.50, 0.185, 0.145)),
        _line("light", 0.02, [(0.19, 0.50), (0.25, 0.42)]),
    ]) + [_line("body", 0.035, _arc(0.5, 0.47, 0.08, 0.05, 180, 360, n=10))]


@dataclass(frozen=True)
class _Shape:
    prims: tuple[_Prim, ...]
    centre: np.ndarray   # bounding-box centre, unit coordinates
    corners: np.ndarray  # bounding-box corners relative to the centre
    extent: float        # larger bounding-box side


def _shape(prims: list[_Prim]) -> _Shape:
    pts = np.concatenate([p.pts for p in prims])
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]]) - centre
    return _Shape(tuple(prims), centre, corners, float((hi - lo).max()))


_SHAPES: dict[str, _Shape] = {k: _shape(v) for k, v in {
    "tshirt": _top(0.24, (-0.8, 0.6), 0.22, (0.17, 0.13), shirt=False, ribbed=False),
    "shirt": _top(0.24, (-0.3, 1.0), 0.74, (0.16, 0.11), shirt=True, ribbed=False),
    "sweater": _top(0.27, (-0.18, 1.0), 0.74, (0.19, 0.14), shirt=False, ribbed=True),
    "dress": _dress(),
    "trousers": _bottoms(0.80, 0.08, 0.17),
    "shorts": _bottoms(0.34, 0.45, 0.21),
    "skirt": _skirt(),
    "casual shoes": _casual_shoe(),
    "heels": _heel(),
    "handbag": _handbag(),
    "backpack": _backpack(),
    "watch": _watch(),
    "cap": _cap(),
    "sunglasses": _sunglasses(),
}.items()}


# ---------------------------------------------------------------------------- rendering
def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _masks(shape: _Shape, rot: np.ndarray, span: float, centre: np.ndarray,
           size: int) -> dict[str, np.ndarray]:
    """Anti-aliased coverage masks (float32, size x size) of the body and detail layers,
    drawn at twice the resolution and box-reduced."""
    big = 2 * size
    images = {k: Image.new("L", (big, big), 0) for k in ("body", "dark", "light")}
    draws = {k: ImageDraw.Draw(v) for k, v in images.items()}
    for prim in shape.prims:
        xy = [tuple(p) for p in ((prim.pts - shape.centre) @ rot.T * span * 2 + centre * 2)]
        if prim.width:
            draws[prim.layer].line(xy, 255, width=max(1, round(prim.width * span * 2)), joint="curve")
        else:
            draws[prim.layer].polygon(xy, 255)
    out = {k: np.asarray(v.reduce(2), np.float32) / 255.0 for k, v in images.items()}
    out["dark"] *= out["body"]
    out["light"] *= out["body"]
    return out


def _soft_band(t: np.ndarray, period: float, duty: float, px: float) -> np.ndarray:
    """Anti-aliased coverage of bands of width ``duty * period`` every ``period`` along
    ``t`` (unit coordinates; ``px`` pixels per unit)."""
    d = np.abs(t / period % 1.0 - 0.5) * period
    return np.clip((duty * period / 2 - d) * px + 0.5, 0.0, 1.0)


def _pattern_cover(pattern: str, u: np.ndarray, v: np.ndarray, px: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Coverage of the secondary colour: thin stripes, a thin check grid or small dots,
    each well under a third of the item so the main colour dominates."""
    if pattern == "striped":
        return _soft_band(v if rng.random() < 0.6 else u, rng.uniform(0.09, 0.13), 0.22, px)
    if pattern == "checked":
        period = rng.uniform(0.10, 0.14)
        return np.maximum(_soft_band(u, period, 0.12, px), _soft_band(v, period, 0.12, px))
    cell = rng.uniform(0.10, 0.14)  # polka dot, rows offset by half a cell
    row = np.floor(v / cell)
    du = ((u / cell + 0.5 * (row % 2)) % 1.0 - 0.5) * cell
    dv = (v / cell % 1.0 - 0.5) * cell
    return np.clip((0.25 * cell - np.hypot(du, dv)) * px + 0.5, 0.0, 1.0)


def render_image(article: str, colour: str, pattern: str, rng: np.random.Generator,
                 size: int = 128) -> Image.Image:
    """Draw one catalogue-style product photo (RGB, ``size`` x ``size``).

    ``article`` is a key of ARTICLES, ``colour`` of COLOURS, ``pattern`` one of PATTERNS
    (non-solid only on fabric articles). Per image: scale (60-90% of the frame), position
    jitter, rotation within +-8 degrees, background shade and faint noise, brightness and
    shading of the item colour (never its hue), an optional soft shadow.
    """
    if article not in ARTICLES or colour not in COLOURS or pattern not in PATTERNS:
        raise ValueError(f"unknown article/colour/pattern: {article!r}, {colour!r}, {pattern!r}")
    if pattern != "solid" and not ARTICLES[article].fabric:
        raise ValueError(f"{article!r} is not a fabric item; only 'solid' applies")
    shape = _SHAPES[article]

    # Geometry: rotation, scale to 60-90% of the frame, jitter that keeps the item inside.
    angle = math.radians(rng.uniform(-8.0, 8.0))
    cos, sin = math.cos(angle), math.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    half = np.abs(shape.corners @ rot.T).max(0)  # rotated half extents, unit coordinates
    span = min(rng.uniform(0.60, 0.90) * size / shape.extent, 0.47 * size / half.max())
    slack = np.minimum(np.maximum(size / 2 - half * span - 1, 0.0), 0.08 * size)
    centre = size / 2 + rng.uniform(-1.0, 1.0, 2) * slack
    masks = _masks(shape, rot, span, centre, size)

    # Unit coordinates of every pixel centre, for shading and patterns.
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = (grid[None, :] - float(centre[0])) / span
    dy = (grid[:, None] - float(centre[1])) / span
    u = cos * dx + sin * dy + float(shape.centre[0])
    v = cos * dy - sin * dx + float(shape.centre[1])

    # Item colours: tiny channel jitter, brightness and top-lit shading within the colour
    # family (never a hue change); details in a darker and a lighter tone of the same colour.
    base = np.asarray(COLOURS[colour], np.float32)
    pale = bool(base.min() > 200)
    rgb = np.clip(base + rng.normal(0.0, 2.5, 3).astype(np.float32), 0, 255)
    luma = _luma(rgb)
    dark = rgb * 0.62 if luma > 60 else rgb + (255 - rgb) * 0.3
    light = rgb + (255 - rgb) * 0.5 if luma < 200 else rgb * 0.85
    brightness = rng.uniform(0.95, 1.03) if pale else rng.uniform(0.88, 1.06)
    shade = brightness * (1.0 + rng.uniform(0.0, 0.10) * (0.5 - v))
    if pattern == "solid":
        second, cover = rgb, np.zeros_like(u)
    else:
        second = np.asarray([(30, 36, 64), (38, 38, 40)] if luma > 150
                            else [(242, 242, 236), (232, 222, 190)], np.float32)[rng.integers(2)]
        cover = _pattern_cover(pattern, u, v, span, rng)

    # Background: near-white to light grey (darker for pale items), faint gradient and
    # noise, optional soft shadow offset down-right.
    level = rng.uniform(185, 212) if pale else rng.uniform(232, 250)
    tint = rng.normal(0.0, 1.5, 3).astype(np.float32)
    bg = (level + rng.uniform(-6, 6) * (grid[:, None] / size - 0.5)
          + rng.standard_normal((size, size), dtype=np.float32))
    if rng.random() < 0.7:
        off = max(1, size // 40)
        shadow = np.zeros((size, size), np.uint8)
        shadow[off:, off:] = masks["body"][:-off, :-off] * 255
        blurred = np.asarray(Image.fromarray(shadow).filter(ImageFilter.GaussianBlur(size / 50)))
        bg *= 1 - rng.uniform(0.06, 0.12) / 255 * blurred

    # Every pixel is a weighted sum of six palette rows: one small matrix product.
    body, d, l = masks["body"], masks["dark"], masks["light"]
    item = body * shade
    weights = np.stack([item * (1 - cover) * (1 - d) * (1 - l), item * cover * (1 - d) * (1 - l),
                        item * d * (1 - l), item * l, (1 - body) * bg, 1 - body], axis=-1)
    palette = np.stack([rgb, second, dark, light, np.ones(3, np.float32), tint])
    out = weights @ palette
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------- listings
def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _other_group(rng: np.random.Generator, kind: str, value: str, options: Sequence[str]) -> str:
    """A random option whose lexicon group differs from ``value``'s."""
    return _pick(rng, [o for o in options if _group(kind, o) != _group(kind, value)])


def _draw_pattern(rng: np.random.Generator, article: str) -> str:
    if not ARTICLES[article].fabric:
        return "solid"
    return PATTERNS[int(rng.choice(len(PATTERNS), p=_PATTERN_P))]


def _forms(kind: str, value: str) -> list[str]:
    """The seed lexicon's surface forms of ``value``, title-cased."""
    return [_title_case(f) for f in SEEDS[kind][value][1]]


def _title(rng: np.random.Generator, article: str, colour: str, pattern: str, gender: str,
           material: str) -> str:
    """A catalogue-style title naming exactly the given attributes."""
    slots = {
        "brand": _pick(rng, BRANDS),
        "gender": _pick(rng, _GENDER_FORMS[gender]),
        "pattern": _pick(rng, _forms("pattern", pattern))
        if pattern != "solid" or rng.random() < 0.25 else "",
        "colour": _pick(rng, _forms("colour", colour)),
        "material": _pick(rng, _forms("material", material)) if rng.random() < 0.5 else "",
        "style": _pick(rng, STYLE_WORDS[ARTICLES[article].master_category])
        if rng.random() < 0.6 else "",
        "article": _pick(rng, _forms("article_type", article)),
    }
    text = " ".join(_pick(rng, _TEMPLATES).format(**slots).split())
    return re.sub(r"\s+(?:in|-)$", "", text)


def _listing(seed: int, i: int, kind: str, size: int) -> dict[str, object]:
    """Listing ``i``: the claim is drawn first, then the photo, altered per ``kind``."""
    rng = np.random.default_rng([seed, i])
    article = _pick(rng, _FABRIC if kind == "pattern" else list(ARTICLES))
    spec = ARTICLES[article]
    colour = _pick(rng, list(COLOURS))
    pattern = _draw_pattern(rng, article)
    gender = _pick(rng, spec.genders)
    material = _pick(rng, spec.materials)

    shown = {"article_type": article, "colour": colour, "pattern": pattern}
    if kind == "colour":
        shown["colour"] = _other_group(rng, "colour", colour, list(COLOURS))
    elif kind == "article_type":
        shown["article_type"] = _other_group(rng, "article_type", article,
                                             list(ARTICLES) if pattern == "solid" else _FABRIC)
    elif kind == "pattern":
        shown["pattern"] = _other_group(rng, "pattern", pattern, PATTERNS)
    elif kind == "image":
        shown["article_type"] = _other_group(rng, "article_type", article, list(ARTICLES))
        shown["colour"] = _other_group(rng, "colour", colour, list(COLOURS))
        shown["pattern"] = _draw_pattern(rng, shown["article_type"])

    title = _title(rng, article, colour, pattern, gender, material)
    image = render_image(shown["article_type"], shown["colour"], shown["pattern"], rng, size)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=_JPEG_QUALITY)
    return {
        "listing_id": f"s{seed}-{i:06d}", "title": title, "image": buf.getvalue(),
        "gender": gender, "master_category": spec.master_category,
        "sub_category": spec.sub_category, "article_type": spec.article_type,
        "base_colour": _title_case(colour), "pattern": _title_case(pattern),
        "material": _title_case(material), "mismatch_kind": kind,
        "mismatch_truth": shown["article_type" if kind == "image" else kind] if kind else "",
    }


def make_listings(n: int, seed: int = 0, mismatch_rate: float = 0.2,
                  size: int = 128) -> pa.Table:
    """``n`` synthetic listings as a table with columns SCHEMA.

    Exactly ``round(n * mismatch_rate)`` listings, chosen by ``default_rng(seed)``, carry a
    mismatch; their kinds rotate through MISMATCH_KINDS in listing order. Title and
    structured columns are the seller's claim; ``mismatch_truth`` is what the photo shows
    (a lexicon value; for "image" the article type shown).
    """
    if n < 0 or not 0.0 <= mismatch_rate <= 1.0 or size < 16:
        raise ValueError("need n >= 0, 0 <= mismatch_rate <= 1 and size >= 16")
    chosen = np.sort(np.random.default_rng(seed).choice(n, round(n * mismatch_rate), replace=False))
    kinds = [""] * n
    for j, i in enumerate(chosen):
        kinds[int(i)] = MISMATCH_KINDS[j % len(MISMATCH_KINDS)]
    rows = [_listing(seed, i, kinds[i], size) for i in range(n)]
    return pa.table({f.name: [r[f.name] for r in rows] for f in SCHEMA}, schema=SCHEMA)


def write_sample(out_dir: str | Path, n: int = 400, seed: int = 0, mismatch_rate: float = 0.2,
                 shards: int = 2, size: int = 128) -> list[str]:
    """Write ``make_listings(n, seed, mismatch_rate, size)`` as ``shards`` zstd parquet files
    ``out_dir/listings-0000K.parquet`` (contiguous row ranges); return their paths."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = make_listings(n, seed, mismatch_rate, size)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    paths = []
    for k in range(shards):
        path = out / f"listings-{k:05d}.parquet"
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path, compression="zstd")
        paths.append(str(path))
    return paths

"""Explanations as pictures, drawn with Pillow only: an attribute's attention heatmap over
the image the model saw (shared by the scan's HTML report and ``ecomatch explain``), and a
one-listing sheet of per-attribute heatmaps and scores.

The heatmap is drawn over the letterboxed model input (``preprocess.to_uint8``), the image
the attention grid actually covers; cold cells leave the photo visible, hot cells tint it.
"""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .api import AttributeScore, ListingScore, Matcher
from .preprocess import ImageInput, to_uint8
from .text import word_offsets
from .verdict import Assessment, Policy

# Colour stops (position, RGB) of the heat scale: blue (cold) -> cyan -> yellow -> red (hot).
HEAT_STOPS = ((0.0, (30, 60, 200)), (0.35, (0, 200, 230)), (0.65, (255, 230, 0)), (1.0, (230, 20, 20)))
FAIL_RGB, OK_RGB, INK_RGB = (200, 20, 20), (20, 130, 40), (20, 20, 20)


def pixels_image(pixels: np.ndarray) -> Image.Image:
    """A letterboxed model input (3, S, S) uint8 as an RGB image."""
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))  # (3, S, S) -> (S, S, 3)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape (...) -> RGB (..., 3) float on the heat scale."""
    pos = [p for p, _ in HEAT_STOPS]
    return np.stack([np.interp(heat, pos, [rgb[c] for _, rgb in HEAT_STOPS]) for c in range(3)], axis=-1)


def overlay_heatmap(image: Image.Image, attention: np.ndarray, alpha: float = 0.65) -> Image.Image:
    """``image`` with the (G, G) ``attention`` stretched over it: each pixel is tinted with
    the heat colour of its cell, at opacity ``alpha`` x (cell / hottest cell). An all-zero
    map (an invalid attribute slot) leaves the image as it is."""
    top = float(attention.max())
    if top <= 0:
        return image.copy()
    heat = Image.fromarray((attention / top).astype(np.float32)).resize(image.size, Image.BILINEAR)
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)[..., None]               # (H, W) -> (H, W, 1)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)                          # (H, W, 3)
    mixed = base * (1 - alpha * h) + heat_colours(h[..., 0]) * (alpha * h)
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))


def mention_words(title: str, span: tuple[int, int]) -> str | None:
    """The words of ``title`` a token span covers, as written; None when the span lies past
    the title's tokens (an attribute appended from a structured column)."""
    offsets = word_offsets(title)
    start, end = span
    if not 0 <= start < end <= len(offsets):
        return None
    return title[offsets[start][0]:offsets[end - 1][1]]


def attribute_lines(a: AttributeScore, title: str, p: float, blamed: bool) -> list[tuple[str, tuple[int, int, int]]]:
    """The text under an attribute's panel: (line, colour) pairs; ``p`` is the mention's
    probability of contradicting the photo, ``blamed`` whether the verdict blames it."""
    said = mention_words(title, a.span)
    lines = [(f"{a.kind}: {a.value}", INK_RGB),
             (f"score {a.score:.2f}, p {p:.2f}{' BLAMED' if blamed else ''}", FAIL_RGB if blamed else OK_RGB)]
    if a.suggestion:
        lines.append((f"best other: {a.suggestion} {a.suggestion_score:.2f}", INK_RGB))
    if said is not None:
        lines.append((f"title: \"{said}\"", INK_RGB))
    return lines


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render_explanation(matcher: Matcher, policy: Policy, image: ImageInput, title: str,
                       panel: int = 176) -> tuple[Image.Image, ListingScore, Assessment]:
    """One listing scored, judged by ``policy`` and drawn: the title, global match and
    verdict, the model's view of the image, then one heatmap panel per attribute mention with
    its score and probability of a contradiction, the model's best other value and the title
    words it comes from. Returns the picture, the raw scores and the verdict."""
    [(score, verdict)] = matcher.assess([image], [title], policy=policy)
    ev = policy.evidence(score)
    view = pixels_image(to_uint8(image, matcher.image_size))
    font = ImageFont.load_default(size=13)
    pad, line_h = 12, 17
    width = pad + (1 + len(score.attributes)) * (panel + pad)
    header = textwrap.wrap(title, max(20, width // 8))[:3] or [""]
    header_h = pad + line_h * (len(header) + 1) + pad
    sheet = Image.new("RGB", (width, header_h + panel + line_h * 4 + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((pad, pad + i * line_h), _fit(draw, line, font, width - 2 * pad), fill=INK_RGB, font=font)
    draw.text((pad, pad + len(header) * line_h),
              f"match {score.match:.2f}   p_violation {verdict.p_violation:.2f}   "
              f"verdict: {'VIOLATION (' + str(verdict.worst_kind) + ')' if verdict.violation else 'ok'}",
              fill=FAIL_RGB if verdict.violation else OK_RGB, font=font)
    note = [] if score.attributes else [("no attribute found in the title", INK_RGB)]
    panels = [(view, [("model input", INK_RGB), *note])]
    panels += [(overlay_heatmap(view, a.attention),
                attribute_lines(a, title, policy.probability(e), verdict.culprit == j))
               for j, (a, e) in enumerate(zip(score.attributes, ev))]
    for k, (picture, lines) in enumerate(panels):
        x = pad + k * (panel + pad)
        sheet.paste(picture.resize((panel, panel), Image.BILINEAR), (x, header_h))
        for i, (text, colour) in enumerate(lines):
            draw.text((x, header_h + panel + 4 + i * line_h), _fit(draw, text, font, panel), fill=colour, font=font)
    return sheet, score, verdict

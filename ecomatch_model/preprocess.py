"""Image preprocessing shared by training, the Python API and the scan pipeline:
Pillow decode (JPEG draft mode), letterbox onto a white square, normalise."""
from __future__ import annotations

import io
import logging
import warnings
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[bytes, bytearray, memoryview, Image.Image]
log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
MEAN = np.array([0.5, 0.5, 0.5], np.float32)
STD = np.array([0.25, 0.25, 0.25], np.float32)
_FILL = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a usable image (unreadable, too large, empty)."""


class ImageTooLargeError(ImageDecodeError):
    """The image header declares more pixels than the cap (a decompression bomb, or simply too big)."""


def open_image(data: ImageInput, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes (or take a PIL image) as RGB, reduced at decode time towards ``size``.

    The pixel count is checked from the header before any pixel is decoded, so
    decompression bombs are refused cheaply (:class:`ImageTooLargeError`).
    """
    if isinstance(data, Image.Image):
        img = data
    else:
        if not data:
            raise ImageDecodeError("empty image bytes")
        head = f"cannot identify image format ({len(data)} bytes starting {bytes(data[:8]).hex()})"
        try:
            with warnings.catch_warnings():     # the cap below decides; Pillow's own warning is noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(bytes(data)))
        except Image.DecompressionBombError as exc:   # over Pillow's hard limit (2 x MAX_IMAGE_PIXELS)
            raise ImageTooLargeError(f"decompression bomb refused before decoding: {exc}") from None
        except UnidentifiedImageError:  # its message names the BytesIO object, memory address and all
            raise ImageDecodeError(head) from None
        except Exception as exc:  # Pillow raises several types for bad headers
            raise ImageDecodeError(f"{head}: {type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLargeError(f"image has {w}x{h} pixels, over the cap of {max_pixels}")
    if w < 1 or h < 1:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    try:
        if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
            img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img) if not isinstance(data, Image.Image) else img
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        img.load()
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) or 1.0
        return Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _FILL)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def letterbox(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> (3, size, size) uint8, aspect kept, centred on white."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size), _FILL)
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas, dtype=np.uint8).transpose(2, 0, 1).copy()  # (S, S, 3) -> (3, S, S)


def to_uint8(data: ImageInput, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and letterbox one image: (3, size, size) uint8."""
    return letterbox(open_image(data, size, max_pixels), size)


def decode_images(images: Sequence[ImageInput], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, S, S) uint8 letterboxed images and the indices that decoded; the others are
    logged and skipped (training and evaluation sets, where a bad row is simply left out)."""
    out, ok = [], []
    for i, data in enumerate(images):
        try:
            out.append(to_uint8(data, size))
            ok.append(i)
        except ImageDecodeError as exc:
            log.warning("skipping image %d: %s", i, exc)
    return (np.stack(out) if out else np.zeros((0, 3, size, size), np.uint8)), np.asarray(ok, np.int64)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 normalised, on the tensor's device."""
    mean = torch.as_tensor(MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def preprocess(images: Sequence[ImageInput], size: int) -> torch.Tensor:
    """Images -> float32 (B, 3, size, size) ready for the model."""
    batch = np.stack([to_uint8(im, size) for im in images]) if len(images) else np.zeros((0, 3, size, size), np.uint8)
    return normalize(torch.from_numpy(batch))

"""Image preprocessing shared by training, the Python API and the scan pipeline:
Pillow decode (JPEG draft mode), letterbox onto a white square, normalise.

:func:`decode_batch` is the batched path for a GPU: plain JPEGs are decoded together by
``torchvision.io.decode_jpeg`` (nvJPEG on CUDA) and letterboxed on the device; everything
else (other formats, progressive or CMYK JPEGs, EXIF rotation, failures, no torchvision)
takes the Pillow path above, so results match it within resampling differences."""
from __future__ import annotations

import io
import logging
import struct
import warnings
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------------- batched (GPU) decode
JpegDecoder = Callable[[list, torch.device], list]   # (list of (n,) uint8 CPU tensors, device) -> (C, H, W) uint8
_SOF_BASELINE = (0xC0, 0xC1)                       # baseline and extended sequential Huffman
_SOF_OTHER = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


class JpegHeader(NamedTuple):
    width: int
    height: int
    components: int
    baseline: bool          # sequential Huffman (SOF0/SOF1), what every decoder handles
    orientation: int        # EXIF orientation, 1 when absent


def _exif_orientation(app1: bytes) -> int:
    """The orientation tag (0x0112) of an APP1 ``Exif`` payload, 1 when absent or unreadable."""
    if not app1.startswith(b"Exif\0\0") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if endian is None:
        return 1
    try:
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            tag, _, _, value = struct.unpack(endian + "HHIH", tiff[ifd + 2 + 12 * k: ifd + 12 + 12 * k])
            if tag == 0x0112:
                return int(value)
    except struct.error:
        return 1
    return 1


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Size, components, coding and EXIF orientation from a JPEG's markers (no pixels are
    decoded); None when ``data`` is not a JPEG or its header cannot be read."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n, orientation = 2, len(data), 1
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                                  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):            # standalone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        seg = data[i + 4:i + 2 + length]
        if marker == 0xE1:
            orientation = _exif_orientation(seg)
        elif marker in _SOF_BASELINE or marker in _SOF_OTHER:
            if len(seg) < 6:
                return None
            height, width = struct.unpack(">HH", seg[1:5])
            return JpegHeader(width, height, seg[5], marker in _SOF_BASELINE, orientation)
        elif marker in (0xDA, 0xD9):                        # scan or end before any frame header
            return None
        i += 2 + length
    return None


def torchvision_jpeg_decoder() -> JpegDecoder | None:
    """``torchvision.io.decode_jpeg`` as a batched RGB decoder, or None without torchvision."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:       # absent, or built against another torch
        return None

    def decode(data: list, device: torch.device) -> list:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return decode


def draft_factor(width: int, height: int, size: int) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) Pillow's ``draft`` picks in :func:`open_image`:
    the largest that keeps both sides at least ``size``."""
    scale = min(width // size, height // size)
    return next(f for f in (8, 4, 2, 1) if scale >= f or f == 1)


def letterbox_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 of one source size -> (B, 3, size, size) uint8 on the same device,
    aspect kept, centred on white: :func:`letterbox` on tensors (antialiased bilinear)."""
    b, _, h, w = images.shape
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        images = F.interpolate(images.float(), size=(nh, nw), mode="bilinear", align_corners=False,
                               antialias=True).round_().clamp_(0, 255).to(torch.uint8)  # (B, 3, nh, nw)
    out = torch.full((b, 3, size, size), 255, dtype=torch.uint8, device=images.device)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, :, top:top + nh, left:left + nw] = images
    return out


def decode_batch(images: Sequence[ImageInput], size: int, device: str | torch.device = "cuda",
                 max_pixels: int = DEFAULT_MAX_PIXELS, decoder: JpegDecoder | None | bool = True,
                 min_factor: int = 1) -> torch.Tensor:
    """Images -> (N, 3, size, size) uint8 on ``device``, decoded in one batch where possible.

    Baseline RGB/greyscale JPEGs within ``max_pixels``, without EXIF rotation and at least
    ``min_factor`` times the input on both sides (their :func:`draft_factor`) go to
    ``decoder`` together (default: torchvision's, nvJPEG when ``device`` is CUDA), then are
    letterboxed on the device a source size at a time. Every other image, and all of them
    when the decoder is absent (``False``, no torchvision, or CUDA requested but missing)
    or fails, take :func:`to_uint8` (Pillow), which raises :class:`ImageDecodeError` for
    unusable bytes exactly as the CPU path does.

    ``min_factor=2`` (what :class:`~ecomatch_model.api.Matcher` uses) keeps photos seen at
    their own resolution on Pillow: nvJPEG upsamples 4:2:0 chroma differently from
    libjpeg's "fancy" upsampling, by up to about 40 levels on colour edges, which moved one
    score in 512 by 0.087 on 60x80 photos at 80x80; once the photo is reduced 2x or more the
    difference averages out (at most 0.015 on 224x224 photos at 80x80, H100).
    """
    device = torch.device(device)
    if decoder is True:
        decoder = torchvision_jpeg_decoder() if device.type != "cuda" or torch.cuda.is_available() else None
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    fast: list[int] = []
    if decoder:
        for i, data in enumerate(images):
            head = None if isinstance(data, Image.Image) else jpeg_header(bytes(data[:65536]))
            if (head and head.baseline and head.components in (1, 3) and head.orientation == 1
                    and 0 < head.width * head.height <= max_pixels
                    and (min_factor <= 1 or draft_factor(head.width, head.height, size) >= min_factor)):
                fast.append(i)
    decoded: list[torch.Tensor] = []
    if fast:
        data = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in fast]
        try:
            decoded = decoder(data, device)
        except Exception as exc:    # nvJPEG refuses the whole batch for one bad image: retry one by one
            log.warning("batched JPEG decode failed (%s: %s); decoding these %d images one by one",
                        type(exc).__name__, exc, len(fast))
            kept = []
            for i, one in zip(fast, data):
                try:
                    decoded.append(decoder([one], device)[0])
                    kept.append(i)
                except Exception:   # left to Pillow below, which decodes it or says why not
                    pass
            fast = kept
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(decoded):
        by_size.setdefault(tuple(img.shape[-2:]), []).append(k)
    for (h, w), ks in by_size.items():
        batch = torch.stack([decoded[k] for k in ks]).to(device)                  # (b, 3, H, W)
        f = draft_factor(w, h, size)
        if f > 1:   # what Pillow's draft mode (DCT scaling) does on the CPU path, approximated by a box
            batch = F.avg_pool2d(batch.float(), f, ceil_mode=True).round_().to(torch.uint8)  # -> (b, 3, H/f, W/f)
        out[[fast[k] for k in ks]] = letterbox_tensor(batch, size)
    done = set(fast)
    rest = [i for i in range(len(images)) if i not in done]
    if rest:    # Pillow's share, copied to the device in one piece
        out[rest] = torch.from_numpy(np.stack([to_uint8(images[i], size, max_pixels) for i in rest])).to(device)
    return out

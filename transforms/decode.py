"""The ``DecodeListings`` stage: validate a row, fetch and decode its image, letterbox it,
tokenize the title and find its attributes, all as fixed-shape arrays per listing.

Rows that cannot be used (no id, no title, no image, an unreadable or unsupported image,
a title or image over its cap in :class:`InputLimits`) raise here and leave through
``.with_exception_handling()`` as error records; nothing broken reaches ``RunInference``.

``content_hash`` is the sha256 of, in order and each prefixed by its byte length: the
model's weights sha256, the title (UTF-8), the structured attributes used (``kind=value``
lines, sorted) and the image bytes. Equal hashes mean the model saw the same input.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import apache_beam as beam
import numpy as np
from ecomatch_model.api import Matcher
from ecomatch_model.preprocess import DEFAULT_MAX_PIXELS, to_uint8
from ecomatch_model.text import Mention, TextEncoder

from .errors import ErrorRecord, dead_letter_errors, redact
from .listings import RawListing
from .sources import ImageSources, SourceOverCapError, shown

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_TITLE_CHARS = 4096
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


class ListingError(ValueError):
    """A row lacks something every listing needs (id, title, image)."""


class InputTooLargeError(ListingError):
    """A row's title or image is over its cap in :class:`InputLimits`."""


@dataclass(frozen=True)
class InputLimits:
    """What one listing may cost a worker before it is refused: the encoded image's bytes
    (inline or fetched; a fetch reads at most one byte more), the title's characters, and
    the image's width x height, read from its header before any pixel is decoded."""

    max_image_bytes: int = MAX_IMAGE_BYTES
    max_title_chars: int = MAX_TITLE_CHARS
    max_pixels: int = DEFAULT_MAX_PIXELS


class UnsupportedImageError(ValueError):
    """The image bytes are not JPEG, PNG, WebP or GIF."""


@dataclass(frozen=True)
class ListingContext:
    """What a reviewer needs of a listing's input beside its verdict (``violations/`` rows):
    its title, its ``image_uri`` with credentials masked (None when the image is inline), and
    the ``--carry-columns`` values in their order (None when empty)."""

    title: str
    image_uri: str | None = None
    columns: tuple[tuple[str, str | None], ...] = ()

    def get(self, column: str | None) -> str | None:
        return dict(self.columns).get(column) if column else None


@dataclass
class DecodedListing:
    """A listing ready for the model: every array has the same shape for every listing.

    pixels (3, S, S) uint8; ids, mask (L,); attr_mask (A, L); attr_valid, attr_value (A,);
    ``mentions`` are the attributes checked, ``origins[j]`` says where mention j came from
    (``"title"`` or the structured column's name); ``tokens`` are the words encoded.
    """

    listing_id: str
    source: str
    content_hash: str
    pixels: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    attr_mask: np.ndarray
    attr_valid: np.ndarray
    attr_value: np.ndarray
    mentions: list[Mention]
    origins: list[str]
    tokens: list[str] = field(default_factory=list)
    context: ListingContext | None = None


def image_format(data: bytes, fetched: bool = False) -> str:
    """JPEG, PNG, WEBP or GIF from the leading bytes; raises :class:`UnsupportedImageError`,
    quoting the leading bytes of an inline image but never of a ``fetched`` one (what an
    ``image_uri`` returned may be a secret: a local file, a metadata server's answer)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    what = "fetched content not shown" if fetched else f"leading bytes {data[:12].hex()}"
    raise UnsupportedImageError(f"unsupported image format ({what}); expected JPEG, PNG, WebP or GIF")


def image_bytes(raw: RawListing, max_bytes: int = MAX_IMAGE_BYTES, sources: ImageSources = ImageSources()) -> bytes:
    """The listing's image: the ``image`` column, else what ``image_uri`` names, if ``sources``
    allows it (``transforms/sources.py``; the default allows nothing); raises
    :class:`InputTooLargeError` when it is over ``max_bytes``."""
    if raw.image:
        if len(raw.image) > max_bytes:
            raise InputTooLargeError(f"image is {len(raw.image)} bytes, over {max_bytes} bytes")
        return raw.image
    if not raw.image_uri:
        raise ListingError("no image: 'image' and 'image_uri' are both empty")
    try:
        data = sources.fetch(raw.image_uri, max_bytes)
    except SourceOverCapError as exc:
        raise InputTooLargeError(str(exc)) from None
    if len(data) > max_bytes:
        raise InputTooLargeError(f"image at {shown(raw.image_uri)} is over {max_bytes} bytes")
    return data


def content_hash(model_sha256: str, title: str, attributes: Sequence[tuple[str, str]], image: bytes) -> str:
    """sha256 over the length-prefixed model hash, title, sorted attributes and image."""
    h = hashlib.sha256()
    lines = "\n".join(sorted(f"{k}={v}" for k, v in attributes))
    for part in (model_sha256.encode(), title.encode("utf-8"), lines.encode("utf-8"), image):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True)
class ListingDecoder:
    """``RawListing -> DecodedListing`` with the model's text side and input size.

    It carries the vocabulary and lexicon themselves (plain data, a few hundred kB), taken
    from the checkpoint the launcher loaded, so workers need no model files to decode and
    decoding can never disagree with the model that scores.
    """

    encoder: TextEncoder
    image_size: int
    attribute_columns: Mapping[str, str]   # column -> kind
    model_sha256: str
    limits: InputLimits = InputLimits()
    sources: ImageSources = ImageSources()      # where image_uri may point; by default nowhere
    carry_columns: tuple[str, ...] = ()    # read as optional string columns beside the attribute columns

    @classmethod
    def from_matcher(cls, matcher: Matcher, attribute_columns: Mapping[str, str],
                     limits: InputLimits = InputLimits(), sources: ImageSources = ImageSources(),
                     carry_columns: Sequence[str] = ()) -> "ListingDecoder":
        return cls(matcher.text_encoder, matcher.image_size, dict(attribute_columns), matcher.sha256, limits, sources,
                   tuple(carry_columns))

    def image(self, raw: RawListing) -> bytes:
        """The listing's image bytes (:func:`image_bytes` under this decoder's caps and sources)."""
        return image_bytes(raw, self.limits.max_image_bytes, self.sources)

    def context(self, raw: RawListing) -> ListingContext:
        """The listing's :class:`ListingContext`; URL credentials in ``image_uri`` and in the
        carried values (a signed ``product_url``, say) are masked here, before anything is written."""
        values = ((c, raw.attributes.get(c)) for c in self.carry_columns)
        return ListingContext(raw.title or "", redact(raw.image_uri) if raw.image_uri else None,
                              tuple((c, redact(v) if v else v) for c, v in values))

    def column_attributes(self, raw: RawListing) -> list[tuple[str, str, str]]:
        """(column, kind, value) for each structured column whose value the lexicon knows."""
        found = ((c, k, self.encoder.lexicon.canonical(k, raw.attributes.get(c, "")))
                 for c, k in self.attribute_columns.items())
        return [(c, k, v) for c, k, v in found if v is not None]

    def listing_hash(self, raw: RawListing, data: bytes) -> str:
        """``content_hash`` of ``raw`` with image bytes ``data`` (also taken before decoding by
        ``transforms/state.py``, to find listings unchanged since an earlier run)."""
        return content_hash(self.model_sha256, raw.title, [(k, v) for _, k, v in self.column_attributes(raw)], data)

    def __call__(self, raw: RawListing) -> DecodedListing:
        self.check_text(raw)
        data = self.image(raw)
        return self.decode(raw, data)

    def check_text(self, raw: RawListing) -> None:
        """Refuse a row whose id or title cannot be used (before any image is fetched)."""
        if raw.invalid:
            raise ListingError("; ".join(raw.invalid[c] for c in sorted(raw.invalid)))
        if not raw.listing_id:
            raise ListingError("listing_id is empty")
        if not raw.listing_id.strip():
            raise ListingError("listing_id is blank (whitespace only)")
        if raw.title is None or not raw.title.strip():
            raise ListingError("title is empty")
        if len(raw.title) > self.limits.max_title_chars:
            raise InputTooLargeError(f"title is {len(raw.title)} characters, over {self.limits.max_title_chars}")
        if not self.encoder.tokens(raw.title):
            raise ListingError("title has no words (only symbols, emoji, punctuation or invisible characters)")

    def decode(self, raw: RawListing, data: bytes) -> DecodedListing:
        """``raw`` (checked by :meth:`check_text`) with image bytes ``data`` as a :class:`DecodedListing`."""
        image_format(data, fetched=not raw.image)   # refuse formats outside the contract before Pillow opens them
        pixels = to_uint8(data, self.image_size, self.limits.max_pixels)
        columns = self.column_attributes(raw)
        pairs = [(k, v) for _, k, v in columns]
        enc = self.encoder.encode([raw.title], [pairs])
        mentions = enc.mentions[0]
        n_title = len(self.encoder.tokens(raw.title))
        origins = [("title" if m.start < n_title else next(c for c, k, v in columns if (k, v) == (m.kind, m.value)))
                   for m in mentions]
        return DecodedListing(raw.listing_id, raw.source, self.listing_hash(raw, data),
                              pixels, enc.ids[0], enc.mask[0], enc.attr_mask[0], enc.attr_valid[0], enc.attr_value[0],
                              mentions, origins, enc.tokens[0], self.context(raw))


class DecodeListings(beam.PTransform):
    """RawListing -> (DecodedListing, ErrorRecord) PCollections; each row lands in exactly one."""

    def __init__(self, decoder: ListingDecoder):
        super().__init__()
        self._decoder = decoder

    def expand(self, listings: beam.PCollection[RawListing]
               ) -> tuple[beam.PCollection[DecodedListing], beam.PCollection[ErrorRecord]]:
        decoded, failed = listings | "Decode" >> beam.Map(self._decoder).with_exception_handling()
        errors = failed | "DecodeErrors" >> beam.FlatMap(dead_letter_errors, stage="decode")
        return decoded, errors

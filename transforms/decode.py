"""The ``DecodeListings`` stage: validate a row, fetch and decode its image, letterbox it,
tokenize the title and find its attributes, all as fixed-shape arrays per listing.

Rows that cannot be used (no id, no title, no image, an unreadable or unsupported image,
a title or image over its cap in :class:`InputLimits`) raise here and leave as error
records; nothing broken reaches ``RunInference``.

Images at http(s) URLs are fetched concurrently (:class:`FetchingFn`): up to
``--image-fetch-concurrency`` fetches in flight per worker process, in a thread pool, while
the DoFn's own thread decodes each image as its fetch completes (one at a time, so a
worker's decoding memory stays that of one image at the pixel cap). Other listings (inline
bytes, local or ``gs://`` paths) are decoded as they come.

``content_hash`` is the sha256 of, in order and each prefixed by its byte length: the
model's weights sha256, the title (UTF-8), the structured attributes used (``kind=value``
lines, sorted) and the image bytes. Equal hashes mean the model saw the same input.
"""
from __future__ import annotations

import hashlib
import threading
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue
from ecomatch_model.api import Matcher
from ecomatch_model.preprocess import DEFAULT_MAX_PIXELS, to_uint8
from ecomatch_model.text import Mention, TextEncoder

from .errors import ErrorRecord, dead_letter_errors, redact
from .listings import RawListing
from .sources import ImageSources, SourceOverCapError, scheme, shown

MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_FETCH_CONCURRENCY = 16
ERROR_TAG = "errors"     # DecodeListings' output of error records
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


def fetched_over_http(raw: RawListing) -> bool:
    """Whether the listing's image is fetched from an http(s) URL (no inline image): the
    fetches worth overlapping, as a slow image server is what a worker waits on."""
    return not raw.image and bool(raw.image_uri) and scheme(raw.image_uri) in ("http", "https")


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def fetch_pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of ``workers`` fetch threads, shared by every DoFn instance in it:
    a runner may run several bundles at once, and the bound holds for all of them."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="ecomatch-image-fetch")
        return _pools[workers]


def dead_letter(raw: RawListing, exc: BaseException) -> tuple[RawListing, tuple[type, str, list[str]]]:
    """``(raw, (type, repr, traceback))`` for ``exc``, as ``with_exception_handling`` makes
    them, so an error record reads the same whichever thread raised it."""
    return raw, (type(exc), repr(exc), traceback.format_exception(type(exc), exc, exc.__traceback__))


class FetchingFn(beam.DoFn):
    """A DoFn over :class:`RawListing` that fetches http(s) images ``concurrency`` at a time.

    For each listing :meth:`early` may finish it without its image; otherwise the image is
    fetched (``decoder.image``: the allow-list, the caps, the timeouts and retries) and
    :meth:`finish` gets the bytes or the exception. An http(s) fetch runs in the process's
    fetch pool: at most ``concurrency`` of this DoFn's fetches are in flight, and a listing is
    finished, in this thread, once its fetch completes, in whatever order they complete (a
    PCollection has none; waiting for the oldest would hold the rest behind one slow server).
    What is still in flight when the bundle ends is finished in ``finish_bundle``. Other
    listings, and all with ``concurrency`` 1, are fetched and finished as they come.
    """

    def __init__(self, decoder: ListingDecoder, concurrency: int = DEFAULT_FETCH_CONCURRENCY):
        if concurrency < 1:
            raise ValueError(f"the image fetch concurrency must be at least 1, got {concurrency}")
        self._decoder, self._concurrency = decoder, concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[Future, tuple[RawListing, Any, Any]] = {}

    def early(self, raw: RawListing) -> list | None:
        """The outputs of a listing done without its image, or None to fetch it."""
        return None

    def finish(self, raw: RawListing, data: bytes | None, exc: BaseException | None) -> list:
        """The outputs of a listing whose image was fetched (``data``) or failed (``exc``)."""
        raise NotImplementedError

    def setup(self) -> None:
        self._pool = fetch_pool(self._concurrency) if self._concurrency > 1 else None

    def start_bundle(self) -> None:
        self._pending = {}

    def process(self, raw: RawListing, timestamp: Any = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        done = self.early(raw)
        if done is not None:
            yield from done
            return
        if self._pool is None or not fetched_over_http(raw):
            yield from self._fetched(raw, lambda: self._decoder.image(raw))
            return
        while len(self._pending) >= self._concurrency:
            yield from self._complete()
        self._pending[self._pool.submit(self._decoder.image, raw)] = (raw, timestamp, window)

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            yield from self._complete()

    def _fetched(self, raw: RawListing, image: Callable[[], bytes]) -> list:
        try:
            data = image()
        except Exception as exc:  # noqa: BLE001 (each failure is the listing's: finish says what it becomes)
            return self.finish(raw, None, exc)
        return self.finish(raw, data, None)

    def _complete(self) -> Iterator[Any]:
        """Finish the pending listings whose fetch is done (waiting for at least one), each
        output in its own element's window: they may leave in another element's call."""
        wait(list(self._pending), return_when=FIRST_COMPLETED)
        for future in [f for f in self._pending if f.done()]:
            raw, timestamp, window = self._pending.pop(future)
            for out in self._fetched(raw, future.result):
                tag, value = (out.tag, out.value) if isinstance(out, TaggedOutput) else (None, out)
                windowed = WindowedValue(value, timestamp, (window,))
                yield TaggedOutput(tag, windowed) if tag else windowed

    def teardown(self) -> None:
        for future in self._pending:        # a bundle that failed: nothing waits for these any more
            future.cancel()


class _DecodeFn(FetchingFn):
    """``ListingDecoder`` over the listings, each failure an :class:`ErrorRecord` (stage
    ``decode``) in the ``errors`` output, as ``with_exception_handling`` would make it."""

    def _errors(self, raw: RawListing, exc: BaseException) -> list:
        return [TaggedOutput(ERROR_TAG, e) for e in dead_letter_errors(dead_letter(raw, exc), stage="decode")]

    def early(self, raw: RawListing) -> list | None:
        try:
            self._decoder.check_text(raw)      # a row is refused before its image is fetched
        except Exception as exc:  # noqa: BLE001 (an error record)
            return self._errors(raw, exc)
        return None

    def finish(self, raw: RawListing, data: bytes | None, exc: BaseException | None) -> list:
        if exc is not None:
            return self._errors(raw, exc)
        try:
            return [self._decoder.decode(raw, data)]
        except Exception as exc:  # noqa: BLE001 (an error record)
            return self._errors(raw, exc)


class DecodeListings(beam.PTransform):
    """RawListing -> (DecodedListing, ErrorRecord) PCollections; each row lands in exactly one.
    http(s) images are fetched ``concurrency`` at a time per worker process (:class:`FetchingFn`)."""

    def __init__(self, decoder: ListingDecoder, concurrency: int = DEFAULT_FETCH_CONCURRENCY):
        super().__init__()
        self._decoder, self._concurrency = decoder, concurrency

    def expand(self, listings: beam.PCollection[RawListing]
               ) -> tuple[beam.PCollection[DecodedListing], beam.PCollection[ErrorRecord]]:
        out = listings | "Decode" >> beam.ParDo(_DecodeFn(self._decoder, self._concurrency)).with_outputs(
            ERROR_TAG, main="decoded")
        return out.decoded, out[ERROR_TAG]

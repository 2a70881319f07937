"""A hostile-input corpus for the scan, generated in code (no binary is committed).

:func:`hostile_rows` gives one :class:`Case` per listing row that a nightly job over
thousands of sellers meets: broken and hostile images, titles and ids, each with what the
scan must do with it (score it, or report it in ``errors/`` with this error type and a
message containing this text). :func:`write_shards` writes them, with the file-level kinds
(a shard with zero rows, a truncated file, a file that is not Parquet, a wrong column type,
a corrupt data page), as Parquet shards; :data:`BAD_FILES` says what each bad file must do.
The image makers (``png_stream`` and friends) build large images as compressed streams, so
a decompression bomb costs a few kB and milliseconds to make.
"""
from __future__ import annotations

import base64
import io
import os
import socket
import struct
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pipeline_fixtures import Server, image, listings_table, write_table

SECRETS = ("s3cret-password", "s3cret-signature")   # in a seller's image URL; never in a report or log
PASSWD = b"root:x:0:0:root:/root:/bin/bash\n"      # a local file an image_uri names; never quoted, nor in hex
TITLE = "Ardent Men Red Cotton T-Shirt"


@dataclass(frozen=True)
class Case:
    """One hostile listing row: ``kind`` names what is hostile about it; ``error_type`` is
    None when the scan must score the row, else the type it must report, with ``message``
    in the error message."""

    kind: str
    row: dict[str, Any]
    error_type: str | None = None
    message: str = ""


# ---------------------------------------------------------------------------- images
def save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_stream(width: int, height: int, bit_depth: int, colour_type: int, row: bytes, extra: bytes = b"") -> bytes:
    """A PNG of ``height`` copies of one scanline (``row``: its bytes after the filter byte),
    compressed as a stream, so even a huge image is cheap to make; ``extra`` chunks go
    before the image data."""
    z = zlib.compressobj(1)
    line = b"\x00" + row
    data = b"".join(z.compress(line) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def png_bomb(side: int = 8000) -> bytes:
    """A 1-bit ``side`` x ``side`` PNG of zeros: ~8 kB that decode to 64M pixels."""
    return png_stream(side, side, 1, 0, bytes((side + 7) // 8))


def gif_bomb(side: int = 65535) -> bytes:
    """A GIF whose screen and one frame claim ``side`` x ``side`` pixels, with one pixel of data."""
    screen = struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"   # 2-colour table
    frame = b"," + struct.pack("<HHHHB", 0, 0, side, side, 0) + b"\x02\x02\x44\x01\x00"     # LZW: clear, 0, end
    return b"GIF89a" + screen + frame + b";"


def text_bomb_png() -> bytes:
    """A valid 4x4 PNG with a zTXt chunk that inflates to 16 MB."""
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(16_000_000), 9))
    return png_stream(4, 4, 8, 0, bytes(4), extra=bomb)


def animated_gif() -> bytes:
    frames = [Image.new("P", (24, 24), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def png_16bit() -> bytes:
    return save(Image.fromarray(np.linspace(0, 65535, 48 * 64).astype(np.uint16).reshape(48, 64)), "PNG")


def huge_exif_png(size: int = 2_000_000) -> bytes:
    """A PNG with a ``size``-byte EXIF block (a MakerNote) that also says "rotate 90 degrees"."""
    exif = Image.Exif()
    exif[0x0112] = 6                # orientation
    exif[0x927C] = bytes(size)      # MakerNote
    return save(Image.new("RGB", (40, 30), (200, 30, 30)), "PNG", exif=exif.tobytes())


# ---------------------------------------------------------------------------- rows
def corpus_prefixes(tmp: Path, http_base: str, silent_base: str) -> list[str]:
    """The ``--image-uri-prefix`` values the corpus is scanned with: ``tmp``, the image
    server's ``/img/`` and the silent server (each named by its IP literal, 127.0.0.1)."""
    return [f"{tmp}/", f"{http_base}/img/", f"{silent_base}/"]


def hostile_rows(tmp: Path, http_base: str, silent_base: str = "http://127.0.0.1:9") -> list[Case]:
    """The row-level corpus; ``http_base`` is a running :class:`ImageServer`'s URL,
    ``silent_base`` a :class:`SilentServer`'s; scan it with :func:`corpus_prefixes`."""
    jpeg = image("JPEG", size=(60, 80))
    noise_jpeg = save(Image.effect_noise((120, 120), 60).convert("RGB"), "JPEG")
    png = image("PNG", (20, 40, 200))
    row = {"title": TITLE, "image": jpeg}
    secret_uri = f"{http_base.replace('://', f'://seller:{SECRETS[0]}@')}/img/missing.jpg?X-Goog-Signature={SECRETS[1]}&w=1"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, make in (("fifo.jpg", lambda p: os.mkfifo(p)), ("link.jpg", lambda p: p.symlink_to("/etc/passwd")),
                       ("passwd.jpg", lambda p: p.write_bytes(PASSWD))):
        if not os.path.lexists(tmp / name):
            make(tmp / name)
    refused = "ImageSourceRefusedError"
    outside = "outside the allowed prefixes"
    port = http_base.rsplit(":", 1)[1]
    uris = [  # image_uri cases: nothing outside the allow-list is read, nothing hangs
        Case("image-uri-etc-passwd", {"image_uri": "/etc/passwd"}, refused, outside),
        Case("image-uri-proc-environ", {"image_uri": "/proc/self/environ"}, refused, outside),
        Case("image-uri-dot-dot", {"image_uri": "../../../../../../etc/passwd"}, refused, outside),
        Case("image-uri-symlink-out", {"image_uri": str(tmp / "link.jpg")}, refused, outside),
        Case("image-uri-file-url", {"image_uri": "file:///etc/passwd"}, refused, outside),
        Case("image-uri-data-url", {"image_uri": "data:image/png;base64," + base64.b64encode(png).decode()},
             refused, outside),
        Case("image-uri-loopback-outside", {"image_uri": f"{http_base}/secret.txt"}, refused, outside),
        Case("image-uri-localhost", {"image_uri": f"http://localhost:{port}/img/shirt.png"}, refused, outside),
        Case("image-uri-metadata-server", {"image_uri": "http://169.254.169.254/computeMetadata/v1/"}, refused,
             outside),
        Case("image-uri-fifo", {"image_uri": str(tmp / "fifo.jpg")}, refused, "a FIFO, not a regular file"),
        Case("image-uri-directory", {"image_uri": str(tmp)}, refused, "a directory, not a regular file"),
        Case("image-uri-not-an-image", {"image_uri": str(tmp / "passwd.jpg")}, "UnsupportedImageError",
             "fetched content not shown"),
        Case("image-uri-never-answers", {"image_uri": f"{silent_base}/img/x.png"}, "ImageFetchTimeoutError",
             "(timeout)"),
    ]
    images = [
        Case("truncated-jpeg", {"image": noise_jpeg[: len(noise_jpeg) // 2]}, "ImageDecodeError",
             "image file is truncated"),
        Case("truncated-jpeg-header", {"image": jpeg[:300]}, "ImageDecodeError", "Truncated File Read"),
        Case("truncated-png", {"image": png[:-30]}, "ImageDecodeError", "cannot decode image"),
        Case("random-bytes", {"image": np.random.default_rng(0).bytes(4096)}, "UnsupportedImageError",
             "unsupported image format"),
        Case("html-error-page", {"image": b"<!doctype html><title>404</title>"}, "UnsupportedImageError",
             "leading bytes 3c21646f63747970"),
        Case("empty-image", {"image": b""}, "ListingError", "no image"),
        Case("no-image", {"image": None}, "ListingError", "no image"),
        Case("png-bomb", {"image": png_bomb()}, "ImageTooLargeError", "8000x8000 pixels, over the cap of 40000000"),
        Case("gif-bomb", {"image": gif_bomb()}, "ImageTooLargeError", "decompression bomb refused before decoding"),
        Case("png-text-bomb", {"image": text_bomb_png()}, "ImageDecodeError", "MAX_TEXT_CHUNK"),
        Case("one-pixel", {"image": image("PNG", size=(1, 1))}),
        Case("wide-20000x20", {"image": image("JPEG", (0, 0, 255), size=(20000, 20))}),
        Case("cmyk-jpeg", {"image": save(Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "JPEG")}),
        Case("png-16bit", {"image": png_16bit()}),
        Case("animated-gif", {"image": animated_gif()}),
        Case("webp", {"image": image("WEBP")}),
        Case("huge-exif", {"image": huge_exif_png()}),
        Case("image-uri-over-http", {"image": None, "image_uri": f"{http_base}/img/shirt.png"}),
        Case("missing-image-uri", {"image": None, "image_uri": str(tmp / "no-such-image.jpg")}, "FileNotFoundError",
             "no-such-image.jpg"),
        Case("image-uri-with-credentials", {"image": None, "image_uri": secret_uri}, "FileNotFoundError",
             "://***@127.0.0.1"),
    ]
    titles = [
        Case("empty-title", {"title": ""}, "ListingError", "title is empty"),
        Case("no-title", {"title": None}, "ListingError", "title is empty"),
        Case("title-1mb", {"title": "Red Shirt " * 104_858}, "InputTooLargeError",
             "title is 1048580 characters, over 4096"),
        Case("title-control-chars", {"title": "Ardent\x00Men\x1b[31m Red\x07 Cotton\r\nT-Shirt\x7f\u200b"}),
        Case("title-right-to-left", {"title": "\u202eKestrel Women Red Dress \u05e9\u05de\u05dc\u05d4 "
                                              "\u0641\u0633\u062a\u0627\u0646\u202c"}),
        Case("title-emoji", {"title": "\U0001f525 Ardent Men Red Cotton T-Shirt \U0001f455\u2728 "
                                      "\U0001f1ee\U0001f1f3"}),
        *(Case(kind, {"title": title}, "ListingError", "title has no words")
          for kind, title in (("title-emoji-only", "\U0001f525\U0001f455\u2728 \U0001f1ee\U0001f1f3"),
                              ("title-zero-width-only", "\u200b\u200c\u200d\ufeff\u2060"),
                              ("title-punctuation-only", "!!! ... --- ??? ***"))),
    ]
    uris = [Case(c.kind, {"image": None, **c.row}, c.error_type, c.message) for c in uris]
    cases = [Case(c.kind, {"listing_id": c.kind, **row, **c.row}, c.error_type, c.message)
             for c in images + uris + titles]
    ids = [Case("null-listing-id", {**row, "listing_id": None}, "ListingError", "listing_id is empty"),
           Case("blank-listing-id", {**row, "listing_id": " \t\u3000 "}, "ListingError", "listing_id is blank"),
           *(Case("path-in-listing-id", {**row, "listing_id": lid})
             for lid in ("../../escape", "/tmp/escape", "nested\\..\\escape", "ctl\x00\x1b escape")),
           *(Case("duplicate-listing-id", {**row, "listing_id": "dup", "image": image(size=(30 + k, 40))})
             for k in range(3)),
           Case("duplicate-listing-id-one-bad", {**row, "listing_id": "dup-mixed"}),
           Case("duplicate-listing-id-one-bad", {**row, "listing_id": "dup-mixed", "image": jpeg[:300]},
                "ImageDecodeError", "Truncated File Read")]
    return cases + ids


# ---------------------------------------------------------------------------- files
BAD_FILES = {   # file name -> (error type, message) when scanned; the corrupt page is in its second row group
    "truncated.parquet": ("InputSchemaError", "not a readable Parquet file"),
    "not-parquet.parquet": ("InputSchemaError", "not a readable Parquet file"),
    "wrong-image-type.parquet": ("InputSchemaError", "column 'image' has type string, expected binary"),
    "corrupt-page.parquet": ("UnreadableInputError", "row group 2 of 2 (2 rows) cannot be read"),
}


def corrupt_page(table: pa.Table, path: Path) -> str:
    """Write ``table`` in two row groups, then smash the first page header of the second
    group's ``listing_id`` column: the footer and the first group stay readable. Returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=-(-table.num_rows // 2))
    chunk = pq.read_metadata(path).row_group(1).column(table.schema.get_field_index("listing_id"))
    offset = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return str(path)


def write_shards(root: Path, cases: list[Case], good: pa.Table) -> list[Case]:
    """Write the corpus under ``root``: ``rows/`` holds the hostile rows (two shards, small
    row groups), a shard with zero rows and the corrupt-page shard (built from the first
    four rows of ``good``, whose first two stay readable); ``bad/`` holds the other bad
    files. Returns the cases of the rows the readable row groups hold, ``good``'s included."""
    half = len(cases) // 2
    for k, part in enumerate((cases[:half], cases[half:])):
        path = root / "rows" / f"hostile-{k}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(listings_table([c.row for c in part]), path, row_group_size=4)
    write_table(root / "rows" / "zero-rows.parquet", listings_table([]))
    corrupt_page(good.slice(0, 4), root / "rows" / "corrupt-page.parquet")
    truncated = Path(write_table(root / "bad" / "truncated.parquet", listings_table([cases[0].row])))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    (root / "bad" / "not-parquet.parquet").write_bytes(b"<!doctype html><title>503</title>")
    write_table(root / "bad" / "wrong-image-type.parquet",
                pa.table({"listing_id": ["w"], "title": [TITLE], "image": ["not bytes"]}))
    return cases + [Case("good", r) for r in good.slice(0, 2).to_pylist()]


# ---------------------------------------------------------------------------- a loopback image server
class ImageServer(Server):
    """An HTTP server on 127.0.0.1 for ``image_uri`` cases: ``GET /img/...`` serves ``body``
    (but ``/img/missing...``), anything else is 404."""

    def __init__(self, body: bytes):
        self.body = body
        super().__init__(self._route)

    def _route(self, h: BaseHTTPRequestHandler) -> None:
        if not h.path.startswith("/img/") or "missing" in h.path:
            h.send_error(404)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(self.body)))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(self.body)


class SilentServer:
    """A socket on 127.0.0.1 that accepts connections (in the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sock.close()

"""Shared helpers and fixtures for the pipeline tests: small listing shards, a saved tiny
model, TestPipelines on Beam's in-process FnApiRunner, an HTTP server in the test's process
and a real local GCS server (gcp-storage-emulator on 127.0.0.1). Nothing is downloaded and
nothing leaves loopback."""
from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import fsspec
import gcsfs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from PIL import Image

from ecomatch_model.api import Matcher
from ecomatch_model.checkpoint import Checkpoint, save

ATTRS = {"base_colour": "colour", "article_type": "article_type"}

LISTING_SCHEMA = pa.schema([
    ("listing_id", pa.string()), ("title", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()),
    ("base_colour", pa.string()), ("article_type", pa.string()),
])


def fn_api_pipeline() -> TestPipeline:
    """A TestPipeline on the in-process FnApiRunner."""
    return TestPipeline(runner=FnApiRunner())


def image(fmt: str = "JPEG", colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def listings_table(rows: Sequence[dict[str, Any]], schema: pa.Schema = LISTING_SCHEMA) -> pa.Table:
    """Rows (missing keys are null) as a table of ``schema``."""
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def write_table(path: Path, table: pa.Table) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def mixed_rows(tmp: Path) -> list[dict[str, Any]]:
    """Six listings: three good (inline JPEG, PNG via image_uri, WebP) and three bad."""
    png = tmp / "images" / "b.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(image("PNG", (20, 40, 200)))
    return [
        {"listing_id": "a", "title": "Ardent Men Red Cotton T-Shirt", "image": image(), "base_colour": "Red"},
        {"listing_id": "b", "title": "Kestrel Women Navy Blue Dress", "image_uri": str(png), "article_type": "Dresses"},
        {"listing_id": "c", "title": "Kestrel Women Dress", "image": image("WEBP"), "base_colour": "Navy Blue"},
        {"listing_id": "d", "title": "Broken Image Shirt", "image": b"\xff\xd8\xff not really a jpeg"},
        {"listing_id": "e", "title": "Bitmap Shirt", "image": image("BMP")},
        {"listing_id": None, "title": "No Id Shirt", "image": image()},
    ]


# Fixtures are named apart from their functions, so that a test module imports
# ``matcher_fixture`` and its tests take ``matcher`` without shadowing the import.
@pytest.fixture(name="matcher")
def matcher_fixture(tiny_ckpt: Checkpoint) -> Matcher:
    """A Matcher on the conftest's tiny checkpoint, on the CPU."""
    return Matcher(tiny_ckpt, "tiny", device="cpu")


@pytest.fixture(name="model_dir")
def model_dir_fixture(tiny_ckpt: Checkpoint, tmp_path: Path) -> str:
    """The tiny checkpoint saved as a model directory."""
    path = tmp_path / "model"
    save(tiny_ckpt, str(path))
    return str(path)


class Server:
    """A loopback HTTP server whose GET (and HEAD) handler is ``route(handler)``; counts requests."""

    def __init__(self, route: Callable[[BaseHTTPRequestHandler], None]):
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                route(self)

            do_HEAD = do_GET         # the route tells the two apart by ``command``

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.port = self._http.server_port
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()


def send(body: bytes, status: int = 200, headers: dict[str, str] | None = None):
    """A route that answers ``status`` with ``headers`` and ``body``."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
    return route


BUCKET = "ecomatch-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(command: Callable[[int], list[str]], what: str, timeout: float) -> Iterator[int]:
    """Start ``command(port)`` on a free loopback port, wait until it accepts connections
    (at most ``timeout`` seconds) and yield the port; the process is ended afterwards."""
    port = _free_port()
    proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """A gcp-storage-emulator process on 127.0.0.1 with an empty bucket; yields its URL."""
    with local_server(lambda port: [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                                    f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
                      "gcp-storage-emulator", 30) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture()
def gcs(emulator: str, monkeypatch) -> gcsfs.GCSFileSystem:
    """Point the scan at the emulator the documented way, ``STORAGE_EMULATOR_HOST`` alone
    (the scan then makes every gs:// client anonymous: transforms/storage.py); returns a gcsfs
    client of the emulator for the test's own reads and writes."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setitem(fsspec.config.conf, "gs", {})      # what the scan adds there is undone afterwards
    return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)

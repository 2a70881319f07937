"""Where an ``image_uri`` may point (``transforms/sources.py``): the allow-list, local special
files, data: and file: URLs, non-public addresses, one DNS lookup per hop, redirect hops,
timeouts and deadlines, and fetched bytes never quoted. Every HTTP server here is one the
test starts on 127.0.0.1."""
from __future__ import annotations

import ipaddress
import os
import socket
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest
from pipeline_fixtures import Server, image, send
from pipeline_fixtures import matcher_fixture  # noqa: F401 (fixtures)

import transforms.sources as sources
from transforms.decode import ListingDecoder, UnsupportedImageError
from transforms.listings import RawListing
from transforms.sources import (FetchLimits, ImageFetchTimeoutError, ImageSourceRefusedError, ImageSources,
                                input_prefix, public_address)

PNG = image("PNG")
FAST = FetchLimits(connect_timeout=1.0, read_timeout=1.0, deadline=2.0)


@pytest.fixture()
def png_server() -> Iterator[Server]:
    with Server(send(PNG)) as s:
        yield s


# ---------------------------------------------------------------------------- the allow-list
def test_the_default_allows_the_inputs_bucket_or_folder_only(tmp_path: Path):
    assert input_prefix("gs://catalogue/listings/2026-*/part-*.parquet") == "gs://catalogue/"
    assert input_prefix(str(tmp_path / "in" / "*.parquet")) == f"{tmp_path}/in/"
    assert input_prefix(str(tmp_path / "in" / "a.parquet")) == f"{tmp_path}/in/"
    gcs = ImageSources.for_scan("gs://catalogue/listings/*.parquet")
    gcs.check("gs://catalogue/images/a.jpg")
    for uri in ("gs://catalogue-evil/a.jpg", "gs://other/a.jpg", "s3://catalogue/a.jpg", "/etc/passwd",
                "gs://catalogue/images/../../other/a.jpg", "gs://catalogue/a/%2e%2e/b.jpg",
                "gs://catalogue/a/%2E%2e%2Fb.jpg", "gs://catalogue/a\\..\\b.jpg",
                "simplecache::gs://catalogue/a.jpg"):
        with pytest.raises(ImageSourceRefusedError):
            gcs.check(uri)


def hostile_local(tmp_path: Path) -> tuple[ImageSources, list[str]]:
    """A local input's default allow-list and URIs that must all be refused (a FIFO and a
    directory inside the folder among them, and a symlink out of it)."""
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dir.jpg").mkdir()
    (folder / "link.jpg").symlink_to("/etc/passwd")
    (tmp_path / "outside.jpg").write_bytes(PNG)
    return ImageSources.for_scan(str(folder / "*.parquet")), [
        "/etc/passwd", "/proc/self/environ", "/dev/zero", "/dev/stdin", str(folder / ".." / "outside.jpg"),
        "../../etc/passwd", str(folder / "link.jpg"), str(folder / "fifo.jpg"), str(folder / "dir.jpg"),
        "file:///etc/passwd", f"file://{folder}/ok.jpg", "data:image/png;base64,iVBORw0KGgo=",
        "http://127.0.0.1:9/x.jpg", "http://169.254.169.254/computeMetadata/v1/", f"blockcache::{folder}/ok.jpg"]


def test_local_special_files_and_urls_outside_the_allow_list_are_refused(tmp_path: Path):
    allowed, refused = hostile_local(tmp_path)
    (tmp_path / "in" / "ok.jpg").write_bytes(PNG)
    assert allowed.fetch(str(tmp_path / "in" / "ok.jpg"), 1 << 20) == PNG
    started = time.monotonic()
    for uri in refused:
        with pytest.raises(ImageSourceRefusedError):
            allowed.fetch(uri, 1 << 20)
    assert time.monotonic() - started < 5           # the FIFO did not block
    # Allowed explicitly, data: and file: URLs are read; system files never are.
    explicit = ImageSources.for_scan("x", ["data:", f"file://{tmp_path}/in/", "/"])
    assert explicit.fetch("data:image/png;base64,iVBORw0KGgo=", 100) == b"\x89PNG\r\n\x1a\n"
    assert explicit.fetch(f"file://{tmp_path}/in/ok.jpg", 1 << 20) == PNG
    for uri in ("/proc/self/environ", "/dev/zero", "/sys/kernel/notes"):
        with pytest.raises(ImageSourceRefusedError):
            explicit.fetch(uri, 100)


def test_a_prefix_matches_at_a_boundary_only():
    s = ImageSources.for_scan("x", ["https://cdn.example.com", "gs://imgs/shop1"])
    for ok in ("https://cdn.example.com/a.jpg", "https://CDN.example.com:443/a.jpg", "gs://imgs/shop1/a.jpg"):
        assert s.check(ok)
    for bad in ("https://cdn.example.com.evil.org/a.jpg", "https://cdn.example.com:8443/a.jpg",
                "http://cdn.example.com/a.jpg", "gs://imgs/shop10/a.jpg", "https://evil.org/?https://cdn.example.com/"):
        with pytest.raises(ImageSourceRefusedError):
            s.check(bad)


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("127.9.9.9", False),
    ("0.0.0.0", False), ("::", False), ("::1", False), ("169.254.169.254", False), ("fe80::1", False),
    ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("100.64.0.1", False),
    ("100.127.255.254", False), ("224.0.0.1", False), ("239.255.255.250", False), ("ff02::1", False),
    ("240.0.0.1", False), ("255.255.255.255", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:169.254.169.254", False), ("::ffff:8.8.8.8", True), ("192.0.2.1", False),
])
def test_public_address(address: str, public: bool):
    assert public_address(ipaddress.ip_address(address)) is public


# ---------------------------------------------------------------------------- http(s)
def test_a_loopback_server_is_fetched_only_when_an_explicit_prefix_names_its_address(png_server: Server):
    assert ImageSources.for_scan("x", [png_server.url + "/"], FAST).fetch(png_server.url + "/a.png", 1 << 20) == PNG
    # A host name that resolves to loopback, 0.0.0.0 and the decimal form of 127.0.0.1 are refused,
    # even under an explicit prefix: only an IP literal in the prefix admits a non-public address.
    for host in ("localhost", "0.0.0.0", "2130706433"):
        url = f"http://{host}:{png_server.port}/a.png"
        with pytest.raises(ImageSourceRefusedError, match="non-public address"):
            ImageSources.for_scan("x", [f"http://{host}:{png_server.port}/"], FAST).fetch(url, 1 << 20)
    assert len(png_server.requests) == 1


def test_every_redirect_hop_is_checked(png_server: Server):
    targets = {"/to-metadata": "http://169.254.169.254/computeMetadata/v1/",
               "/to-other-port": f"http://127.0.0.1:{png_server.port + 1}/a.png",
               "/to-file": "file:///etc/passwd",
               "/to-image": f"{png_server.url}/img/a.png"}

    def route(h: BaseHTTPRequestHandler) -> None:
        if h.path in targets:
            send(b"", 302, {"Location": targets[h.path]})(h)
        else:
            send(PNG)(h)
    with Server(route) as redirector:
        allowed = ImageSources.for_scan("x", [redirector.url + "/", png_server.url + "/img/"], FAST)
        assert allowed.fetch(redirector.url + "/to-image", 1 << 20) == PNG
        for path in ("/to-metadata", "/to-other-port", "/to-file"):
            with pytest.raises(ImageSourceRefusedError):
                allowed.fetch(redirector.url + path, 1 << 20)
    assert png_server.requests == ["/img/a.png"]


def test_the_host_is_resolved_once_and_the_checked_address_is_the_one_connected(png_server: Server, monkeypatch):
    """DNS rebinding: the first answer passes the check (here 127.0.0.1 counts as public),
    later answers would point elsewhere; there is one lookup, and the connection goes to the
    address that was checked."""
    lookups, connects = [], []
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    real_connect, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "images.test":           # the connection's own lookup of an address literal
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    def create_connection(address, *args, **kwargs):
        connects.append(address)
        return real_connect(address, *args, **kwargs)
    monkeypatch.setattr(sources.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(sources.socket, "create_connection", create_connection)
    monkeypatch.setattr(sources, "public_address", lambda ip: str(ip) == "127.0.0.1")
    url = f"http://images.test:{png_server.port}/a.png"
    assert ImageSources.for_scan("x", [f"http://images.test:{png_server.port}/"], FAST).fetch(url, 1 << 20) == PNG
    assert (lookups, connects) == (["images.test"], [("127.0.0.1", png_server.port)])


def test_fetched_bytes_are_never_quoted(matcher, tmp_path: Path):
    secret = b"root:x:0:0:SECRET-TOKEN:/root:/bin/bash\n"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "passwd.jpg").write_bytes(secret)
    with Server(send(secret)) as server:
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=ImageSources.for_scan(
            str(tmp_path / "in" / "*.parquet"), [server.url + "/", f"{tmp_path}/in/"], FAST))
        for uri in (str(tmp_path / "in" / "passwd.jpg"), server.url + "/passwd"):
            with pytest.raises(UnsupportedImageError) as err:
                decoder(RawListing("s", "1", "Red Shirt", None, uri))
            assert secret[:12].hex() not in str(err.value) and "SECRET" not in str(err.value)
            assert "fetched content not shown" in str(err.value)


# ---------------------------------------------------------------------------- timeouts
def silent_server() -> tuple[socket.socket, str]:
    """A socket on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_that_never_answers_times_out():
    sock, url = silent_server()
    try:
        started = time.monotonic()
        with pytest.raises(ImageFetchTimeoutError, match="timeout"):
            ImageSources.for_scan("x", [url + "/"], FAST).fetch(url + "/a.png", 1 << 20)
        assert time.monotonic() - started < FAST.deadline + 1
    finally:
        sock.close()


def test_a_trickling_server_is_cut_at_the_listings_deadline():
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            for _ in range(100):            # one byte every 0.5 s: each read is within the read timeout
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass
    with Server(trickle) as server:
        started = time.monotonic()
        with pytest.raises(ImageFetchTimeoutError, match="deadline"):
            ImageSources.for_scan("x", [server.url + "/"], FAST).fetch(server.url + "/a.png", 1 << 20)
        assert time.monotonic() - started < FAST.deadline + 1


def test_a_filesystem_that_hangs_times_out(monkeypatch):
    monkeypatch.setattr(sources, "_read_fsspec", lambda uri, n: time.sleep(30))
    started = time.monotonic()
    with pytest.raises(ImageFetchTimeoutError, match="timeout"):
        ImageSources.for_scan("gs://b/x/*.parquet", limits=FAST).fetch("gs://b/a.png", 100)
    assert time.monotonic() - started < FAST.deadline + 1

"""Where a listing's ``image_uri`` may point, and fetching it within a deadline.

An ``image_uri`` comes from a seller, so it is checked before anything is opened:

- it must lie under an allowed prefix: one given with ``--image-uri-prefix`` (repeatable), or
  by default the input's own bucket (``gs://bucket/`` for ``gs://bucket/listings/*.parquet``)
  or, for a local input, its folder (the directory before the first wildcard). A prefix
  matches at a boundary only: ``gs://imgs`` admits ``gs://imgs/a.jpg``, not ``gs://imgs-evil/``;
- local paths (and ``file:`` URLs, which need a ``file:`` prefix of their own) are resolved
  (symlinks and ``..``) before the check; ``/proc``, ``/sys`` and ``/dev`` are refused
  whatever the prefixes, and so is anything but a regular file (a FIFO, a directory), found
  on the opened descriptor, never by a second look at the path;
- ``data:`` URLs only under an allowed ``data:`` prefix; fsspec's chained URLs (``a::b``) and
  URIs with ``.``/``..`` segments never;
- for ``http(s)``, the host is resolved once and every address must be public (not loopback,
  unspecified, link-local such as the metadata server 169.254.169.254, private, carrier-grade
  NAT, multicast or reserved; an IPv4-mapped IPv6 address is judged as its IPv4 address).
  The connection goes to the address that was checked (no second lookup, so DNS rebinding
  cannot redirect it), and every redirect hop is checked the same way. A non-public address
  is fetched only when an explicit prefix names it as an IP literal
  (``--image-uri-prefix http://10.0.0.5/images/``; never 0.0.0.0, ``::`` or a multicast
  address); a host name in a prefix must resolve to public addresses.

Every fetch has a connect timeout, a read timeout per socket read and a deadline for the
whole listing (all redirect hops and retries; for other fsspec filesystems, the whole read in a
helper thread); past it the listing is an :class:`ImageFetchTimeoutError`. An http(s) answer of
429 or 5xx, or a connection reset, is tried again (:attr:`FetchLimits.attempts` in all, with
exponential backoff and jitter, or after the seconds a ``Retry-After`` asks) while the deadline
leaves time for it; nothing else is retried: not another 4xx, nor an image over the byte cap,
a refused URI or content that is no image. Messages name the URI
(masked by ``transforms.errors.redact`` on the way to ``errors/``) and never quote what was
fetched.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import fsspec

T = TypeVar("T")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")
_DOT_SEGMENT = re.compile(r"(^|/|%2f|%5c)(\.|%2e){1,2}(/|%2f|%5c|$)", re.I)     # also percent-encoded
_REDIRECTS = (301, 302, 303, 307, 308)


class ImageSourceRefusedError(ValueError):
    """An ``image_uri`` is outside the allowed prefixes, or names something that must not be read."""


class ImageFetchTimeoutError(TimeoutError):
    """Fetching an ``image_uri`` took longer than a timeout or the listing's deadline."""


class SourceOverCapError(ValueError):
    """What ``image_uri`` names is over the byte cap (its Content-Length, a data: URL's length)."""


class ImageFetchError(OSError):
    """An ``image_uri`` answered, but not with an image (an HTTP status other than 200), or
    the connection broke; ``retryable`` when trying again may help (a connection reset)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class FetchLimits:
    """Seconds: to connect, per socket read, and for the whole fetch of one listing; and the
    retries of an http(s) URL that answers 429 or 5xx or resets the connection: ``attempts``
    in all, the n-th retry after ``backoff * 2**(n-1)`` seconds (plus up to a tenth more, so
    that workers throttled together do not return together) or a ``Retry-After`` of seconds."""

    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    deadline: float = 60.0
    max_redirects: int = 5
    attempts: int = 4
    backoff: float = 0.5

    @classmethod
    def within(cls, deadline: float) -> "FetchLimits":
        """The default limits with the listing's ``deadline``; no timeout is longer than it."""
        return cls(min(cls.connect_timeout, deadline), min(cls.read_timeout, deadline), deadline)


def retryable_status(status: int) -> bool:
    """An HTTP status worth asking again: too many requests, or a server error."""
    return status == 429 or 500 <= status <= 599


def retry_delay(retry: int, retry_after: str | None, limits: FetchLimits) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first): what a ``Retry-After``
    of whole seconds asks (its other form, a date, is ignored), else the backoff with jitter."""
    if retry_after and retry_after.strip().isdigit():
        return float(retry_after.strip())
    base = limits.backoff * 2 ** (retry - 1)
    return base + random.uniform(0.0, base / 10)


def scheme(uri: str) -> str:
    """The lower-cased URI scheme, "" for a plain path."""
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else ""       # "C:" is no scheme


def shown(uri: str) -> str:
    """``uri`` as messages name it: a ``data:`` URL by its media type and length only."""
    if scheme(uri) == "data":
        return f"{uri[:uri.find(',') if 0 <= uri.find(',') < 64 else 40]},... ({len(uri)} characters)"
    return uri


def _local(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))       # "~" stays literal: a seller's path is not a shell word


def _file_url_path(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ImageSourceRefusedError(f"image_uri {uri} names a remote host in a file: URL")
    return urllib.parse.unquote(parts.path)


def _http_key(uri: str) -> tuple[str, str]:
    """(``scheme://host:port``, path and query) of an http(s) URL, for prefix matching."""
    parts = urllib.parse.urlsplit(uri)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    origin = f"{parts.scheme.lower()}://{host}:{port}"
    return origin, parts.path + (f"?{parts.query}" if parts.query else "")


def _under(text: str, prefix: str) -> bool:
    """``text`` starts with ``prefix`` at a boundary (the prefix ends in / or :, or /?# follows)."""
    if not prefix or not text.startswith(prefix):
        return False
    return text == prefix or prefix[-1] in "/:" or text[len(prefix)] in "/?#"


def _http_under(url: str, prefix: str) -> bool:
    """An http(s) ``url`` under an http(s) ``prefix``: same scheme, host and port, path under."""
    (origin, path), (p_origin, p_path) = _http_key(url), _http_key(prefix)
    return origin == p_origin and (p_path in ("", "/") or _under(path, p_path))


def normalize_prefix(prefix: str) -> str:
    """A prefix as matched: local paths resolved; raises ValueError for an unusable one."""
    prefix = prefix.strip()
    kind = scheme(prefix)
    if not prefix or "::" in prefix:
        raise ValueError(f"{prefix!r} is not a usable prefix (empty, or a chained URL)")
    if kind == "":
        return _local(prefix) + ("/" if prefix.endswith("/") else "")
    if kind == "file":
        return "file:" + _local(_file_url_path(prefix)) + ("/" if prefix.endswith("/") else "")
    if kind in ("http", "https"):
        parts = urllib.parse.urlsplit(prefix)
        if not parts.hostname:
            raise ValueError(f"{prefix!r} has no host")
        return prefix
    if kind != "data" and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]+", prefix):
        raise ValueError(f"{prefix!r} has no bucket or host")
    return prefix


def input_prefix(pattern: str) -> str:
    """The default allowed prefix of an input pattern: its bucket, or a local input's folder."""
    kind = scheme(pattern)
    if kind and kind != "file":
        parts = urllib.parse.urlsplit(pattern)
        return f"{parts.scheme}://{parts.netloc}/"
    path = _file_url_path(pattern) if kind == "file" else pattern
    fixed = re.split(r"[*?\[]", path, maxsplit=1)[0]
    folder = fixed if fixed.endswith("/") and len(re.split(r"[*?\[]", path)) > 1 else os.path.dirname(fixed)
    return _local(folder or ".") + "/"


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is a public unicast address (an IPv4-mapped IPv6 one judged as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local
                                 or ip.is_private or ip.is_unspecified)


def _within(seconds: float, fn: Callable[[], T], what: str) -> T:
    """``fn()`` in a daemon thread, or :class:`ImageFetchTimeoutError` after ``seconds`` (a call
    that cannot be interrupted, such as a DNS lookup or a filesystem client, is left behind)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = exc
    worker = threading.Thread(target=target, daemon=True, name="ecomatch-fetch")
    worker.start()
    worker.join(max(seconds, 0.0))
    if worker.is_alive():
        raise ImageFetchTimeoutError(f"{what}: no answer within {seconds:.0f} s (timeout)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass(frozen=True)
class ImageSources:
    """The allow-list of ``image_uri`` prefixes and the fetch limits; ``fetch`` reads one.

    ``explicit`` are the prefixes given by the operator, ``default`` the input's own bucket or
    folder (both as :func:`normalize_prefix` returns them). With neither, nothing is fetched.
    """

    explicit: tuple[str, ...] = ()
    default: tuple[str, ...] = ()
    limits: FetchLimits = FetchLimits()

    @classmethod
    def for_scan(cls, input_pattern: str, prefixes: Sequence[str] = (), limits: FetchLimits = FetchLimits()
                 ) -> "ImageSources":
        """The allow-list of a scan: ``prefixes`` if given, else the input's bucket or folder."""
        explicit = tuple(normalize_prefix(p) for p in prefixes)
        return cls(explicit, () if explicit else (input_prefix(input_pattern),), limits)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.explicit + self.default

    # ------------------------------------------------------------------ matching
    def _match(self, uri: str) -> str | None:
        """The allowed prefix ``uri`` lies under (the explicit ones first), or None."""
        kind = scheme(uri)
        for prefix in self.prefixes:
            pk = scheme(prefix)
            if kind in ("http", "https"):
                hit = pk in ("http", "https") and _http_under(uri, prefix)
            elif kind == "":
                hit = pk == "" and _under(_local(uri), prefix.rstrip("/") or "/")
            elif kind == "file":
                hit = pk == "file" and _under("file:" + _local(_file_url_path(uri)), prefix.rstrip("/"))
            else:
                hit = kind == pk and _under(uri, prefix)
            if hit:
                return prefix
        return None

    def check(self, uri: str) -> str:
        """The prefix that admits ``uri``; raises :class:`ImageSourceRefusedError` when none does."""
        if "::" in uri:
            raise ImageSourceRefusedError(f"image_uri {shown(uri)} is a chained URL; refused")
        kind = scheme(uri)
        if kind not in ("", "file", "data"):
            path = urllib.parse.urlsplit(uri).path
            if _DOT_SEGMENT.search(path) or "\\" in path:
                raise ImageSourceRefusedError(f"image_uri {uri} has a '.' or '..' segment; refused")
        prefix = self._match(uri)
        if prefix is None:
            allowed = ", ".join(self.prefixes) or "none"
            raise ImageSourceRefusedError(f"image_uri {shown(uri)} is outside the allowed prefixes ({allowed}); "
                                          "see --image-uri-prefix")
        return prefix

    # ------------------------------------------------------------------ fetching
    def fetch(self, uri: str, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes of the image at ``uri``, after :meth:`check`."""
        prefix = self.check(uri)
        kind = scheme(uri)
        if kind == "":
            return _read_local(_local(uri), prefix, max_bytes)
        if kind == "file":
            return _read_local(_local(_file_url_path(uri)), prefix[len("file:"):], max_bytes)
        if kind == "data":
            return _read_data(uri, max_bytes)
        if kind in ("http", "https"):
            return self._fetch_http(uri, max_bytes)
        return _within(self.limits.deadline, lambda: _read_fsspec(uri, max_bytes), f"image at {uri}")

    def _addresses(self, url: str, deadline: float) -> list[str]:
        """The checked addresses of ``url``'s host: resolved once, every one public unless an
        explicit prefix names this host as an IP literal."""
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            ips = [literal]
        else:
            infos = _within(min(self.limits.connect_timeout, deadline - time.monotonic()),
                            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                            f"resolving the host of {url}")
            ips = list(dict.fromkeys(ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos))
        named = literal is not None and any(
            scheme(p) in ("http", "https") and urllib.parse.urlsplit(p).hostname == host and _http_under(url, p)
            for p in self.explicit)
        bad = [str(ip) for ip in ips if not public_address(ip)]
        if bad and (not named or literal.is_unspecified or literal.is_multicast):     # 0.0.0.0 is this host
            raise ImageSourceRefusedError(f"image_uri {url}: host resolves to a non-public address "
                                          f"({', '.join(bad)}); refused")
        return [str(ip) for ip in ips]

    def _fetch_http(self, uri: str, max_bytes: int) -> bytes:
        deadline = time.monotonic() + self.limits.deadline
        url, auth_origin = uri, _http_key(uri)[0]
        for _ in range(self.limits.max_redirects + 1):
            self.check(url)
            address = self._addresses(url, deadline)[0]
            status, location, data = self._get(url, address, deadline, max_bytes,
                                               send_auth=_http_key(url)[0] == auth_origin)
            if status in _REDIRECTS and location:
                nxt = urllib.parse.urljoin(url, location)
                if scheme(nxt) not in ("http", "https"):
                    raise ImageSourceRefusedError(f"image_uri {uri} redirects to a non-http URL; refused")
                url = nxt
                continue
            if status in (404, 410):
                raise FileNotFoundError(f"HTTP {status} for {url}")
            if status != 200:
                raise ImageFetchError(f"HTTP {status} for {url}")
            return data
        raise ImageFetchError(f"image_uri {uri}: more than {self.limits.max_redirects} redirects")

    def _get(self, url: str, address: str, deadline: float, max_bytes: int, send_auth: bool
             ) -> tuple[int, str | None, bytes]:
        """:func:`_http_get`, tried again after a 429 or 5xx answer or a reset connection while
        attempts are left and the wait ends before ``deadline``; the last such answer is an
        :class:`ImageFetchError` saying how many attempts were made."""
        attempt = 0
        while True:
            attempt += 1
            try:
                status, location, retry_after, data = _http_get(url, address, self.limits, deadline, max_bytes,
                                                                send_auth)
            except ImageFetchError as exc:
                if not exc.retryable:
                    raise
                failure, retry_after = str(exc), None
            else:
                if not retryable_status(status):
                    return status, location, data
                failure = f"HTTP {status} for {url}"
            wait = retry_delay(attempt, retry_after, self.limits)
            tried = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
            if attempt >= self.limits.attempts:
                raise ImageFetchError(f"{failure} ({tried})")
            if time.monotonic() + wait >= deadline:
                raise ImageFetchError(f"{failure} ({tried}; waiting {wait:.1f} s for another would pass the "
                                      "listing's deadline)")
            time.sleep(wait)


def _http_get(url: str, address: str, limits: FetchLimits, deadline: float, max_bytes: int,
              send_auth: bool) -> tuple[int, str | None, str | None, bytes]:
    """One GET of ``url`` over a connection to ``address``: (status, Location, Retry-After,
    body up to the cap). A watchdog shuts the socket down at ``deadline``, whatever the
    server sends; a connection the server resets is a retryable :class:`ImageFetchError`."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme.lower() == "https"
    host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageFetchTimeoutError(f"image at {url}: the listing's deadline of {limits.deadline:.0f} s passed "
                                     "(timeout)")
    try:
        sock = socket.create_connection((address, port), timeout=min(limits.connect_timeout, remaining))
    except socket.timeout:
        raise ImageFetchTimeoutError(f"image at {url}: connect timed out after {limits.connect_timeout:.0f} s "
                                     "(timeout)") from None
    expired = threading.Event()

    def abort() -> None:
        expired.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        sock.settimeout(limits.read_timeout)
        conn: http.client.HTTPConnection
        if secure:
            wrapped = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            conn = http.client.HTTPSConnection(host, port, timeout=limits.read_timeout)
            conn.sock = wrapped
        else:
            conn = http.client.HTTPConnection(host, port, timeout=limits.read_timeout)
            conn.sock = sock
        headers = {"User-Agent": "ecomatch-scan", "Accept": "image/*"}
        if send_auth and parts.username is not None:
            token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode("ascii")
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, resp.getheader("Location"), resp.getheader("Retry-After"), b""
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise SourceOverCapError(f"image at {url} is {int(length)} bytes (Content-Length), over {max_bytes} bytes")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = resp.read1(min(65536, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if expired.is_set():                # the watchdog ended the read: the data is cut short
            raise ImageFetchTimeoutError(f"image at {url}: the listing's deadline of {limits.deadline:.0f} s "
                                         "passed (timeout)")
        return 200, None, None, b"".join(chunks)
    except (SourceOverCapError, ImageFetchTimeoutError):
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set():
            raise ImageFetchTimeoutError(f"image at {url}: the listing's deadline of {limits.deadline:.0f} s "
                                         "passed (timeout)") from None
        if isinstance(exc, (socket.timeout, TimeoutError)):
            raise ImageFetchTimeoutError(f"image at {url}: no data for {limits.read_timeout:.0f} s "
                                         "(timeout)") from None
        # A reset (the server or a proxy dropped the connection, RemoteDisconnected among them)
        # may pass; a malformed answer will not.
        raise ImageFetchError(f"image at {url}: {type(exc).__name__}",
                              retryable=isinstance(exc, (ConnectionResetError, ConnectionAbortedError,
                                                         BrokenPipeError))) from None
    finally:
        watchdog.cancel()
        sock.close()


def _read_local(path: str, prefix: str, max_bytes: int) -> bytes:
    """A local regular file under ``prefix`` (resolved), checked on the opened descriptor."""
    if any(path == root or path.startswith(root + "/") for root in _FORBIDDEN_ROOTS):
        raise ImageSourceRefusedError(f"image_uri {path} is a system file; refused")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
            raise ImageSourceRefusedError(f"image_uri {path} is {what}, not a regular file; refused")
        opened = f"/proc/self/fd/{fd}"
        if os.path.islink(opened):          # Linux: what was opened, whatever the path became since
            real = os.readlink(opened)
            root = prefix.rstrip("/") or "/"
            if not (real == root or real.startswith(root.rstrip("/") + "/")):
                raise ImageSourceRefusedError(f"image_uri {path} changed while it was opened; refused")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_data(uri: str, max_bytes: int) -> bytes:
    head, sep, body = uri[len("data:"):].partition(",")
    if not sep:
        raise ImageSourceRefusedError("image_uri is a data: URL without data")
    if len(body) > 4 * max_bytes // 3 + 16:     # every decoding is at least 3/4 as long: refuse before decoding
        raise SourceOverCapError(f"image_uri is a data: URL of {len(body)} characters, "
                                 f"over the cap of {max_bytes} bytes")
    if head.endswith(";base64"):
        try:
            return base64.b64decode(body, validate=False)
        except ValueError:
            raise ImageSourceRefusedError("image_uri is a data: URL with bad base64") from None
    return urllib.parse.unquote_to_bytes(body)


def _read_fsspec(uri: str, max_bytes: int) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read(max_bytes + 1)

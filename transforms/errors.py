"""Bad rows as data: dead-letter outputs of ``.with_exception_handling()`` -> error records.

Messages pass through :func:`redact` first: an ``image_uri`` that carries credentials
(``https://user:pass@host/x.jpg``, a signed URL's ``?X-Goog-Signature=...``) must not
copy them into the reports.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from apache_beam.metrics import Metrics

from .progress import NAMESPACE

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s'\"<>]*)")
_HOST_PORT = re.compile(r"[^:@]*(:\d*)?|\[.*")
# A query or fragment parameter whose name looks secret; the value runs to the next & ; # or space.
_SECRET_NAME = (r"[^=&;#?\s'\"<>]*(?:sig|token|key|secret|pass|pwd|credential|auth|session|code|jwt|bearer"
                r"|cookie|policy)[^=&;#?\s'\"<>]*|sid|otp")
_SECRET_PARAM = re.compile(rf"(?i)([?&;#](?:{_SECRET_NAME})=)[^&;#\s'\"<>]+")


def _mask_userinfo(m: re.Match) -> str:
    """scheme://USERINFO@host -> scheme://***@host: up to the last "@" before the first "/" (a
    password may hold "@", "?" or "#"), or, when the authority looks like ``user:pass`` and an
    "@" follows (a password with a raw "/"), up to that "@"; never past whitespace."""
    scheme, rest = m.group(1), m.group(2)
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return f"{scheme}***{rest[authority.rfind('@'):]}"
    if not _HOST_PORT.fullmatch(authority) and "@" in rest:
        return f"{scheme}***{rest[rest.rfind('@'):]}"
    return m.group(0)


def redact(text: str) -> str:
    """``text`` with URL credentials masked as ``***``: the whole user-info of
    ``scheme://user:pass@host``, and the value of every query or fragment parameter whose name
    looks secret (signatures as in signed URLs, tokens, keys, passwords, session ids, OAuth
    codes, ...). Over-masking a harmless parameter (``barcode=``) is the price of never
    letting a secret through."""
    return _SECRET_PARAM.sub(r"\1***", _URL.sub(_mask_userinfo, text))


@dataclass(frozen=True)
class ErrorRecord:
    """One listing that could not be scored: a row of ``errors/*.parquet``."""

    listing_id: str | None
    source: str
    stage: str
    error_type: str
    message: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def exception_message(exc_type: type, exc_repr: str, tb_lines: Sequence[str]) -> str:
    """The exception's own message, from the last line of its formatted traceback
    (``"pkg.mod.Error: message"``); the repr when that line does not have that form."""
    last = "".join(tb_lines).rstrip("\n").rsplit("\n", 1)[-1] if tb_lines else ""
    for name in (f"{exc_type.__module__}.{exc_type.__qualname__}", exc_type.__qualname__):
        if last.startswith(name + ": "):
            return last[len(name) + 2:]
        if last == name:
            return ""
    return exc_repr


def dead_letter_errors(dead_letter: tuple[Any, tuple[type, str, Sequence[str]]], stage: str) -> Iterator[ErrorRecord]:
    """Error records for a dead letter ``(input, (type, repr, traceback))``; the input is one
    listing (``listing_id`` and ``source`` attributes) or a batch (list) of them."""
    element, (exc_type, exc_repr, tb_lines) = dead_letter
    message = redact(exception_message(exc_type, exc_repr, tb_lines))
    for item in element if isinstance(element, list) else [element]:
        Metrics.counter(NAMESPACE, "errors").inc()
        Metrics.counter(NAMESPACE, f"errors_{exc_type.__name__}").inc()
        yield ErrorRecord(item.listing_id, redact(item.source), stage, exc_type.__name__, message)

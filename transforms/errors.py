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

_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s@]+@")
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&#\s]*(?:sig|token|key|secret|pass|pwd|credential|auth)[^=&#\s]*=)"
                           r"[^&#\s'\"]+")


def redact(text: str) -> str:
    """``text`` with URL credentials masked: the user-info of ``scheme://user:pass@host`` and
    the values of query parameters whose names look secret (signature, token, key, ...)."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


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
        yield ErrorRecord(item.listing_id, item.source, stage, exc_type.__name__, message)

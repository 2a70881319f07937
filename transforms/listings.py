"""The input contract and the ``ReadListings`` stage.

Listing shards are Parquet files with

- ``listing_id`` (string) and ``title`` (string), required;
- ``image`` (binary: JPEG, PNG, WebP or GIF bytes) or ``image_uri`` (string: a local path or
  any fsspec URL); at least one of the two per file, ``image`` wins where both are set;
- optional string columns holding structured attributes (``--attribute-columns`` maps
  column -> attribute kind).

:func:`check_input` reads only the Parquet footers, before the pipeline is built, so a
missing or mistyped column stops the job with the file and the column named.
:class:`ReadListings` then reads exactly the needed columns with Beam's Parquet IO.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from .progress import NAMESPACE

REQUIRED_COLUMNS = ("listing_id", "title")
IMAGE_COLUMNS = ("image", "image_uri")


class InputSchemaError(ValueError):
    """The input matches no file, or a file lacks a required column or has a mistyped one."""


@dataclass
class RawListing:
    """One input row as read: ``attributes`` maps attribute column -> its non-empty value."""

    source: str
    listing_id: str | None
    title: str | None
    image: bytes | None = None
    image_uri: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def check_schema(path: str, schema: pa.Schema, attribute_columns: Sequence[str]) -> list[str]:
    """The columns to read from a file with ``schema``; raises :class:`InputSchemaError`
    naming ``path`` and the column when a required column is missing or mistyped.
    Attribute columns are optional; an all-null one (Parquet type null) is accepted."""
    types = {f.name: f.type for f in schema}
    for name in REQUIRED_COLUMNS:
        if name not in types:
            raise InputSchemaError(f"{path}: missing required column {name!r}")
    if not any(name in types for name in IMAGE_COLUMNS):
        raise InputSchemaError(f"{path}: missing required column 'image' (binary) or 'image_uri' (string)")
    expected = {"listing_id": (_is_string, "string"), "title": (_is_string, "string"),
                "image": (_is_binary, "binary"), "image_uri": (_is_string, "string")}
    expected.update({c: (lambda t: _is_string(t) or pa.types.is_null(t), "string") for c in attribute_columns})
    for name, (ok, want) in expected.items():
        if name in types and not ok(types[name]):
            raise InputSchemaError(f"{path}: column {name!r} has type {types[name]}, expected {want}")
    return [name for name in expected if name in types]


def read_schema(path: str) -> pa.Schema:
    """The Arrow schema in a Parquet file's footer (local path or any Beam filesystem URL)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        try:
            return pq.read_schema(f)
        except (pa.ArrowException, OSError) as exc:
            raise InputSchemaError(f"{path}: not a readable Parquet file: {exc}") from None


def check_input(pattern: str, attribute_columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand ``pattern`` and check every file's schema; returns (sorted files, the union of
    columns to read). Raises :class:`InputSchemaError` on the first bad file."""
    try:
        files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except BeamIOError as exc:
        raise InputSchemaError(f"cannot list {pattern!r}: {exc}") from None
    if not files:
        raise InputSchemaError(f"no files match {pattern!r}")
    columns: dict[str, None] = {}
    for path in files:
        columns.update(dict.fromkeys(check_schema(path, read_schema(path), attribute_columns)))
    return files, list(columns)


def to_raw_listing(file_row: tuple[str, Mapping[str, Any]], attribute_columns: Sequence[str]) -> RawListing:
    """A (file, row dict of the read columns) pair as a :class:`RawListing`."""
    source, row = file_row
    Metrics.counter(NAMESPACE, "read").inc()
    return RawListing(source, row.get("listing_id"), row.get("title"), row.get("image"), row.get("image_uri"),
                      {c: row[c] for c in attribute_columns if row.get(c)})


class ReadListings(beam.PTransform):
    """Checked Parquet files -> :class:`RawListing`, reading only ``columns``."""

    def __init__(self, files: Sequence[str], columns: Sequence[str], attribute_columns: Sequence[str]):
        super().__init__()
        self._files, self._columns = list(files), list(columns)
        self._attribute_columns = [c for c in attribute_columns if c in self._columns]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[RawListing]:
        return (pbegin
                | "ListFiles" >> beam.Create(self._files)
                | "ReadParquet" >> ReadAllFromParquet(columns=self._columns, with_filename=True)
                | "ToListings" >> beam.Map(to_raw_listing, attribute_columns=self._attribute_columns))

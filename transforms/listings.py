"""The input contract and the ``ReadListings`` stage.

Listing shards are Parquet files with

- ``listing_id`` (string) and ``title`` (string), required;
- ``image`` (binary: JPEG, PNG, WebP or GIF bytes) or ``image_uri`` (string: a local path or
  any fsspec URL); at least one of the two per file, ``image`` wins where both are set;
- optional string columns holding structured attributes (``--attribute-columns`` maps
  column -> attribute kind) or carried to the violation rows (``--carry-columns``): the
  readers take both as their ``attribute_columns``.

:func:`survey_input` reads only the Parquet footers, before the pipeline is built, so a
missing or mistyped column, or a file that is not Parquet (truncated, say), stops the job
with the file and the column named. :class:`ReadListings` then reads exactly the needed
columns, one row group per element, all of a row group or none of it: a corrupt data page
fails the job naming the file and the row group, or, after ``with_exception_handling()``
(``ecomatch scan --skip-bad-files``), becomes an error record while the rest is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from .errors import ErrorRecord, exception_message, redact
from .progress import NAMESPACE

REQUIRED_COLUMNS = ("listing_id", "title")
IMAGE_COLUMNS = ("image", "image_uri")


class InputSchemaError(ValueError):
    """The input matches no file, or a file lacks a required column or has a mistyped one."""


class UnreadableInputError(ValueError):
    """A row group of an input file cannot be read (a corrupt data page, say)."""


@dataclass
class RawListing:
    """One input row as read: ``attributes`` maps attribute (or carried) column -> its non-empty
    value;
    ``invalid`` maps each text column whose value is not valid UTF-8 to why (that value is
    then held with the bad bytes as ``\\xNN`` escapes, and decoding refuses the listing)."""

    source: str
    listing_id: str | None
    title: str | None
    image: bytes | None = None
    image_uri: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)


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
    wanted = {*REQUIRED_COLUMNS, *IMAGE_COLUMNS, *attribute_columns}
    for name in sorted(wanted & {n for n in schema.names if schema.names.count(n) > 1}):
        raise InputSchemaError(f"{path}: column {name!r} appears {schema.names.count(name)} times")
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


def read_footer(path: str) -> pq.FileMetaData:
    """A Parquet file's footer (local path or any Beam filesystem URL); raises
    :class:`InputSchemaError` naming the file when it has none (not Parquet, truncated)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        try:
            return pq.read_metadata(f)
        except (pa.ArrowException, OSError) as exc:
            raise InputSchemaError(f"{path}: not a readable Parquet file: {exc}") from None


@dataclass(frozen=True)
class InputSurvey:
    """The files matching an input pattern: the usable ones (sorted), the union of the
    columns to read from them, and each unusable file with the reason (file -> message)."""

    files: list[str]
    columns: list[str]
    bad: dict[str, str]
    rows: int = 0               # in the usable files, from their footers: the listings the job will read


def survey_input(pattern: str, attribute_columns: Sequence[str], strict: bool = True) -> InputSurvey:
    """Expand ``pattern`` and check every file's footer and schema. A pattern that matches
    nothing raises :class:`InputSchemaError`; so does the first unusable file when ``strict``,
    else it is listed in ``bad``."""
    try:
        files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except BeamIOError as exc:
        raise InputSchemaError(f"cannot list {pattern!r}: {exc}") from None
    if not files:
        raise InputSchemaError(f"no files match {pattern!r}")
    columns: dict[str, None] = {}
    bad: dict[str, str] = {}
    rows = 0
    for path in files:
        try:
            footer = read_footer(path)
            columns.update(dict.fromkeys(check_schema(path, footer.schema.to_arrow_schema(), attribute_columns)))
            rows += footer.num_rows
        except InputSchemaError as exc:
            if strict:
                raise
            bad[path] = str(exc)
    return InputSurvey([f for f in files if f not in bad], list(columns), bad, rows)


def to_raw_listing(file_row: tuple[str, Mapping[str, Any]], attribute_columns: Sequence[str]) -> RawListing:
    """A (file, row dict of the read columns) pair as a :class:`RawListing`. Pure: counting
    listings read is the pipeline step's (:func:`read_and_count`), so the report writer and
    other readers outside the pipeline can use this too."""
    source, row = file_row
    invalid: dict[str, str] = {}
    text = {name: _text(name, value, invalid) for name, value in row.items() if name != "image"}
    return RawListing(source, text.get("listing_id"), text.get("title"), row.get("image"), text.get("image_uri"),
                      {c: text[c] for c in attribute_columns if text.get(c)}, invalid)


def _text(name: str, value: Any, invalid: dict[str, str]) -> Any:
    """A text column's value as str; bytes that are not UTF-8 are noted in ``invalid``."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        invalid[name] = f"{name} is not valid UTF-8 (byte 0x{value[exc.start]:02x} at offset {exc.start})"
        return value.decode("utf-8", "backslashreplace")


def _as_bytes(table: pa.Table) -> pa.Table:
    """``table`` with its string columns as binary, so that one value that is not UTF-8 fails
    its own row when it is decoded (:func:`to_raw_listing`), not the whole row group."""
    columns = []
    for col in table.columns:
        if _is_string(col.type):
            if pa.types.is_dictionary(col.type):
                col = pa.chunked_array([c.dictionary_decode() for c in col.chunks], col.type.value_type)
            col = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())
        columns.append(col)
    return pa.table(columns, names=table.column_names)


@dataclass(frozen=True)
class RowGroup:
    """Row group ``index`` (of ``count``) of an input file, holding ``rows`` rows: the unit
    of reading, and of skipping with ``--skip-bad-files``."""

    path: str
    index: int
    count: int
    rows: int


def file_row_groups(path: str, attribute_columns: Sequence[str]) -> list[RowGroup]:
    """The row groups of a file whose footer and schema are usable (:func:`check_schema`);
    raises :class:`InputSchemaError` naming the file otherwise."""
    footer = read_footer(path)
    check_schema(path, footer.schema.to_arrow_schema(), attribute_columns)
    return [RowGroup(path, g, footer.num_row_groups, footer.row_group(g).num_rows)
            for g in range(footer.num_row_groups)]


def read_row_group(group: RowGroup, columns: Sequence[str], attribute_columns: Sequence[str],
                   ids: pa.Array | None = None) -> list[RawListing]:
    """Every row of one row group (those of ``columns`` the file has) as :class:`RawListing`,
    all or none: raises :class:`UnreadableInputError` naming the file and the row group when
    any page of it is bad. With ``ids`` (strings) only the rows whose ``listing_id`` is among
    them, and the other columns are read only when there is one. The one reader of input
    rows: ``ReadListings`` and the HTML report both use it; it counts nothing."""
    try:
        with FileSystems.open(group.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            if ids is None:
                rows = _as_bytes(pf.read_row_group(group.index, columns=present)).to_pylist()
            else:
                listing_ids = pf.read_row_group(group.index, columns=["listing_id"]).column(0)
                hit = pc.is_in(listing_ids.cast(pa.string()), value_set=ids)
                rows = _as_bytes(pf.read_row_group(group.index, columns=present).filter(hit)).to_pylist() \
                    if pc.any(hit).as_py() else []
    except Exception as exc:  # a corrupt page raises OSError, ArrowInvalid, ...: say which file and where
        why = " ".join(str(exc).split())        # one line: Arrow's messages span several
        raise UnreadableInputError(f"{group.path}: row group {group.index + 1} of {group.count} ({group.rows} rows) "
                                   f"cannot be read: {type(exc).__name__}: {why}") from exc
    return [to_raw_listing((group.path, row), attribute_columns) for row in rows]


def read_and_count(group: RowGroup, columns: Sequence[str], attribute_columns: Sequence[str]) -> list[RawListing]:
    """:func:`read_row_group`, counting the listings read in Beam's ``read`` counter: the
    pipeline's reading step, the only place that counter is incremented. A row group that
    cannot be read counts nothing."""
    listings = read_row_group(group, columns, attribute_columns)
    Metrics.counter(NAMESPACE, "read").inc(len(listings))
    return listings


def read_error(dead_letter: tuple[str | RowGroup, tuple[type, str, Sequence[str]]]) -> ErrorRecord:
    """The error record (stage ``read``, no listing id) of a file or row group that could not be read."""
    element, (exc_type, exc_repr, tb_lines) = dead_letter
    Metrics.counter(NAMESPACE, "skipped_inputs").inc()
    source = element.path if isinstance(element, RowGroup) else element
    return ErrorRecord(None, source, "read", exc_type.__name__, redact(exception_message(exc_type, exc_repr, tb_lines)))


class ReadListings(beam.PTransform):
    """Parquet files -> :class:`RawListing`, reading only ``columns``, a row group at a time.

    A file whose footer or schema is unusable, or a row group that cannot be read, fails the
    job with the file named. After :meth:`with_exception_handling` each becomes an
    :class:`ErrorRecord` instead (stage ``read``), the rest is read, and the transform
    returns (listings, errors), as Beam's own transforms do.
    """

    def __init__(self, files: Sequence[str], columns: Sequence[str], attribute_columns: Sequence[str]):
        super().__init__()
        self._files, self._columns = list(files), list(columns)
        self._attribute_columns = list(attribute_columns)
        self._skip_bad_files = False

    def with_exception_handling(self) -> "ReadListings":
        """Report unreadable files and row groups as error records instead of failing."""
        self._skip_bad_files = True
        return self

    def expand(self, pbegin: beam.pvalue.PBegin
               ) -> beam.PCollection[RawListing] | tuple[beam.PCollection[RawListing], beam.PCollection[ErrorRecord]]:
        files = pbegin | "ListFiles" >> beam.Create(self._files)
        list_groups = beam.FlatMap(file_row_groups, self._attribute_columns)
        read = beam.FlatMap(read_and_count, self._columns, self._attribute_columns)
        if not self._skip_bad_files:
            groups = files | "ListRowGroups" >> list_groups
            return groups | "SpreadRowGroups" >> beam.Reshuffle() | "ReadRowGroups" >> read
        groups, bad_files = files | "ListRowGroups" >> list_groups.with_exception_handling()
        listings, bad_groups = (groups | "SpreadRowGroups" >> beam.Reshuffle()
                                | "ReadRowGroups" >> read.with_exception_handling())
        errors = (bad_files, bad_groups) | "Unreadable" >> beam.Flatten() | "ReadErrors" >> beam.Map(read_error)
        return listings, errors

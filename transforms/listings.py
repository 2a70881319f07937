"""The input contract and the ``ReadListings`` stage.

Listing shards are Parquet, CSV or JSON Lines files (:func:`file_format`: by extension, or
``--input-format``) with

- ``listing_id`` (string) and ``title`` (string), required;
- ``image`` (binary: JPEG, PNG, WebP or GIF bytes) or ``image_uri`` (string: a local path or
  any fsspec URL); at least one of the two per file, ``image`` wins where both are set. A
  text file has no bytes column: it names each photo in ``image_uri``;
- optional string columns holding structured attributes (``--attribute-columns`` maps
  column -> attribute kind) or carried to the violation rows (``--carry-columns``): the
  readers take both as their ``attribute_columns``.

:func:`survey_input` reads only the Parquet footers, and the head of a text file (a CSV
file's header, the first lines of a JSON Lines file), before the pipeline is built, so a
missing or mistyped column, or a file that is not of its format (truncated, say), stops the
job with the file and the column named. :class:`ReadListings` then reads exactly the needed
columns, one row group (Parquet) or block of rows (text, :class:`TextBlock`) per element,
all of it or none: a corrupt data page fails the job naming the file and the row group, or,
after ``with_exception_handling()`` (``ecomatch scan --skip-bad-files``), becomes an error
record while the rest is read. A malformed text row (a CSV row with the wrong number of
fields, a JSON line that is not an object of strings) is one listing that decoding refuses,
naming the row or line, like a title that is not UTF-8.

Text files are read by pyarrow's readers, every CSV column as bytes (no type inference: an
id ``00123`` stays ``00123``; UTF-8 is checked per value, as for Parquet) and every JSON
value read must be a JSON string. CSV and JSON Lines files may be compressed (``.csv.gz``;
any compression Beam detects by extension).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from .errors import ErrorRecord, exception_message, redact
from .progress import NAMESPACE

REQUIRED_COLUMNS = ("listing_id", "title")
IMAGE_COLUMNS = ("image", "image_uri")
FORMATS = ("parquet", "csv", "jsonl")
INPUT_FORMATS = ("auto", *FORMATS)
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "jsonl"}
_LABELS = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSON Lines"}
TEXT_BLOCK_ROWS = 20_000    # rows of a text file per element read
# A CSV block is found by reading the file from its start (a quoted value may hold a newline,
# so no byte offset is known to begin a row): at most this many blocks per file keeps the
# reading within (MAX_CSV_BLOCKS + 1) / 2 passes over the file.
MAX_CSV_BLOCKS = 16
HEAD_BYTES = 1 << 20        # of a JSON Lines file, read by the schema check
MAX_LINE_BYTES = 64 << 20   # a JSON line longer than this makes its file unreadable
_ARROW_BLOCK_BYTES = 4 << 20     # pyarrow's unit of parsing: a CSV row must fit in one
_BLANK = b" \t\r"
_BOM = b"\xef\xbb\xbf"


class InputSchemaError(ValueError):
    """The input matches no file, or a file lacks a required column or has a mistyped one."""


class InputFormatError(InputSchemaError):
    """A file's format cannot be told from its name (``--input-format auto``): a configuration
    error, never skipped by ``--skip-bad-files``."""


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


def file_format(path: str, input_format: str = "auto") -> str:
    """``parquet``, ``csv`` or ``jsonl``: ``input_format`` unless it is ``auto``, else by the
    file name's extension (after a compression suffix, for the text formats); raises
    :class:`InputFormatError` naming the file when the name says none of them."""
    if input_format != "auto":
        if input_format not in FORMATS:
            raise InputFormatError(f"unknown input format {input_format!r} (one of {', '.join(INPUT_FORMATS)})")
        return input_format
    name = path.rsplit("/", 1)[-1].lower()
    compressed = CompressionTypes.detect_compression_type(name) != CompressionTypes.UNCOMPRESSED
    stem = name.rsplit(".", 1)[0] if compressed else name
    fmt = EXTENSIONS.get("." + stem.rsplit(".", 1)[-1]) if "." in stem else None
    if fmt is None or (compressed and fmt == "parquet"):
        raise InputFormatError(
            f"{path}: cannot tell the input format from the file name (expected .parquet or .pq, .csv, or .jsonl, "
            ".ndjson or .json, a text one optionally compressed such as .csv.gz); pass --input-format "
            "parquet|csv|jsonl, or narrow --input to the listing files")
    return fmt


def _open(path: str, fmt: str) -> BinaryIO:
    """A file to read: Parquet as stored, a text file decompressed as its name says."""
    compression = CompressionTypes.UNCOMPRESSED if fmt == "parquet" else CompressionTypes.AUTO
    return FileSystems.open(path, compression_type=compression)


class _Stream(io.RawIOBase):
    """A file opened by Beam as a plain binary stream for pyarrow's readers (Beam's
    ``CompressedFile`` has ``closed`` as a method, which pyarrow takes for a closed file)."""

    def __init__(self, f: BinaryIO):
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())       # Arrow's messages may span several lines


def check_text_schema(path: str, names: Sequence[str], attribute_columns: Sequence[str], fmt: str) -> list[str]:
    """:func:`check_schema` for a text file whose columns (a CSV header, the keys of a JSON
    Lines file's first objects) are ``names``, all strings: the photo can only be an
    ``image_uri``, so an ``image`` column is refused rather than read as text."""
    if "image" in names:
        raise InputSchemaError(f"{path}: column 'image' cannot hold image bytes in a {_LABELS[fmt]} file; "
                               "give each photo's path or URL in an 'image_uri' column instead")
    if "image_uri" not in names and all(c in names for c in REQUIRED_COLUMNS):
        raise InputSchemaError(f"{path}: missing required column 'image_uri' (the photo's path or URL)")
    return check_schema(path, pa.schema([(n, pa.string()) for n in names]), attribute_columns)


def _csv_reader(f: BinaryIO, columns: Sequence[str] | None, on_malformed=None) -> pacsv.CSVStreamingReader:
    """pyarrow's streaming CSV reader over ``f``: ``columns`` (those the file lacks as nulls),
    all as bytes, an empty field as null; None: every column, types as pyarrow infers them
    from the first block (for the header only). A row with the wrong number of fields goes
    to ``on_malformed`` (pyarrow's ``InvalidRow``) and is skipped."""
    def malformed(row: Any) -> str:
        if on_malformed is not None:
            on_malformed(row)
        return "skip"
    convert = pacsv.ConvertOptions() if columns is None else pacsv.ConvertOptions(
        column_types={c: pa.binary() for c in columns}, include_columns=list(columns), include_missing_columns=True,
        strings_can_be_null=True, null_values=[""])
    return pacsv.open_csv(_Stream(f), read_options=pacsv.ReadOptions(use_threads=False, block_size=_ARROW_BLOCK_BYTES),
                          parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=malformed),
                          convert_options=convert)


def csv_header(path: str) -> list[str]:
    """The column names of a CSV file (its first row); raises :class:`InputSchemaError`
    naming the file when it has none (empty, not CSV)."""
    try:
        with _open(path, "csv") as f:
            return list(_csv_reader(f, None).schema.names)
    except Exception as exc:  # noqa: BLE001 (ArrowInvalid, OSError, a decompression error, ...)
        raise InputSchemaError(f"{path}: not a readable CSV file: {_one_line(exc)}") from None


def _lines(f: BinaryIO, path: str) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset, the line without its newline) of a JSON Lines file;
    raises :class:`UnreadableInputError` at a line longer than ``MAX_LINE_BYTES``."""
    def too_long() -> UnreadableInputError:
        return UnreadableInputError(f"{path}: line {number} is longer than {MAX_LINE_BYTES} bytes")
    buf, offset, number = b"", 0, 1
    while chunk := f.read(1 << 20):
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end - start > MAX_LINE_BYTES:
                raise too_long()
            yield number, offset, buf[start:end]
            offset, number, start = offset + end + 1 - start, number + 1, end + 1
        buf = buf[start:]
        if len(buf) > MAX_LINE_BYTES:
            raise too_long()
    if buf:
        yield number, offset, buf


_ARROW_JSON_ERROR = re.compile(r"^JSON parse error: |\.? in row \d+$")


def _json_parse(number: int, line: bytes, schema: pa.Schema | None = None) -> pa.Table | str:
    """One JSON line read alone by pyarrow (the columns of ``schema`` only, when given), or
    why it is not one object: not an object, not JSON, several values, a key not UTF-8."""
    # pyarrow's JSON reader crashes the process on a first value that is null: only what
    # begins as an object reaches it.
    if not line.lstrip(_BLANK).startswith(b"{"):
        return f"line {number} is not a JSON object"
    options = pajson.ParseOptions() if schema is None else pajson.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(io.BytesIO(line), read_options=pajson.ReadOptions(
            use_threads=False, block_size=len(line) + 1), parse_options=options)
        table.schema.names      # noqa: B018 (a key that is not UTF-8 fails here)
    except UnicodeDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"line {number} is not valid UTF-8 (byte 0x{line[exc.start]:02x} at offset {exc.start})"
        raise
    except (pa.ArrowException, ValueError) as exc:
        return f"line {number} is not valid JSON: {_ARROW_JSON_ERROR.sub('', _one_line(exc))}"
    if table.num_rows != 1:
        return f"line {number} holds {table.num_rows} JSON values, expected one object"
    return table


def _json_kind(t: pa.DataType) -> str | None:
    """What a JSON value that pyarrow read as ``t`` was when it was no string; None for a
    string (which pyarrow may have read as a timestamp) or null."""
    if _is_string(t) or pa.types.is_null(t) or pa.types.is_timestamp(t):
        return None
    if pa.types.is_boolean(t):
        return "a boolean"
    if pa.types.is_struct(t):
        return "an object"
    return "an array" if pa.types.is_list(t) or pa.types.is_large_list(t) else "a number"


def jsonl_head(path: str, attribute_columns: Sequence[str] = ()) -> list[str] | None:
    """The columns of a JSON Lines file: the keys of the objects on its first lines (up to
    ``HEAD_BYTES``); raises :class:`InputSchemaError` naming the file when none of them is a
    JSON object, or when a column to read there never holds a string but does hold something
    else (a number, say). None for a file without a line (empty, or blank lines only): it
    holds no listing, and an export's empty part is no error."""
    wanted = {*REQUIRED_COLUMNS, *IMAGE_COLUMNS, *attribute_columns}
    names: dict[str, None] = {}
    kinds: dict[str, tuple[int, str]] = {}      # column -> the first line and kind of a value that is no string
    strings: set[str] = set()
    first_error, parsed, lines = "", 0, 0
    try:
        with _open(path, "jsonl") as f:
            for number, offset, line in _lines(f, path):
                line = _text_line(number, line)
                if not line.strip(_BLANK):
                    continue
                lines += 1
                table = _json_parse(number, line)
                if isinstance(table, str):
                    first_error = first_error or table
                else:
                    parsed += 1
                    names.update(dict.fromkeys(table.schema.names))
                    for col in table.schema:
                        kind = _json_kind(col.type)
                        if kind:
                            kinds.setdefault(col.name, (number, kind))
                        elif not pa.types.is_null(col.type):
                            strings.add(col.name)
                if offset + len(line) >= HEAD_BYTES:
                    break
    except Exception as exc:  # noqa: BLE001 (OSError, a decompression error, a line over the cap, ...)
        raise InputSchemaError(f"{path}: not a readable JSON Lines file: {_one_line(exc)}") from None
    if first_error and not parsed:
        raise InputSchemaError(f"{path}: not a readable JSON Lines file: {first_error}")
    for name, (number, kind) in kinds.items():
        if name in wanted and name not in strings:
            raise InputSchemaError(f"{path}: column {name!r} holds {kind} (line {number}), expected a string: "
                                   "in JSON Lines every column read is a JSON string (\"00123\")")
    return list(names) if lines else None


def file_columns(path: str, fmt: str, attribute_columns: Sequence[str]) -> tuple[list[str], int | None]:
    """The columns to read from a file of format ``fmt`` (:func:`check_schema`) and its rows
    (a Parquet footer's count; None for a text file, counted only as it is read)."""
    if fmt == "parquet":
        footer = read_footer(path)
        return check_schema(path, footer.schema.to_arrow_schema(), attribute_columns), footer.num_rows
    names = csv_header(path) if fmt == "csv" else jsonl_head(path, attribute_columns)
    return ([] if names is None else check_text_schema(path, names, attribute_columns, fmt)), None


@dataclass(frozen=True)
class InputSurvey:
    """The files matching an input pattern: the usable ones (sorted), the union of the
    columns to read from them, and each unusable file with the reason (file -> message)."""

    files: list[str]
    columns: list[str]
    bad: dict[str, str]
    # In the usable files, from their footers: the listings the job will read; None when a
    # text file is among them (its rows are counted only as it is read).
    rows: int | None = 0


def survey_input(pattern: str, attribute_columns: Sequence[str], strict: bool = True,
                 input_format: str = "auto") -> InputSurvey:
    """Expand ``pattern`` and check every file's format (:func:`file_format`), footer or head,
    and schema. A pattern that matches nothing raises :class:`InputSchemaError`; so does the
    first unusable file when ``strict``, else it is listed in ``bad``; a file whose format is
    unknown always raises :class:`InputFormatError`."""
    try:
        files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except BeamIOError as exc:
        raise InputSchemaError(f"cannot list {pattern!r}: {exc}") from None
    if not files:
        raise InputSchemaError(f"no files match {pattern!r}")
    formats = {path: file_format(path, input_format) for path in files}    # before any file is read
    columns: dict[str, None] = {}
    bad: dict[str, str] = {}
    rows: int | None = 0
    for path in files:
        try:
            names, count = file_columns(path, formats[path], attribute_columns)
        except InputSchemaError as exc:
            if strict:
                raise
            bad[path] = str(exc)
            continue
        columns.update(dict.fromkeys(names))
        rows = None if rows is None or count is None else rows + count
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


@dataclass(frozen=True)
class TextBlock:
    """Block ``index`` (of ``count``) of a CSV or JSON Lines file: the unit of reading, as a
    row group is for Parquet. ``rows`` rows, counted as pyarrow's reader counts them (the
    rows that parse; blank lines are none). A CSV block is the rows after the first ``start``;
    a JSON Lines block is the bytes ``offset`` to ``end``, from line ``line`` on. ``malformed``
    (a CSV file's first block only) holds why each CSV row with the wrong number of fields was
    skipped: each is one listing that decoding refuses."""

    path: str
    format: str
    index: int
    count: int
    rows: int
    start: int = 0
    offset: int = 0
    end: int = 0
    line: int = 1
    malformed: tuple[str, ...] = ()

    def where(self) -> str:
        if self.format == "csv":
            return f"rows {self.start + 1}-{self.start + self.rows} (block {self.index + 1} of {self.count})"
        return f"block {self.index + 1} of {self.count} ({self.rows} rows from line {self.line})"


def _text_line(number: int, line: bytes) -> bytes:
    """A text line without the byte-order mark an editor may have put before line 1."""
    return line[len(_BOM):] if number == 1 and line.startswith(_BOM) else line


def _csv_blocks(path: str, attribute_columns: Sequence[str], block_rows: int) -> list[TextBlock]:
    """A CSV file's blocks, after its header's check: one pass of pyarrow's reader counts the
    rows (a quoted value may span lines, so lines are no rows) and notes the malformed ones."""
    check_text_schema(path, csv_header(path), attribute_columns, "csv")
    malformed: list[str] = []

    def note(row: Any) -> None:
        at = f"row {row.number} (the header is row 1)" if row.number is not None else "a row"
        malformed.append(f"malformed CSV {at}: expected {row.expected_columns} fields, got {row.actual_columns}")
    try:
        with _open(path, "csv") as f:
            rows = sum(batch.num_rows for batch in _csv_reader(f, ["listing_id"], note))
    except Exception as exc:  # noqa: BLE001 (ArrowInvalid, OSError, a decompression error, ...)
        raise UnreadableInputError(f"{path}: cannot be read as CSV: {type(exc).__name__}: {_one_line(exc)}") from exc
    if not rows and not malformed:
        return []
    per = max(block_rows, -(-rows // MAX_CSV_BLOCKS))
    count = max(1, -(-rows // per))
    return [TextBlock(path, "csv", k, count, min(per, rows - k * per), start=k * per,
                      malformed=tuple(malformed) if k == 0 else ()) for k in range(count)]


def _jsonl_blocks(path: str, attribute_columns: Sequence[str], block_rows: int) -> list[TextBlock]:
    """A JSON Lines file's blocks of ``block_rows`` non-blank lines, after its head's check.
    A JSON value never holds a raw newline, so every line is a row and a block is a byte
    range: found by counting lines, without parsing."""
    names = jsonl_head(path, attribute_columns)
    if names is None:
        return []
    check_text_schema(path, names, attribute_columns, "jsonl")
    spans: list[tuple[int, int, int, int]] = []         # offset, end, first line, rows
    start, first, rows = -1, 0, 0
    try:
        with _open(path, "jsonl") as f:
            for number, offset, line in _lines(f, path):
                if not _text_line(number, line).strip(_BLANK):
                    continue
                if start < 0:
                    start, first = offset, number
                rows += 1
                if rows == block_rows:
                    spans.append((start, offset + len(line) + 1, first, rows))
                    start, rows = -1, 0
                end = offset + len(line) + 1
    except UnreadableInputError:
        raise
    except Exception as exc:  # noqa: BLE001 (OSError, a decompression error, ...)
        raise UnreadableInputError(f"{path}: cannot be read: {type(exc).__name__}: {_one_line(exc)}") from exc
    if start >= 0:
        spans.append((start, end, first, rows))
    return [TextBlock(path, "jsonl", k, len(spans), n, offset=o, end=e, line=line)
            for k, (o, e, line, n) in enumerate(spans)]


def file_row_groups(path: str, attribute_columns: Sequence[str], input_format: str = "auto",
                    block_rows: int = TEXT_BLOCK_ROWS) -> list[RowGroup | TextBlock]:
    """The row groups of a Parquet file, or the blocks of a text file (``block_rows`` rows
    each; fewer, larger ones for a big CSV file), whose footer or head and schema are usable
    (:func:`check_schema`); raises :class:`InputSchemaError` naming the file otherwise, and
    :class:`UnreadableInputError` when a text file cannot be read through."""
    fmt = file_format(path, input_format)
    if fmt == "csv":
        return _csv_blocks(path, attribute_columns, block_rows)
    if fmt == "jsonl":
        return _jsonl_blocks(path, attribute_columns, block_rows)
    footer = read_footer(path)
    check_schema(path, footer.schema.to_arrow_schema(), attribute_columns)
    return [RowGroup(path, g, footer.num_row_groups, footer.row_group(g).num_rows)
            for g in range(footer.num_row_groups)]


def _malformed(path: str, why: str) -> RawListing:
    """A text row that is no listing: decoding refuses it with ``why`` (it has no id)."""
    return RawListing(path, None, None, invalid={"row": why})


def _read_csv_block(block: TextBlock, columns: Sequence[str], attribute_columns: Sequence[str]) -> list[RawListing]:
    batches, seen, stop = [], 0, block.start + block.rows
    with _open(block.path, "csv") as f:
        reader = _csv_reader(f, columns)
        for batch in reader:
            if seen + batch.num_rows > block.start:
                skip = max(block.start - seen, 0)
                batches.append(batch.slice(skip, stop - seen - skip))
            seen += batch.num_rows
            if seen >= stop:
                break
    if sum(b.num_rows for b in batches) != block.rows:
        raise ValueError(f"the file has {seen} rows, fewer than when the scan listed it (it changed meanwhile)")
    rows = pa.Table.from_batches(batches, reader.schema).to_pylist() if batches else []
    return [*(to_raw_listing((block.path, row), attribute_columns) for row in rows),
            *(_malformed(block.path, why) for why in block.malformed)]


def _json_listing(path: str, number: int, line: bytes, columns: Sequence[str],
                  attribute_columns: Sequence[str]) -> RawListing:
    """One JSON line read alone: a listing, refused by decoding when the line is no object or
    a column read holds something other than a string (naming the line and the column)."""
    inferred = _json_parse(number, line)
    if isinstance(inferred, str):
        return _malformed(path, inferred)
    types = {f.name: f.type for f in inferred.schema}
    wrong = {c: f"line {number}: {c!r} is {kind}, expected a string" for c in columns
             if c in types and (kind := _json_kind(types[c]))}
    # Read again with the strings as bytes: as inferred, a date would be a timestamp, and a
    # value that is not UTF-8 would fail the whole line instead of its column.
    values = _json_parse(number, line, pa.schema([(c, pa.binary()) for c in columns if c not in wrong]))
    if isinstance(values, str):
        return _malformed(path, values)
    raw = to_raw_listing((path, {**values.to_pylist()[0], **dict.fromkeys(wrong)}), attribute_columns)
    raw.invalid.update(wrong)
    return raw


def _read_jsonl_block(block: TextBlock, columns: Sequence[str], attribute_columns: Sequence[str]) -> list[RawListing]:
    with _open(block.path, "jsonl") as f:
        f.seek(block.offset)
        data = f.read(block.end - block.offset)
    lines = [(block.line + i, _text_line(block.line + i, line)) for i, line in enumerate(data.split(b"\n"))]
    lines = [(n, line) for n, line in lines if line.strip(_BLANK)]
    if len(lines) != block.rows:
        raise ValueError(f"{len(lines)} lines where the scan listed {block.rows} (the file changed meanwhile)")
    # The whole block at once when every line is an object of strings (read as bytes: UTF-8 is
    # checked per value, as for Parquet); else line by line, so that a bad line is one refused
    # listing naming its line. (pyarrow reads several values on one line as several rows: the
    # row count tells.)
    if lines and all(line.lstrip(_BLANK).startswith(b"{") for _, line in lines):
        body = b"\n".join(line for _, line in lines)
        try:
            table = pajson.read_json(io.BytesIO(body), read_options=pajson.ReadOptions(
                use_threads=False, block_size=len(body) + 1), parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema([(c, pa.binary()) for c in columns]), unexpected_field_behavior="ignore"))
        except (pa.ArrowException, ValueError):
            table = None
        if table is not None and table.num_rows == len(lines):
            return [to_raw_listing((block.path, row), attribute_columns) for row in table.to_pylist()]
    return [_json_listing(block.path, n, line, columns, attribute_columns) for n, line in lines]


def read_text_block(block: TextBlock, columns: Sequence[str], attribute_columns: Sequence[str],
                    ids: pa.Array | None = None) -> list[RawListing]:
    """:func:`read_row_group` for a block of a text file."""
    wanted = [c for c in columns if c != "image"]        # a Parquet file's column; no text file has it
    try:
        read = _read_csv_block if block.format == "csv" else _read_jsonl_block
        listings = read(block, wanted, attribute_columns)
    except Exception as exc:  # OSError, ArrowInvalid, a decompression error, ...: say which file and where
        raise UnreadableInputError(f"{block.path}: {block.where()} cannot be read: "
                                   f"{type(exc).__name__}: {_one_line(exc)}") from exc
    if ids is None:
        return listings
    wanted_ids = set(ids.to_pylist())
    return [r for r in listings if r.listing_id in wanted_ids]


def read_row_group(group: RowGroup | TextBlock, columns: Sequence[str], attribute_columns: Sequence[str],
                   ids: pa.Array | None = None) -> list[RawListing]:
    """Every row of one row group or text block (those of ``columns`` the file has) as
    :class:`RawListing`, all or none: raises :class:`UnreadableInputError` naming the file and
    the row group or block when any page of it is bad. With ``ids`` (strings) only the rows
    whose ``listing_id`` is among them, and (Parquet) the other columns are read only when
    there is one. The one reader of input rows: ``ReadListings`` and the HTML report both use
    it; it counts nothing."""
    if isinstance(group, TextBlock):
        return read_text_block(group, columns, attribute_columns, ids)
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


def read_and_count(group: RowGroup | TextBlock, columns: Sequence[str],
                   attribute_columns: Sequence[str]) -> list[RawListing]:
    """:func:`read_row_group`, counting the listings read in Beam's ``read`` counter: the
    pipeline's reading step, the only place that counter is incremented. A row group that
    cannot be read counts nothing."""
    listings = read_row_group(group, columns, attribute_columns)
    Metrics.counter(NAMESPACE, "read").inc(len(listings))
    return listings


def read_error(dead_letter: tuple[str | RowGroup | TextBlock, tuple[type, str, Sequence[str]]]) -> ErrorRecord:
    """The error record (stage ``read``, no listing id) of a file, row group or text block that
    could not be read."""
    element, (exc_type, exc_repr, tb_lines) = dead_letter
    Metrics.counter(NAMESPACE, "skipped_inputs").inc()
    source = element.path if isinstance(element, (RowGroup, TextBlock)) else element
    return ErrorRecord(None, source, "read", exc_type.__name__, redact(exception_message(exc_type, exc_repr, tb_lines)))


class ReadListings(beam.PTransform):
    """Input files -> :class:`RawListing`, reading only ``columns``, a row group (Parquet) or
    block of ``block_rows`` rows (CSV, JSON Lines) at a time; each file's format by
    :func:`file_format` with ``input_format``.

    A file whose footer, head or schema is unusable, or a row group or block that cannot be
    read, fails the job with the file named. After :meth:`with_exception_handling` each
    becomes an :class:`ErrorRecord` instead (stage ``read``), the rest is read, and the
    transform returns (listings, errors), as Beam's own transforms do.
    """

    def __init__(self, files: Sequence[str], columns: Sequence[str], attribute_columns: Sequence[str],
                 input_format: str = "auto", block_rows: int = TEXT_BLOCK_ROWS):
        super().__init__()
        self._files, self._columns = list(files), list(columns)
        self._attribute_columns = list(attribute_columns)
        self._input_format, self._block_rows = input_format, block_rows
        self._skip_bad_files = False

    def with_exception_handling(self) -> "ReadListings":
        """Report unreadable files and row groups as error records instead of failing."""
        self._skip_bad_files = True
        return self

    def expand(self, pbegin: beam.pvalue.PBegin
               ) -> beam.PCollection[RawListing] | tuple[beam.PCollection[RawListing], beam.PCollection[ErrorRecord]]:
        files = pbegin | "ListFiles" >> beam.Create(self._files)
        list_groups = beam.FlatMap(file_row_groups, self._attribute_columns, self._input_format, self._block_rows)
        read = beam.FlatMap(read_and_count, self._columns, self._attribute_columns)
        if not self._skip_bad_files:
            groups = files | "ListRowGroups" >> list_groups
            return groups | "SpreadRowGroups" >> beam.Reshuffle() | "ReadRowGroups" >> read
        groups, bad_files = files | "ListRowGroups" >> list_groups.with_exception_handling()
        listings, bad_groups = (groups | "SpreadRowGroups" >> beam.Reshuffle()
                                | "ReadRowGroups" >> read.with_exception_handling())
        errors = (bad_files, bad_groups) | "Unreadable" >> beam.Flatten() | "ReadErrors" >> beam.Map(read_error)
        return listings, errors

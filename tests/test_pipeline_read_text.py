"""CSV and JSON Lines inputs (``transforms/listings.py``): the format by extension or
``--input-format``, the schema check on the header or first lines, every column as text,
blocks of rows as the unit of reading, malformed rows as refused listings naming the row or
line, unreadable files as error rows, and the scan end to end on text inputs."""
from __future__ import annotations

import csv as csv_writer
import gzip
import io
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from pipeline_fixtures import ATTRS, fn_api_pipeline, image, listings_table, write_table
from pipeline_fixtures import matcher_fixture, model_dir_fixture  # noqa: F401 (fixtures)

import transforms.listings as listings
from ecomatch_model import cli
from ecomatch_model.sample import make_listings
from transforms.decode import ListingDecoder, ListingError
from transforms.listings import (InputFormatError, InputSchemaError, RawListing, ReadListings, TextBlock,
                                 UnreadableInputError, file_format, file_row_groups, read_row_group, survey_input)

COLUMNS = ["listing_id", "title", "image_uri", "base_colour", "article_type"]
CSV = (b"listing_id,title,image_uri,base_colour,description\n"
       b'00123,"Red, Cotton Shirt",a.png,Red,"two\nlines"\n'
       b"\n"
       b"7,Blue Dress,b.png,,\n"
       b"1e5,Navy Shirt,c.png,NA,x\n")


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def read_all(path: str, block_rows: int = listings.TEXT_BLOCK_ROWS, columns=COLUMNS) -> list[RawListing]:
    return [r for block in file_row_groups(path, list(ATTRS), block_rows=block_rows)
            for r in read_row_group(block, columns, list(ATTRS))]


@pytest.mark.parametrize("name, fmt", [
    ("a.parquet", "parquet"), ("a.PQ", "parquet"), ("a.csv", "csv"), ("a.csv.gz", "csv"), ("a.CSV.bz2", "csv"),
    ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.json", "jsonl"), ("a.jsonl.zst", "jsonl"),
    ("gs://b/x.y/part-0.csv", "csv"),
])
def test_the_format_is_told_by_the_extension(name: str, fmt: str):
    assert file_format(name) == fmt


@pytest.mark.parametrize("name", ["a.txt", "part-00000", "_SUCCESS", "a.parquet.gz", "a.csv.tmp", "gs://b/x.csv/part"])
def test_a_name_that_says_no_format_is_an_error_naming_the_file_unless_the_format_is_given(name: str):
    with pytest.raises(InputFormatError, match=rf"^{name}: cannot tell the input format.*--input-format"):
        file_format(name)
    assert file_format(name, "csv") == "csv"


def test_csv_columns_are_read_as_text_as_they_are(tmp_path: Path):
    path = write(tmp_path / "a.csv", CSV)
    survey = survey_input(path, list(ATTRS))
    assert (survey.files, survey.columns, survey.rows) == ([path], ["listing_id", "title", "image_uri",
                                                                   "base_colour"], None)
    # No type inference: the ids stay as written, "NA" is a colour like any other word, an
    # empty field is a missing value, a quoted comma or newline is part of its value.
    assert read_all(path) == [RawListing(path, "00123", "Red, Cotton Shirt", None, "a.png", {"base_colour": "Red"}),
                              RawListing(path, "7", "Blue Dress", None, "b.png", {}),
                              RawListing(path, "1e5", "Navy Shirt", None, "c.png", {"base_colour": "NA"})]


def test_a_text_value_that_is_not_utf8_is_refused_like_a_parquet_one(tmp_path: Path):
    csv = write(tmp_path / "a.csv", b"listing_id,title,image_uri\n1,Red \xff Shirt,a.png\n2,Blue Shirt,b.png\n")
    jsonl = write(tmp_path / "a.jsonl", b'{"listing_id": "1", "title": "Red \xff Shirt", "image_uri": "a.png"}\n'
                                        b'{"listing_id": "2", "title": "Blue Shirt", "image_uri": "b.png"}\n')
    parquet = write_table(tmp_path / "a.parquet", pa.table({"listing_id": ["1"], "image_uri": ["a.png"],
                                                            "title": pa.array([b"Red \xff Shirt"]).view(pa.string())}))
    why = {"title": "title is not valid UTF-8 (byte 0xff at offset 4)"}
    for path in (csv, jsonl):
        first, second = read_all(path, columns=["listing_id", "title", "image_uri"])
        assert (first.listing_id, first.invalid, second.invalid) == ("1", why, {})
    [group] = file_row_groups(parquet, [])
    assert read_row_group(group, ["listing_id", "title", "image_uri"], [])[0].invalid == why


@pytest.mark.parametrize("data, message", [
    (b"title,image_uri\nt,a.png\n", "missing required column 'listing_id'"),
    (b"listing_id,title\n1,t\n", "missing required column 'image_uri' (the photo's path or URL)"),
    (b"listing_id,title,image\n1,t,a.png\n", "column 'image' cannot hold image bytes in a CSV file; give each "
                                             "photo's path or URL in an 'image_uri' column instead"),
    (b"listing_id,title,image_uri,title\n1,t,a.png,u\n", "column 'title' appears 2 times"),
    (b"", "not a readable CSV file: Empty CSV file"),
])
def test_a_csv_header_is_checked_up_front_naming_file_and_column(tmp_path: Path, data: bytes, message: str):
    path = write(tmp_path / "a.csv", data)
    with pytest.raises(InputSchemaError) as err:
        survey_input(path, list(ATTRS))
    assert str(err.value) == f"{path}: {message}"
    assert survey_input(path, list(ATTRS), strict=False).bad == {path: f"{path}: {message}"}


@pytest.mark.parametrize("lines, message", [
    ([b'{"title": "t", "image_uri": "a.png"}'], "missing required column 'listing_id'"),
    ([b'{"listing_id": "1", "title": "t", "image": "a.png"}'],
     "column 'image' cannot hold image bytes in a JSON Lines file"),
    ([b'{"listing_id": 1, "title": "t", "image_uri": "a.png"}', b'{"listing_id": 2, "title": "u", "image_uri": "b"}'],
     "column 'listing_id' holds a number (line 1), expected a string: in JSON Lines every column read is a JSON "
     'string ("00123")'),
    ([b'{"listing_id": "1", "title": "t", "image_uri": "a.png", "base_colour": ["Red"]}'],
     "column 'base_colour' holds an array (line 1), expected a string"),
    ([b"[", b"  {", b'    "listing_id": "1", "title": "t", "image_uri": "a.png"', b"  }", b"]"],    # a JSON array
     "not a readable JSON Lines file: line 1 is not a JSON object"),
])
def test_the_first_json_lines_are_checked_up_front_naming_file_and_column(tmp_path: Path, lines, message):
    path = write(tmp_path / "a.jsonl", b"\n".join(lines) + b"\n")
    with pytest.raises(InputSchemaError) as err:
        survey_input(path, list(ATTRS))
    assert str(err.value).startswith(f"{path}: {message}")


def test_an_empty_json_lines_file_holds_no_listing_and_lines_of_empty_objects_are_refused(tmp_path: Path):
    empty = write(tmp_path / "a.jsonl", b"\n  \n")
    assert (survey_input(empty, []).columns, file_row_groups(empty, [])) == ([], [])
    objects = write(tmp_path / "b.jsonl", b"{}\n{}\n")
    with pytest.raises(InputSchemaError, match=r"b\.jsonl: missing required column 'listing_id'"):
        survey_input(objects, [])


def test_json_lines_read_strings_and_ignore_other_fields(tmp_path: Path):
    rows = [{"listing_id": "00123", "title": "Red Shirt", "image_uri": "a.png", "base_colour": "Red",
             "price": 12.5, "tags": ["a"], "seller": {"id": 3}},
            {"listing_id": "2", "title": "2026-11-26", "image_uri": "b.png", "base_colour": None}]
    # A byte-order mark, blank lines and a last line without its newline are no rows.
    path = write(tmp_path / "a.jsonl", b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n\n  \n"
                 + json.dumps(rows[1]).encode())
    assert survey_input(path, list(ATTRS)).columns == ["listing_id", "title", "image_uri", "base_colour"]
    assert read_all(path) == [RawListing(path, "00123", "Red Shirt", None, "a.png", {"base_colour": "Red"}),
                              RawListing(path, "2", "2026-11-26", None, "b.png", {})]


def test_malformed_text_rows_are_listings_that_decoding_refuses_naming_the_row(tmp_path: Path, matcher):
    csv = write(tmp_path / "a.csv", b"listing_id,title,image_uri\n1,Red Shirt,a.png\n2,Blue,Shirt,b.png\n"
                                    b"3\n4,Green Shirt,d.png\n")
    jsonl = write(tmp_path / "a.jsonl", b"\n".join([
        b"null",                                         # pyarrow's reader crashes on a first value null
        b'{"listing_id": "1", "title": "Red Shirt", "image_uri": "a.png"}',
        b'{"listing_id": "2", "title": 5, "image_uri": "b.png"}',
        b'{"listing_id": "3", "title": "Shirt" "image_uri": "c.png"}',
        b"",
        b'{"listing_id": "4", "title": "Shirt", "image_uri": "d.png"} {"listing_id": "5"}',
        b'["4"]',
        b'{"listing_id": "6", "title": "Shirt", "image_uri": "f.png", "title": "Dress"}',
        b'{"listing_id": 7, "title": "Green Shirt", "image_uri": "g.png"}',
        b'{"listing_id": "8", "title": "Green Shirt", "image_uri": "h.png"}']) + b"\n")
    decoder = ListingDecoder.from_matcher(matcher, {})

    def refused(path: str) -> list[tuple[str | None, str]]:
        out = []
        for raw in read_all(path, block_rows=3, columns=["listing_id", "title", "image_uri"]):
            try:
                decoder.check_text(raw)
                out.append((raw.listing_id, "ok"))
            except ListingError as exc:
                out.append((raw.listing_id, str(exc)))
        return sorted(out, key=lambda p: (p[0] or "", p[1]))

    assert refused(csv) == [(None, "malformed CSV row 3 (the header is row 1): expected 3 fields, got 4"),
                            (None, "malformed CSV row 4 (the header is row 1): expected 3 fields, got 1"),
                            ("1", "ok"), ("4", "ok")]
    assert refused(jsonl) == [
        (None, "line 1 is not a JSON object"),
        (None, "line 4 is not valid JSON: Missing a comma or '}' after an object member"),
        (None, "line 6 holds 2 JSON values, expected one object"),
        (None, "line 7 is not a JSON object"),
        (None, "line 8 is not valid JSON: Column(/title) was specified twice"),
        (None, "line 9: 'listing_id' is a number, expected a string"),
        ("1", "ok"), ("2", "line 3: 'title' is a number, expected a string"), ("8", "ok")]


def test_text_files_are_read_in_blocks_that_hold_every_row_once(tmp_path: Path, monkeypatch):
    rows = [f"{i},Shirt {i},{i}.png" for i in range(11)]
    csv = write(tmp_path / "a.csv", ("listing_id,title,image_uri\n" + "\n".join(rows[:5]) + "\n9,x\n"
                                     + "\n".join(rows[5:]) + "\n").encode())
    blocks = file_row_groups(csv, [], block_rows=4)
    assert [(b.index, b.count, b.start, b.rows, len(b.malformed)) for b in blocks] == \
        [(0, 3, 0, 4, 1), (1, 3, 4, 4, 0), (2, 3, 8, 3, 0)]
    assert [r.listing_id for r in read_all(csv, block_rows=4)] == [str(i) for i in range(4)] + [None] + \
        [str(i) for i in range(4, 11)]
    # A big CSV file is read in at most MAX_CSV_BLOCKS blocks: each is found from the file's start.
    monkeypatch.setattr(listings, "MAX_CSV_BLOCKS", 2)
    assert [(b.start, b.rows) for b in file_row_groups(csv, [], block_rows=4)] == [(0, 6), (6, 5)]

    jsonl = write(tmp_path / "a.jsonl.gz", gzip.compress(b"\n".join(
        json.dumps({"listing_id": str(i), "title": f"Shirt {i}", "image_uri": f"{i}.png"}).encode() + b"\n" * (i % 3)
        for i in range(11))))
    blocks = file_row_groups(jsonl, [], block_rows=4)
    assert [(b.rows, b.line) for b in blocks] == [(4, 1), (4, 8), (3, 16)]
    assert [r.listing_id for r in read_all(jsonl, block_rows=4)] == [str(i) for i in range(11)]
    [block] = [b for b in blocks if b.index == 1]
    assert [r.listing_id for r in read_row_group(block, COLUMNS, [], pa.array(["5", "9", "x"]))] == ["5"]


def test_read_listings_reads_parquet_csv_and_json_lines_alike(tmp_path: Path):
    jpeg = image()
    parquet = write_table(tmp_path / "a.parquet", listings_table([{"listing_id": "p", "title": "Red Shirt",
                                                                   "image": jpeg}]))
    csv = write(tmp_path / "b.csv", b"listing_id,title,image_uri,article_type\nc1,Blue Dress,c1.png,Dresses\n"
                                    b"c2,Red Shirt,c2.png,\nc3,x,y,z,w\n")
    jsonl = write(tmp_path / "c.ndjson.gz", gzip.compress(b'{"listing_id": "j1", "title": "Red Shirt", '
                                                          b'"image_uri": "j1.png"}\n[]\n'))
    survey = survey_input(str(tmp_path / "*"), list(ATTRS))
    assert survey.files == [parquet, csv, jsonl] and survey.rows is None
    p = fn_api_pipeline()
    out = p | ReadListings(survey.files, survey.columns, list(ATTRS), block_rows=1)
    assert_that(out | beam.Map(lambda r: (Path(r.source).name, r.listing_id, r.title, r.image_uri, r.attributes,
                                          sorted(r.invalid))), equal_to([
        ("a.parquet", "p", "Red Shirt", None, {}, []),
        ("b.csv", "c1", "Blue Dress", "c1.png", {"article_type": "Dresses"}, []),
        ("b.csv", "c2", "Red Shirt", "c2.png", {}, []),
        ("b.csv", None, None, None, {}, ["row"]),
        ("c.ndjson.gz", "j1", "Red Shirt", "j1.png", {}, []),
        ("c.ndjson.gz", None, None, None, {}, ["row"]),
    ]))
    result = p.run()
    result.wait_until_finish()
    [read] = result.metrics().query(MetricsFilter().with_name("read"))["counters"]
    assert read.committed == 6          # every row, malformed ones too: each is one listing


def test_a_text_file_that_cannot_be_read_stops_the_job_or_is_an_error_row(tmp_path: Path, monkeypatch):
    z = bytearray(gzip.compress(b"listing_id,title,image_uri\n1,Red Shirt,a.png\n", mtime=0))
    z[-12:-8] = bytes(4)                                        # its data check fails
    corrupt = write(tmp_path / "corrupt.csv.gz", bytes(z))
    monkeypatch.setattr(listings, "MAX_LINE_BYTES", 2000)
    monkeypatch.setattr(listings, "HEAD_BYTES", 100)
    line = json.dumps({"listing_id": "1", "title": "Red Shirt", "image_uri": "a.png"}).encode()
    long = write(tmp_path / "long.jsonl", line + b"\n" + line + b"\n" + b"x" * 3000 + b"\n" + line + b"\n")
    good = write(tmp_path / "good.csv", b"listing_id,title,image_uri\n1,Red Shirt,a.png\n")
    with pytest.raises(InputSchemaError, match=rf"^{corrupt}: not a readable CSV file: Error -3 while decompressing"):
        survey_input(str(tmp_path / "*"), [])
    survey = survey_input(str(tmp_path / "*"), [], strict=False)
    assert (survey.files, list(survey.bad)) == ([good, long], [corrupt])      # a long line past the head is found later
    with pytest.raises(UnreadableInputError, match=rf"^{long}: line 3 is longer than 2000 bytes$"):
        file_row_groups(long, [])
    p = fn_api_pipeline()
    read = ReadListings([*survey.files, *survey.bad], ["listing_id", "title", "image_uri"], [])
    listings_, errors = p | read.with_exception_handling()
    assert_that(listings_ | beam.Map(lambda r: r.source), equal_to([good]))
    assert_that(errors | beam.Map(lambda e: (e.listing_id, e.source, e.stage, e.error_type)),
                equal_to([(None, corrupt, "read", "InputSchemaError"), (None, long, "read", "UnreadableInputError")]),
                label="Errors")
    p.run().wait_until_finish()


def test_a_text_block_that_changed_since_it_was_listed_is_unreadable_naming_it(tmp_path: Path):
    path = write(tmp_path / "a.csv", b"listing_id,title,image_uri\n1,a,a\n2,b,b\n3,c,c\n")
    block = TextBlock(path, "csv", 1, 2, 2, start=2)
    with pytest.raises(UnreadableInputError, match=rf"^{path}: rows 3-4 \(block 2 of 2\) cannot be read: "
                                                   "ValueError: the file has 3 rows, fewer than when"):
        read_row_group(block, COLUMNS, [])


# ---------------------------------------------------------------------------- the scan on text inputs
def text_catalogue(root: Path, n: int) -> list[dict]:
    """``n`` synthetic listings with their photos as files under ``root/images``, as rows."""
    table = make_listings(n, seed=7, size=64)
    rows = []
    for row in table.to_pylist():
        photo = root / "images" / f"{row['listing_id']}.jpg"
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(row.pop("image"))
        rows.append({"listing_id": row["listing_id"], "title": row["title"], "image_uri": str(photo),
                     "base_colour": row["base_colour"], "article_type": row["article_type"]})
    return rows


def test_scan_of_csv_and_json_lines_then_an_incremental_rescan(tmp_path: Path, model_dir: str, capsys):
    rows = text_catalogue(tmp_path / "in", 8)
    text = io.StringIO()
    writer = csv_writer.writer(text, lineterminator="\n")
    writer.writerows([list(rows[0]), *(r.values() for r in rows[:4]), ["broken", "row"]])
    write(tmp_path / "in" / "a.csv", text.getvalue().encode())
    write(tmp_path / "in" / "b.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows[4:]) + b"{oops\n")
    out, again = tmp_path / "out", tmp_path / "again"
    args = ["--input", str(tmp_path / "in" / "*.*"), "--model", model_dir, "--batch-size", "4"]
    assert cli.main(["scan", *args, "--output", str(out)]) == 0
    assert "read 10 listings: 8 scored" in capsys.readouterr().out
    scores = pq.read_table(out / "scores").to_pylist()
    errors = pq.read_table(out / "errors").to_pylist()
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["listing_id"] for r in scores) == sorted(r["listing_id"] for r in rows)
    assert sorted((Path(e["source"]).name, e["stage"], e["error_type"], e["message"]) for e in errors) == [
        ("a.csv", "decode", "ListingError", "malformed CSV row 6 (the header is row 1): expected 5 fields, got 2"),
        ("b.jsonl", "decode", "ListingError", "line 5 is not valid JSON: Missing a name for object member")]
    assert (summary["counts"]["read"], summary["counts"]["errors"]) == (10, 2)
    assert (out / "report.html").is_file()

    # The same text inputs against that run: every listing keeps its verdict unscored.
    assert cli.main(["scan", *args, "--output", str(again), "--state", str(out)]) == 0
    summary = json.loads((again / "summary.json").read_text())
    assert (summary["incremental"]["carried"], summary["incremental"]["scored"]) == (8, 0)
    assert sorted((r["listing_id"], r["verdict"]) for r in pq.read_table(again / "scores").to_pylist()) == \
        sorted((r["listing_id"], r["verdict"]) for r in scores)


def test_scan_reads_a_text_file_of_any_name_with_input_format(tmp_path: Path, model_dir: str, capsys):
    rows = text_catalogue(tmp_path / "in", 2)
    export = write(tmp_path / "in" / "export.txt", b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    args = ["--input", export, "--model", model_dir]
    assert cli.main(["scan", *args, "--output", str(tmp_path / "out")]) == 2
    assert f"{export}: cannot tell the input format" in capsys.readouterr().err
    assert cli.main(["scan", *args, "--output", str(tmp_path / "out"), "--input-format", "jsonl"]) == 0
    assert "read 2 listings: 2 scored" in capsys.readouterr().out

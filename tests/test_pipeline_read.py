"""ReadListings and the input schema check."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from pipeline_fixtures import ATTRS, fn_api_pipeline, image, listings_table, write_table

from transforms.listings import InputSchemaError, RawListing, ReadListings, check_schema, survey_input


def test_check_schema_reads_present_columns_only():
    schema = pa.schema([("listing_id", pa.string()), ("title", pa.large_string()), ("image", pa.binary()),
                        ("base_colour", pa.null()), ("description", pa.string())])
    assert check_schema("f.parquet", schema, list(ATTRS)) == ["listing_id", "title", "image", "base_colour"]


@pytest.mark.parametrize("schema, message", [
    (pa.schema([("title", pa.string()), ("image", pa.binary())]), "f.parquet: missing required column 'listing_id'"),
    (pa.schema([("listing_id", pa.string()), ("title", pa.string())]),
     "f.parquet: missing required column 'image' (binary) or 'image_uri' (string)"),
    (pa.schema([("listing_id", pa.int64()), ("title", pa.string()), ("image", pa.binary())]),
     "f.parquet: column 'listing_id' has type int64, expected string"),
    (pa.schema([("listing_id", pa.string()), ("title", pa.string()), ("image", pa.string())]),
     "f.parquet: column 'image' has type string, expected binary"),
    (pa.schema([("listing_id", pa.string()), ("title", pa.string()), ("image_uri", pa.binary())]),
     "f.parquet: column 'image_uri' has type binary, expected string"),
    (pa.schema([("listing_id", pa.string()), ("title", pa.string()), ("image", pa.binary()),
                ("base_colour", pa.int32())]), "f.parquet: column 'base_colour' has type int32, expected string"),
])
def test_check_schema_names_file_and_column(schema, message):
    with pytest.raises(InputSchemaError) as exc:
        check_schema("f.parquet", schema, list(ATTRS))
    assert str(exc.value) == message


def test_survey_input_stops_at_the_bad_file(tmp_path: Path):
    write_table(tmp_path / "a.parquet", listings_table([{"listing_id": "x", "title": "t", "image": b"i"}]))
    write_table(tmp_path / "b.parquet", pa.table({"listing_id": ["y"], "image": [b"i"]}))
    with pytest.raises(InputSchemaError, match=r"b\.parquet: missing required column 'title'"):
        survey_input(str(tmp_path / "*.parquet"), list(ATTRS))
    (tmp_path / "c.txt").write_text("not parquet")
    with pytest.raises(InputSchemaError, match=r"c\.txt: not a readable Parquet file"):
        survey_input(str(tmp_path / "c.txt"), list(ATTRS))
    with pytest.raises(InputSchemaError, match="no files match"):
        survey_input(str(tmp_path / "none-*.parquet"), list(ATTRS))


def test_survey_input_unions_columns_over_files(tmp_path: Path):
    a = write_table(tmp_path / "a.parquet", pa.table({"listing_id": ["x"], "title": ["t"], "image": [b"i"]}))
    b = write_table(tmp_path / "b.parquet", pa.table({"listing_id": ["y"], "title": ["u"], "image_uri": ["p"],
                                                      "article_type": ["Shirts"], "extra": [1]}))
    survey = survey_input(str(tmp_path / "*.parquet"), list(ATTRS))
    files, columns = survey.files, survey.columns
    assert files == [a, b]
    assert columns == ["listing_id", "title", "image", "image_uri", "article_type"]


def test_read_listings_reads_every_row_with_its_file(tmp_path: Path):
    jpeg = image()
    a = write_table(tmp_path / "a.parquet", listings_table([
        {"listing_id": "1", "title": "Red Shirt", "image": jpeg, "base_colour": "Red", "article_type": ""},
        {"listing_id": "2", "title": None, "image_uri": "gs://b/2.jpg"},
    ]))
    b = write_table(tmp_path / "b.parquet", pa.table({"listing_id": ["3"], "title": ["Blue Dress"],
                                                      "image": [jpeg], "unused": ["x"]}))
    columns = ["listing_id", "title", "image", "image_uri", "base_colour", "article_type"]
    with fn_api_pipeline() as p:
        out = p | ReadListings([a, b], columns, list(ATTRS))
        assert_that(out, equal_to([
            RawListing(a, "1", "Red Shirt", jpeg, None, {"base_colour": "Red"}),
            RawListing(a, "2", None, None, "gs://b/2.jpg", {}),
            RawListing(b, "3", "Blue Dress", jpeg, None, {}),
        ]))


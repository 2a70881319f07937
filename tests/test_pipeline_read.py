"""ReadListings and the input schema check."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.worker import statesampler
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils import counters
from hostile import corrupt_page
from pipeline_fixtures import ATTRS, fn_api_pipeline, image, listings_table, write_table

from transforms.listings import (InputFormatError, InputSchemaError, RawListing, ReadListings, check_schema,
                                 file_row_groups, read_and_count, read_row_group, survey_input, to_raw_listing)


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
    # a duplicate column is named as such (it used to read "column 'title' has type int64")
    (pa.schema([("listing_id", pa.string()), ("title", pa.string()), ("image", pa.binary()), ("title", pa.int64())]),
     "f.parquet: column 'title' appears 2 times"),
    (pa.schema([("listing_id", pa.string()), ("title", pa.string()), ("image", pa.binary()),
                ("base_colour", pa.string()), ("base_colour", pa.string())]),
     "f.parquet: column 'base_colour' appears 2 times"),
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
        survey_input(str(tmp_path / "c.txt"), list(ATTRS), input_format="parquet")
    # By extension (the default), a name that says no format is a configuration error, even
    # when bad files are skipped.
    with pytest.raises(InputFormatError, match=r"c\.txt: cannot tell the input format .*--input-format"):
        survey_input(str(tmp_path / "*"), list(ATTRS), strict=False)
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



@contextmanager
def running_step(name: str) -> Iterator[MetricsContainer]:
    """A metrics container made current as a runner does while step ``name`` runs, so that
    any Beam counter incremented meanwhile lands in it; yields it."""
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    container = MetricsContainer(name)
    try:
        sampler.start()
        with sampler.scoped_state(name, "process", metrics_container=container):
            yield container
    finally:
        sampler.stop()
        statesampler.set_current_tracker(None)


def counted(container: MetricsContainer) -> dict[str, int]:
    return {key.metric.name: n for key, n in container.get_cumulative().counters.items()}


COLUMNS = ["listing_id", "title", "image", "base_colour"]


def test_converting_and_reading_rows_count_nothing_only_the_pipeline_step_counts(tmp_path: Path):
    path = write_table(tmp_path / "a.parquet", listings_table(
        [{"listing_id": str(i), "title": f"Shirt {i}", "image": b"i", "base_colour": "Red"} for i in range(3)]))
    [group] = file_row_groups(path, list(ATTRS))
    with running_step("HtmlReport") as container:        # the report writer's use, outside ReadListings
        assert to_raw_listing((path, {"listing_id": "x", "title": "t", "base_colour": "Red"}), list(ATTRS)) == \
            RawListing(path, "x", "t", None, None, {"base_colour": "Red"})
        assert [r.listing_id for r in read_row_group(group, COLUMNS, list(ATTRS))] == ["0", "1", "2"]
        assert read_row_group(group, COLUMNS, list(ATTRS), pa.array(["2", "9"])) == \
            [RawListing(path, "2", "Shirt 2", b"i", None, {"base_colour": "Red"})]
        assert read_row_group(group, COLUMNS, list(ATTRS), pa.array([], pa.string())) == []
        assert counted(container) == {}
        assert len(read_and_count(group, COLUMNS, list(ATTRS))) == 3     # the pipeline's step: once per row
        assert counted(container) == {"read": 3}


def test_read_listings_counts_each_row_read_exactly_once(tmp_path: Path):
    rows = [{"listing_id": str(i), "title": f"Shirt {i}", "image": b"i"} for i in range(4)]
    good = write_table(tmp_path / "good.parquet", listings_table(rows[:3]))
    bad = corrupt_page(listings_table(rows), tmp_path / "bad.parquet")      # its second row group is unreadable
    p = fn_api_pipeline()
    listings, errors = p | ReadListings([good, bad], COLUMNS, list(ATTRS)).with_exception_handling()
    assert_that(listings | beam.Map(lambda r: r.listing_id), equal_to(["0", "1", "2", "0", "1"]))
    assert_that(errors | beam.Map(lambda e: e.error_type), equal_to(["UnreadableInputError"]), label="Errors")
    result = p.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace("ecomatch"))["counters"]
    assert sorted((c.key.metric.name, c.committed) for c in found) == [("read", 5), ("skipped_inputs", 1)]

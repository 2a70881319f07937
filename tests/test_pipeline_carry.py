"""Violations reviewers can act on: violation rows carry the title, image_uri (credentials
masked), the source file and the ``--carry-columns``; with a seller column, summary.json and
the report list the sellers with the most violations; ``--state`` carries rows forward with
the listing's columns as read now."""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_policy
from pipeline_fixtures import fn_api_pipeline, image, matcher_fixture, model_dir_fixture  # noqa: F401 (fixtures)
from test_pipeline_reports import info
from test_pipeline_scan import scan

from ecomatch_model.sample import make_listings
from transforms.decode import ListingContext
from transforms.flag import Verdict
from transforms.listings import RawListing
from transforms.reports import TOP_SELLERS, VIOLATIONS_SCHEMA, WriteReports, sellers_block, violations_schema

SECRET_URI = "https://reviewer:hunter2@cdn.example.com/x.jpg?X-Goog-Signature=abcdef&w=1"


def catalogue(tmp: Path, n: int = 12) -> tuple[Path, pa.Table]:
    """``n`` sample listings with seller_id (4 sellers), product_url, and the first one's
    photo behind a local image_uri instead of inline."""
    table = make_listings(n, seed=5, size=48)
    png = tmp / "in" / "img" / "p.png"              # under the input's folder: the default allow-list
    png.parent.mkdir(parents=True)
    png.write_bytes(image("PNG"))
    images = table.column("image").to_pylist()
    table = (table.set_column(table.schema.get_field_index("image"), "image", pa.array([None] + images[1:], pa.binary()))
             .append_column("image_uri", pa.array([str(png)] + [None] * (n - 1), pa.string()))
             .append_column("seller_id", pa.array([f"s{i % 4}" for i in range(n)], pa.string()))
             .append_column("product_url", pa.array([f"https://shop.example/p/{i}" for i in range(n)], pa.string())))
    shard = tmp / "in" / "listings.parquet"
    pq.write_table(table, shard)
    return shard, table


def all_fail(tmp: Path, model_dir: str) -> str:
    kinds = json.loads((Path(model_dir) / "lexicon.json").read_text())["kinds"]
    return write_policy(tmp / "fail.json", {"match": 1.5, **{k["kind"]: 1.5 for k in kinds}})


def test_violation_rows_carry_title_image_uri_source_and_columns(tmp_path: Path, model_dir):
    shard, table = catalogue(tmp_path)
    out = tmp_path / "out"
    assert scan("--input", str(shard), "--output", str(out), "--model", model_dir, "--calibration",
                all_fail(tmp_path, model_dir), "--carry-columns", "product_url,seller_id") == 0
    violations = pq.read_table(out / "violations")
    assert violations.schema.equals(violations_schema(["product_url", "seller_id"]))
    assert violations.schema.names[:len(VIOLATIONS_SCHEMA)] == VIOLATIONS_SCHEMA.names
    got = {r["listing_id"]: r for r in violations.to_pylist()}
    source = table.to_pylist()
    assert set(got) == {r["listing_id"] for r in source}                # the all-fail calibration flags all
    for r in source:
        v = got[r["listing_id"]]
        assert (v["title"], v["image_uri"], v["source"], v["seller_id"], v["product_url"]) == (
            r["title"], r["image_uri"], str(shard), r["seller_id"], r["product_url"])
    assert sum(v["image_uri"] is not None for v in got.values()) == 1
    # The scores stay as they were: nothing of the listing's is written for every row.
    assert pq.read_schema(next((out / "scores").glob("*.parquet"))).names == \
        ["listing_id", "verdict", "severity", "match_score", "worst_kind", "content_hash"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["carry_columns"] == ["product_url", "seller_id"]
    assert summary["sellers"] == {"column": "seller_id", "with_violations": 4, "top": [
        {"seller": f"s{i}", "violations": 3, "scored": 3, "share": 1.0} for i in range(4)]}
    page = (out / "report.html").read_text()
    assert page.count('<tr class="seller">') == 4 and "https://shop.example/p/3" in page


def test_without_carry_columns_the_rows_still_say_title_and_source(tmp_path: Path, model_dir):
    shard, table = catalogue(tmp_path)
    out = tmp_path / "out"
    assert scan("--input", str(shard), "--output", str(out), "--model", model_dir, "--calibration",
                all_fail(tmp_path, model_dir)) == 0
    violations = pq.read_table(out / "violations")
    assert violations.schema.equals(VIOLATIONS_SCHEMA)
    assert {r["title"] for r in violations.to_pylist()} == set(table.column("title").to_pylist())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sellers"] is None and summary["carry_columns"] == []
    assert 'id="sellers"' not in (out / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--carry-columns", "seller_id,shop_name"], "--carry-columns: no input file has column(s) 'shop_name'"),
    (["--carry-columns", "seller_id,,product_url"], "--carry-columns: empty column name"),
    (["--carry-columns", "seller_id,title"], "--carry-columns: title already in violations/ rows"),
    (["--carry-columns", "seller_id,seller_id"], "a column is named twice"),
    (["--seller-column", "vendor"], "no input file has column(s) 'vendor'"),
    (["--carry-columns", "rank"], "column 'rank' has type int64, expected string"),
])
def test_bad_carry_columns_are_one_line_errors(tmp_path: Path, model_dir, capsys, args, message):
    shard, table = catalogue(tmp_path)
    pq.write_table(table.append_column("rank", pa.array(range(len(table)), pa.int64())), shard)
    out = tmp_path / "out"
    assert scan("--input", str(shard), "--output", str(out), "--model", model_dir, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_context_masks_credentials_in_image_uri(matcher):
    from transforms.decode import ListingDecoder
    decoder = ListingDecoder.from_matcher(matcher, {}, carry_columns=["seller_id", "product_url"])
    ctx = decoder.context(RawListing("f.parquet", "a", "Red Shirt", image_uri=SECRET_URI,
                                     attributes={"seller_id": "s1"}))
    assert ctx == ListingContext("Red Shirt", "https://***@cdn.example.com/x.jpg?X-Goog-Signature=***&w=1",
                                 (("seller_id", "s1"), ("product_url", None)))
    signed = decoder.context(RawListing("f.parquet", "a", "t", attributes={"product_url": SECRET_URI}))
    assert signed.get("product_url") == "https://***@cdn.example.com/x.jpg?X-Goog-Signature=***&w=1"
    assert "hunter2" not in repr(ctx) and ctx.get("seller_id") == "s1" and ctx.get(None) is None


def _verdict(i: int, seller: str | None, violation: bool) -> Verdict:
    return Verdict(f"L{i}", "violation" if violation else "ok", 0.9 if violation else 0.1, 0.0,
                   "colour" if violation else None, "h", seller=seller,
                   context=ListingContext(f"t{i}", None, (("seller_id", seller),)) if violation else None)


def test_write_reports_ranks_sellers_by_violations_then_share(tmp_path: Path):
    # s1: 3 of 3, s2: 3 of 6, s3: 1 of 1, s4: 0 of 2, no seller: 2 violations; 22 more sellers of 1 of 2.
    spec = [("s1", 3, 3), ("s2", 3, 6), ("s3", 1, 1), ("s4", 0, 2), (None, 2, 2)] + \
        [(f"z{k:02d}", 1, 2) for k in range(22)]
    verdicts, i = [], 0
    for seller, bad, n in spec:
        for j in range(n):
            verdicts.append(_verdict(i, seller, j < bad))
            i += 1
    n_bad = sum(v.verdict == "violation" for v in verdicts)
    base = info(tmp_path / "out")
    scan_info = type(base)(**{**base.__dict__, "carry_columns": ["seller_id"], "seller_column": "seller_id"})
    with fn_api_pipeline() as p:
        _ = {"listings": p | "L" >> beam.Create(range(len(verdicts))), "verdicts": p | "V" >> beam.Create(verdicts),
             "errors": p | "E" >> beam.Create([])} | WriteReports(scan_info)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    top = summary["sellers"]["top"]
    assert summary["counts"]["violations"] == n_bad and summary["sellers"]["with_violations"] == 25
    assert len(top) == TOP_SELLERS
    assert [(r["seller"], r["violations"], r["scored"], r["share"]) for r in top[:4]] == [
        ("s1", 3, 3, 1.0), ("s2", 3, 6, 0.5), ("s3", 1, 1, 1.0), ("z00", 1, 2, 0.5)]
    assert [r["seller"] for r in top[3:]] == [f"z{k:02d}" for k in range(17)]
    rows = pq.read_table(tmp_path / "out" / "violations").to_pylist()
    assert {r["seller_id"] for r in rows} == {s for s, bad, _ in spec if bad}
    assert sellers_block(None, [], []) is None


def test_state_carries_rows_forward_with_the_columns_as_read_now(tmp_path: Path, model_dir):
    shard, table = catalogue(tmp_path)
    policy = all_fail(tmp_path, model_dir)
    first = tmp_path / "first"
    assert scan("--input", str(shard), "--output", str(first), "--model", model_dir, "--calibration", policy,
                "--carry-columns", "seller_id") == 0
    # The seller is not in the content hash: the verdict is carried, the row says the new seller.
    moved = table.set_column(table.schema.get_field_index("seller_id"), "seller_id",
                             pa.array(["s9"] * len(table), pa.string()))
    pq.write_table(moved, shard)
    second = tmp_path / "second"
    assert scan("--input", str(shard), "--output", str(second), "--model", model_dir, "--calibration", policy,
                "--carry-columns", "seller_id", "--state", str(first)) == 0
    summary = json.loads((second / "summary.json").read_text())
    assert summary["incremental"]["carried"] == len(table) and summary["incremental"]["scored"] == 0
    rows = pq.read_table(second / "violations").to_pylist()
    assert len(rows) == len(table) and {r["seller_id"] for r in rows} == {"s9"}
    assert {r["title"] for r in rows} == set(table.column("title").to_pylist())
    assert summary["sellers"]["top"] == [{"seller": "s9", "violations": len(table), "scored": len(table),
                                          "share": 1.0}]

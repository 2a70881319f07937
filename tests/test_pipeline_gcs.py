"""The scan against object storage: a real local GCS server (gcp-storage-emulator) on
127.0.0.1, gs:// input (Parquet, CSV, JSON Lines) and output through Beam's GCS filesystem,
an image_uri read through fsspec/gcsfs, and the reports read back through gcsfs. Nothing
leaves loopback."""
from __future__ import annotations

import gzip
import io
import json
import time
from pathlib import Path

import apache_beam as beam
import fsspec
import gcsfs
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.util import assert_that, equal_to
from pipeline_fixtures import BUCKET, fn_api_pipeline, image, listings_table
from pipeline_fixtures import emulator, gcs, model_dir_fixture  # noqa: F401 (fixtures)

from ecomatch_model.sample import make_listings
from transforms.listings import ReadListings, survey_input
from transforms.reports import ERRORS_SCHEMA, SCORES_SCHEMA, VIOLATIONS_SCHEMA
from transforms.storage import EMULATOR_ENV, use_storage_emulator


def test_emulator_variable_alone_sends_every_gs_client_there(emulator: str, monkeypatch):
    monkeypatch.setitem(fsspec.config.conf, "gs", {})
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    assert not use_storage_emulator() and fsspec.config.conf["gs"] == {}
    monkeypatch.setenv(EMULATOR_ENV, emulator)
    started = time.monotonic()
    assert use_storage_emulator() and fsspec.config.conf["gs"] == {"token": "anon"}
    # Beam's GCS filesystem writes, gcsfs (as fsspec builds it for image_uri) reads, and the
    # other way round; without the settled credentials Beam's lookup alone takes about 30 s.
    with FileSystems.create(f"gs://{BUCKET}/probe/beam.txt") as f:
        f.write(b"from beam")
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    assert fs.cat_file(f"{BUCKET}/probe/beam.txt") == b"from beam"
    fs.pipe_file(f"{BUCKET}/probe/gcsfs.txt", b"from gcsfs")
    with FileSystems.open(f"gs://{BUCKET}/probe/gcsfs.txt") as f:
        assert f.read() == b"from gcsfs"
    assert time.monotonic() - started < 10


def test_scan_reads_and_writes_gcs(gcs: gcsfs.GCSFileSystem, model_dir: str, tmp_path: Path):
    table = make_listings(6, seed=5, size=64)
    for k in range(2):
        with gcs.open(f"{BUCKET}/in/listings-{k}.parquet", "wb") as f:
            pq.write_table(table.slice(3 * k, 3), f)
    gcs.pipe(f"{BUCKET}/images/u.png", image("PNG", (20, 40, 200)))
    with gcs.open(f"{BUCKET}/in/listings-uri.parquet", "wb") as f:
        pq.write_table(listings_table([{"listing_id": "uri", "title": "Kestrel Women Blue Dress",
                                        "image_uri": f"gs://{BUCKET}/images/u.png"},
                                       {"listing_id": "gone", "title": "Kestrel Women Blue Dress",
                                        "image_uri": f"gs://{BUCKET}/images/missing.png"}]), f)
    gcs.pipe(f"{BUCKET}/out/scores/part-00000-of-00009.parquet", b"stale output of an earlier run")

    from ecomatch_model import cli
    assert cli.main(["scan", "--input", f"gs://{BUCKET}/in/*.parquet", "--output", f"gs://{BUCKET}/out",
                     "--model", model_dir, "--batch-size", "4"]) == 0

    gcs.invalidate_cache()
    tables = {}
    for name, schema in (("scores", SCORES_SCHEMA), ("violations", VIOLATIONS_SCHEMA), ("errors", ERRORS_SCHEMA)):
        files = sorted(gcs.glob(f"{BUCKET}/out/{name}/*.parquet"))
        tables[name] = [pq.read_table(io.BytesIO(gcs.cat_file(p))) for p in files]
        assert all(t.schema == schema for t in tables[name]), name
    scores = [r for t in tables["scores"] for r in t.to_pylist()]
    errors = [r for t in tables["errors"] for r in t.to_pylist()]
    summary = json.loads(gcs.cat_file(f"{BUCKET}/out/summary.json"))
    assert sorted(r["listing_id"] for r in scores) == sorted(table.column("listing_id").to_pylist() + ["uri"])
    assert [(e["listing_id"], e["error_type"], e["source"]) for e in errors] == [
        ("gone", "FileNotFoundError", f"gs://{BUCKET}/in/listings-uri.parquet")]
    assert summary["counts"]["read"] == 8 and summary["counts"]["scored"] == 7 and summary["counts"]["errors"] == 1
    assert summary["files"]["scores"] == ["scores/" + p.rsplit("/", 1)[1]
                                          for p in sorted(gcs.glob(f"{BUCKET}/out/scores/*.parquet"))]
    assert not gcs.exists(f"{BUCKET}/out/scores/part-00000-of-00009.parquet")


def test_text_inputs_are_read_from_gcs(gcs: gcsfs.GCSFileSystem):
    gcs.pipe(f"{BUCKET}/text/a.csv", b"listing_id,title,image_uri\n00123,Red Shirt,gs://b/a.png\n2,Blue,Dress,x\n")
    gcs.pipe(f"{BUCKET}/text/b.jsonl.gz", gzip.compress(
        b'{"listing_id": "j1", "title": "Red Shirt", "image_uri": "gs://b/j1.png"}\n'
        b'{"listing_id": "j2", "title": "Blue Dress", "image_uri": "gs://b/j2.png"}\n'))
    use_storage_emulator()
    survey = survey_input(f"gs://{BUCKET}/text/*", [])
    assert survey.files == [f"gs://{BUCKET}/text/a.csv", f"gs://{BUCKET}/text/b.jsonl.gz"]
    with fn_api_pipeline() as p:
        out = p | ReadListings(survey.files, survey.columns, [], block_rows=1)
        assert_that(out | beam.Map(lambda r: (r.source.rsplit("/", 1)[1], r.listing_id, r.image_uri, bool(r.invalid))),
                    equal_to([("a.csv", "00123", "gs://b/a.png", False), ("a.csv", None, None, True),
                              ("b.jsonl.gz", "j1", "gs://b/j1.png", False),
                              ("b.jsonl.gz", "j2", "gs://b/j2.png", False)]))

"""The scan against object storage: a real local GCS server (gcp-storage-emulator) on
127.0.0.1, gs:// input and output through Beam's GCS filesystem, an image_uri read through
fsspec/gcsfs, and the reports read back through gcsfs. Nothing leaves loopback."""
from __future__ import annotations

import os


import io  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import fsspec  # noqa: E402
import gcsfs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from apache_beam.internal.gcp import auth  # noqa: E402
from pipeline_fixtures import image, listings_table  # noqa: E402
from pipeline_fixtures import model_dir_fixture  # noqa: E402,F401 (fixtures)

from ecomatch_model.sample import make_listings  # noqa: E402
from transforms.reports import ERRORS_SCHEMA, SCORES_SCHEMA, VIOLATIONS_SCHEMA  # noqa: E402

BUCKET = "ecomatch-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """A gcp-storage-emulator process on 127.0.0.1 with an empty bucket; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                             f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gcp-storage-emulator did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def gcs(emulator: str, monkeypatch) -> gcsfs.GCSFileSystem:
    """Point every client at the emulator, anonymously: Beam's GCS filesystem
    (google-cloud-storage honours STORAGE_EMULATOR_HOST; Beam's credential lookup is
    settled as "none", so it never probes Google auth or the metadata server) and
    fsspec's gcsfs (token "anon")."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
    return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)


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

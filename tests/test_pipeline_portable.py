"""The scan under Beam's portable framework, the one Dataflow's Runner v2 runs: ``PortableRunner``
against Beam's own local job service (``local_job_service_main``, started here on 127.0.0.1),
the SDK harness in this process (``--environment_type LOOPBACK``). Its reports must equal the
in-process ``FnApiRunner``'s on the same catalogue, bad rows included.

Marked ``portable`` (``-m "not portable"`` leaves it out); about 20 s on two cores."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import (listings_table, local_server, mixed_rows, model_dir_fixture,  # noqa: F401 (fixture)
                               write_table)

from ecomatch_model.sample import make_listings
from pipelines.scan import run

pytestmark = pytest.mark.portable


@pytest.fixture(scope="module")
def job_service() -> Iterator[str]:
    """Beam's local job service on 127.0.0.1; yields its endpoint."""
    with local_server(lambda port: [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                    "--port", str(port)], "Beam's local job service", 60) as port:
        yield f"127.0.0.1:{port}"


def reports(prefix: Path) -> dict[str, object]:
    """Every report row (sorted, whatever the sharding) and the summary's run-independent parts."""
    out: dict[str, object] = {}
    for name in ("scores", "violations", "errors"):
        rows = pa.concat_tables([pq.read_table(p) for p in sorted((prefix / name).glob("*.parquet"))]).to_pylist()
        out[name] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    summary = json.loads((prefix / "summary.json").read_text())
    out["summary"] = {k: summary[k] for k in ("counts", "duplicates", "skipped_inputs", "incremental", "model",
                                              "calibration", "scoring_rules", "input")}
    return out


def test_portable_runner_writes_what_the_in_process_runner_writes(job_service: str, model_dir: str, tmp_path: Path):
    write_table(tmp_path / "in" / "listings-0.parquet", make_listings(16, seed=11, size=48))
    write_table(tmp_path / "in" / "listings-bad.parquet", listings_table(mixed_rows(tmp_path)))
    common = ["--input", str(tmp_path / "in" / "*.parquet"), "--model", model_dir, "--batch-size", "4",
              "--image-uri-prefix", str(tmp_path / "images")]

    run([*common, "--output", str(tmp_path / "fn")], save_main_session=False)
    result = run([*common, "--output", str(tmp_path / "portable"), "--runner", "PortableRunner",
                  "--job_endpoint", job_service, "--environment_type", "LOOPBACK"], save_main_session=False)

    assert str(result.state) == "DONE"
    fn, portable = reports(tmp_path / "fn"), reports(tmp_path / "portable")
    assert fn["summary"]["counts"]["read"] == 22 and fn["summary"]["counts"]["errors"] == 3
    assert fn["violations"] and fn["errors"], "the comparison must cover violations and error rows"
    assert portable == fn
    runners = [json.loads((tmp_path / p / "summary.json").read_text())["runner"] for p in ("fn", "portable")]
    assert runners == ["FnApiRunner", "PortableRunner"]
    assert (tmp_path / "portable" / "report.html").stat().st_size > 0

"""The flex template's launch, offline: infra.launch builds the scan for DataflowRunner the way
Dataflow's launcher runs it (``--template_location``), against a local GCS emulator with
credentials disabled, and the job description it writes asks for what the GPU workers need.

Everything before the Dataflow service runs here: the launcher-side checks and clear-out on
gs://, the job graph (incremental, against yesterday's run), staging to gs:// and the job
file. Only what follows needs Google Cloud: the service reading the job file, creating the
job and starting workers."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import gcsfs
import pyarrow.parquet as pq
from apache_beam.portability.api import beam_runner_api_pb2
from pipeline_fixtures import BUCKET, emulator, gcs  # noqa: F401 (fixtures)

from ecomatch_model import load
from ecomatch_model.sample import make_listings
from infra import launch
from ecomatch_model.verdict import describe
from transforms.reports import SCORES_SCHEMA, SCORING_RULES, VIOLATIONS_SCHEMA

IMAGE = "us-central1-docker.pkg.dev/shop-prod/ecomatch/worker:0123456789ab"
DAY = dt.date(2026, 11, 26)


def test_launch_writes_gpu_job_without_submitting(gcs: gcsfs.GCSFileSystem, tmp_path: Path, monkeypatch):
    with gcs.open(f"{BUCKET}/catalogue/listings-0.parquet", "wb") as f:
        pq.write_table(make_listings(4, seed=3, size=48), f)
    gcs.pipe(f"{BUCKET}/reports/2026-11-26/summary.json", b"{}")      # an earlier run of the same night
    # Yesterday's complete run, with the same model and calibration: its verdicts can be carried forward.
    model = load("default", device="cpu")
    gcs.pipe(f"{BUCKET}/reports/2026-11-25/summary.json", json.dumps({
        "model": {"sha256": model.sha256}, "calibration": describe(model.policy, "checkpoint"),
        "scoring_rules": SCORING_RULES,
        "files": {"scores": ["scores/part-00000-of-00001.parquet"],
                  "violations": ["violations/part-00000-of-00001.parquet"]}}).encode())
    for name, schema in (("scores", SCORES_SCHEMA), ("violations", VIOLATIONS_SCHEMA)):   # its shards, readable
        with gcs.open(f"{BUCKET}/reports/2026-11-25/{name}/part-00000-of-00001.parquet", "wb") as f:
            pq.write_table(schema.empty_table(), f)
    monkeypatch.setenv(launch.IMAGE_ENV, IMAGE)
    job_file = tmp_path / "job.json"

    result = launch.main(["--input", f"gs://{BUCKET}/catalogue/*.parquet",
                          "--output", f"gs://{BUCKET}/reports/{{date}}",
                          "--model", "default", "--state", f"gs://{BUCKET}/reports/{{yesterday}}",
                          "--runner", "DataflowRunner", "--project", "shop-prod",
                          "--region", "us-central1", "--job_name", "ecomatch-nightly",
                          "--temp_location", f"gs://{BUCKET}/tmp", "--template_location", str(job_file),
                          "--no_auth", "--max_num_workers=3"], day=DAY)

    assert not result.has_job, "a template launch must not create a job itself"
    job = json.loads(job_file.read_text())
    assert (job["name"], job["type"]) == ("ecomatch-nightly", "JOB_TYPE_BATCH")
    env = job["environment"]
    [pool] = env["workerPools"]
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in env["serviceOptions"]
    assert pool["machineType"] == "g2-standard-4"
    assert pool["numThreadsPerWorker"] == 2
    assert pool["diskSizeGb"] == 50
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 3, "an option given at launch overrides the default"
    assert pool["workerHarnessContainerImage"] == IMAGE
    assert {c["containerImage"] for c in pool["sdkHarnessContainerImages"]} == {IMAGE}
    options = env["sdkPipelineOptions"]["options"]
    assert options["sdk_location"] == "container" and options["save_main_session"] is False

    # Staged to the emulator: the pipeline graph only (no SDK tarball, no pickled main session).
    staged = options["pipelineUrl"]
    assert staged.startswith(f"gs://{BUCKET}/tmp/ecomatch-nightly.")
    assert [p.rsplit("/", 1)[1] for p in gcs.ls(staged.rsplit("/", 1)[0][5:])] == [
        "pipeline.pb", "submission_environment_dependencies.txt"]
    pipeline = beam_runner_api_pb2.Pipeline.FromString(gcs.cat_file(staged[5:]))
    images = {beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
              for e in pipeline.components.environments.values()}
    assert images == {IMAGE}
    names = {t.unique_name for t in pipeline.components.transforms.values()}
    assert {"ReadListings", "CarryForward/JoinState", "ScoreListings/RunInference", "WriteReports/WriteRemoved",
            "WriteReports/WriteSummary", "WriteHtmlReport/WriteHtml"} <= names
    # report.html is the job's to write, after summary.json: its step reads WriteSummary's output.
    by_name = {t.unique_name: t for t in pipeline.components.transforms.values()}
    assert set(by_name["WriteHtmlReport/WriteHtml"].inputs.values()) == \
        set(by_name["WriteReports/WriteSummary"].outputs.values())

    # The launcher expanded {date}: it cleared tonight's prefix, left yesterday's, and ran nothing.
    gcs.invalidate_cache()
    assert not gcs.exists(f"{BUCKET}/reports/2026-11-26/summary.json")
    assert gcs.exists(f"{BUCKET}/reports/2026-11-25/summary.json")
    assert not gcs.exists(f"{BUCKET}/reports/{{date}}")
    # Tonight's prefix holds only the claim of the run described (run.json), no report.
    assert [p.rsplit("/", 1)[1] for p in gcs.find(f"{BUCKET}/reports/2026-11-26")] == ["run.json"]

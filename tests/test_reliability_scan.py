"""The scan over the hostile corpus, end to end on the in-process FnApiRunner: nothing
crashes or is lost, counts reconcile, duplicates are counted, bad files stop the job or
are skipped, reruns are identical, credentials never reach a report or a log, listing ids
never become paths, a scan killed mid-run and rerun leaves complete outputs, and injected
faults show what the local runner does (docs/RELIABILITY.md says what Dataflow does)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hostile import (BAD_FILES, PASSWD, SECRETS, Case, ImageServer, SilentServer, corpus_prefixes, hostile_rows,
                     write_shards)
from pipeline_fixtures import fn_api_pipeline, image, write_table
from test_pipeline_scan import read_reports, sample_shards

import transforms.flag
from ecomatch_model import cli
from ecomatch_model.sample import make_listings
from pipelines.scan import run
from transforms.listings import ReadListings, file_row_groups, read_row_group
from transforms.reports import ScanInfo, write_summary
from transforms.score import EcomatchModelHandler

REPO = Path(__file__).resolve().parents[1]


def scan(*args: str) -> int:
    return cli.main(["scan", *args])


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log record at INFO and above, formatted with its traceback, while in the block."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))
    root, handler = logging.getLogger(), Collect(logging.INFO)
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def rows_by_content(rows: list[dict]) -> list[str]:
    """Rows as sorted JSON lines: equal lists mean equal content, row order aside."""
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def output_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def assert_clean_layout(out: Path, summary: dict) -> None:
    """A reader of PREFIX sees this run's shards only: every Parquet file under it is one
    that summary.json lists, and no temporary file of any run is left."""
    listed = {p for paths in summary["files"].values() for p in paths}
    files = output_files(out)
    assert [f for f in files if f.endswith(".parquet") and f not in listed] == [], files
    assert [f for f in files if "beam-temp" in f] == [], files


# ---------------------------------------------------------------------------- the hostile corpus
@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer(image("PNG")) as s:
        yield s


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentServer]:
    with SilentServer() as s:
        yield s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, server: ImageServer, silent: SilentServer) -> tuple[Path, list[Case]]:
    """The corpus under ``root/rows`` and ``root/bad``, and the cases its readable rows hold."""
    root = tmp_path_factory.mktemp("corpus")
    return root, write_shards(root, hostile_rows(root, server.url, silent.url), make_listings(4, seed=7, size=64))


@pytest.fixture(scope="module")
def corpus_args(corpus, server: ImageServer, silent: SilentServer) -> list[str]:
    """The scan's arguments for the corpus: its allow-list and a short fetch deadline."""
    root, _ = corpus
    return ["--input", str(root / "*" / "*.parquet"), "--skip-bad-files", "--batch-size", "4",
            "--image-fetch-timeout", "2",
            *(a for p in corpus_prefixes(root, server.url, silent.url) for a in ("--image-uri-prefix", p))]


@pytest.fixture(scope="module")
def corpus_scan(corpus_args, tmp_path_factory) -> tuple[Path, list[str]]:
    """The corpus scanned once with --skip-bad-files: the output prefix and the log lines."""
    out = tmp_path_factory.mktemp("scan") / "out"
    with captured_logs() as logs:
        assert scan(*corpus_args, "--output", str(out)) == 0
    return out, logs


def test_every_hostile_row_is_scored_or_reported_precisely_and_counts_reconcile(corpus, corpus_scan):
    (root, cases), (out, _) = corpus, corpus_scan
    scores, violations, errors, summary = read_reports(out)
    scored = [c.row["listing_id"] for c in cases if c.error_type is None]
    assert sorted(r["listing_id"] for r in scores) == sorted(scored)
    failed = {c.row.get("listing_id"): c for c in cases if c.error_type}
    listing_errors = {e["listing_id"]: e for e in errors if e["stage"] != "read"}
    assert len(listing_errors) == len(failed) == len([e for e in errors if e["stage"] != "read"])
    for lid, case in failed.items():
        e = listing_errors[lid]
        assert (e["stage"], e["error_type"], case.message in e["message"]) == ("decode", case.error_type, True), \
            (case.kind, e)
    skipped = {Path(e["source"]).name: e for e in errors if e["stage"] == "read"}
    assert {name: (e["error_type"], e["listing_id"]) for name, e in skipped.items()} == \
        {name: (error_type, None) for name, (error_type, _) in BAD_FILES.items()}
    assert all(BAD_FILES[name][1] in e["message"] and e["message"].startswith(str(root)) for name, e in skipped.items())
    c = summary["counts"]
    assert (c["read"], c["scored"], c["errors"], summary["skipped_inputs"]) == \
        (len(cases), len(scored), len(failed), len(BAD_FILES))
    assert c["read"] == c["scored"] + c["errors"] and c["scored"] == c["ok"] + c["violations"] == \
        c["ok"] + len(violations)
    assert c["errors_per_type"] == {t: sum(1 for f in failed.values() if f.error_type == t)
                                    for t in sorted({f.error_type for f in failed.values()})}


def test_duplicate_listing_ids_are_all_scored_and_counted(corpus_scan):
    scores, _, errors, summary = read_reports(corpus_scan[0])
    dup = [r for r in scores if r["listing_id"] == "dup"]
    assert len(dup) == 3 and len({r["content_hash"] for r in dup}) == 3     # three listings, none collapsed
    assert [r["listing_id"] for r in scores + errors].count("dup-mixed") == 2
    assert summary["duplicates"] == {"ids": 2, "rows": 5}


def test_no_credentials_in_reports_or_logs(corpus_scan):
    out, logs = corpus_scan
    texts = ["\n".join(logs)] + [str(pq.read_table(p).to_pylist()) if p.suffix == ".parquet" else
                                 p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    assert [s for s in SECRETS if any(s in t for t in texts)] == []
    # Nothing an image_uri returned is quoted, as text or as hex (the first 12 bytes used to be).
    assert [t[:200] for t in texts if PASSWD[:12].decode() in t or PASSWD[:6].hex() in t] == []
    _, _, errors, _ = read_reports(out)
    leaked = next(e for e in errors if e["listing_id"] == "image-uri-with-credentials")["message"]
    assert "://***@127.0.0.1" in leaked and "X-Goog-Signature=***" in leaked


def test_summary_masks_credentials_in_its_locations(tmp_path: Path):
    info = ScanInfo("gs://in/*.parquet?sig=s3cret-signature", 1, str(tmp_path), "https://u:s3cret-password@h/m",
                    "abc", {}, [], "FnApiRunner")
    summary = write_summary({}, info, [], [], [])
    assert (summary["input"]["pattern"], summary["model"]["name"]) == ("gs://in/*.parquet?sig=***", "https://***@h/m")
    assert not any(s in (tmp_path / "summary.json").read_text() for s in SECRETS)


def test_listing_ids_never_become_paths(corpus, corpus_scan):
    (root, cases), (out, _) = corpus, corpus_scan
    scores, _, _, summary = read_reports(out)
    hostile_ids = [c.row["listing_id"] for c in cases if c.kind == "path-in-listing-id"]
    assert sorted(r["listing_id"] for r in scores if "escape" in r["listing_id"]) == sorted(hostile_ids)
    assert_clean_layout(out, summary)
    assert [f for f in output_files(out) if f.endswith(".parquet")] == \
        sorted(p for paths in summary["files"].values() for p in paths)
    named = [p for base in (root, out.parent) for p in base.rglob("*escape*")]
    assert named == [] and not any(os.path.lexists(p) for p in ("/tmp/escape", REPO.parent.parent / "escape"))


def test_a_rescan_gives_identical_scores_and_violations(corpus_args, corpus_scan, tmp_path: Path):
    assert scan(*corpus_args, "--output", str(tmp_path / "again")) == 0
    first, again = read_reports(corpus_scan[0]), read_reports(tmp_path / "again")
    assert rows_by_content(first[0]) == rows_by_content(again[0])
    assert rows_by_content(first[1]) == rows_by_content(again[1])


@pytest.mark.parametrize("name", ["truncated.parquet", "not-parquet.parquet", "wrong-image-type.parquet"])
def test_a_bad_file_stops_the_job_before_any_work_naming_it(corpus, tmp_path: Path, capsys, name):
    path = corpus[0] / "bad" / name
    assert scan("--input", str(path), "--output", str(tmp_path / "out")) == 2
    assert f"{path}: {BAD_FILES[name][1]}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_corrupt_page_stops_the_job_naming_file_and_row_group(corpus, tmp_path: Path, capsys):
    path = corpus[0] / "rows" / "corrupt-page.parquet"
    assert scan("--input", str(path), "--output", str(tmp_path / "out")) == 2
    assert f"{path}: {BAD_FILES['corrupt-page.parquet'][1]}: OSError" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()


# ---------------------------------------------------------------------------- crashes and faults
@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> Path:
    """Twenty-four clean listings in two shards."""
    root = tmp_path_factory.mktemp("small")
    sample_shards(root, 24, 2)
    return root


@pytest.fixture(scope="module")
def reference(small_input: Path, tmp_path_factory) -> tuple[list[dict], list[dict], list[dict], dict]:
    """The reports of a clean scan of ``small_input``."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert scan("--input", str(small_input / "*.parquet"), "--output", str(out), "--batch-size", "1") == 0
    return read_reports(out)


def test_a_scan_killed_mid_run_then_rerun_leaves_complete_outputs(small_input: Path, reference, tmp_path: Path):
    """SIGKILL while the scan is provably mid-run (a temporary score shard exists and
    summary.json does not), then a rerun to the same prefix."""
    out = tmp_path / "out"
    args = ["--input", str(small_input / "*.parquet"), "--output", str(out), "--batch-size", "1"]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.scan", *args], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("scores/beam-temp-*/*")):
                time.sleep(0.005)
        finally:
            proc.kill()
            proc.wait()
    debris = output_files(out)
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists(), \
        (tmp_path / "killed.log").read_text()[-3000:]
    assert [f for f in debris if f.startswith("scores/beam-temp-")], debris     # a shard no summary vouches for
    assert scan(*args) == 0
    scores, violations, errors, summary = read_reports(out)
    assert rows_by_content(scores) == rows_by_content(reference[0]) and errors == reference[2]
    assert rows_by_content(violations) == rows_by_content(reference[1])
    assert summary["counts"] == reference[3]["counts"]
    assert_clean_layout(out, summary)
    # run.json is rewritten, not left: it names the rerun, as summary.json does.
    assert set(debris) & set(output_files(out)) == {"run.json"}
    assert json.loads((out / "run.json").read_text()) == {"run_id": summary["run_id"]}


class TransientFault(RuntimeError):
    """A fault injected by a test; a retry of the same work would succeed."""


def test_inference_faults_become_error_rows_and_the_rest_is_unchanged(small_input: Path, reference, tmp_path: Path,
                                                                      monkeypatch):
    """A fault inside RunInference is caught per batch (``with_exception_handling``): that
    batch's listings (here, at --batch-size 1, the victim alone) are reported, not retried,
    on any runner; every other row is as in a clean scan and the counts reconcile."""
    victim = reference[0][0]["listing_id"]
    scored_batch = EcomatchModelHandler.run_inference

    def flaky(self, batch, model, inference_args=None):
        if any(x.listing_id == victim for x in batch):
            raise TransientFault("CUDA error: an illegal memory access was encountered")
        return scored_batch(self, batch, model, inference_args)
    monkeypatch.setattr(EcomatchModelHandler, "run_inference", flaky)
    assert scan("--input", str(small_input / "*.parquet"), "--output", str(tmp_path / "out"), "--batch-size",
                "1") == 0
    scores, _, errors, summary = read_reports(tmp_path / "out")
    assert [(e["listing_id"], e["stage"], e["error_type"], e["message"]) for e in errors] == \
        [(victim, "score", "TransientFault", "CUDA error: an illegal memory access was encountered")]
    assert rows_by_content(scores) == rows_by_content([r for r in reference[0] if r["listing_id"] != victim])
    assert (summary["counts"]["read"], summary["counts"]["scored"], summary["counts"]["errors"]) == (24, 23, 1)


def test_a_bundle_fault_fails_the_local_job_and_a_retry_is_complete(small_input: Path, reference, tmp_path: Path,
                                                                    monkeypatch):
    """A fault outside any exception handling fails its bundle. Beam's FnApiRunner does not
    retry bundles: the job fails and leaves no summary.json. Retrying (here: the whole
    job, as an operator or scheduler would) gives exactly the clean scan's outputs."""
    args = ["--input", str(small_input / "*.parquet"), "--output", str(tmp_path / "out"), "--batch-size", "1"]
    flag, calls = transforms.flag.flag_listing, []

    def fails_once(scored: Any, *rest: Any):
        calls.append(scored.listing_id)
        if len(calls) == 1:
            raise TransientFault("worker lost its connection")
        return flag(scored, *rest)
    monkeypatch.setattr(transforms.flag, "flag_listing", fails_once)
    with pytest.raises(TransientFault, match="worker lost its connection"):
        run(args, save_main_session=False)
    assert len(calls) == 1 and not (tmp_path / "out" / "summary.json").exists()
    run(args, save_main_session=False)
    scores, violations, errors, summary = read_reports(tmp_path / "out")
    assert rows_by_content(scores) == rows_by_content(reference[0]) and errors == []
    assert rows_by_content(violations) == rows_by_content(reference[1])
    assert summary["counts"] == reference[3]["counts"]
    assert_clean_layout(tmp_path / "out", summary)


def test_read_listings_with_exception_handling_reports_unreadable_inputs(corpus):
    """The corrupt page's first row group is read; every bad file and row group is one error record."""
    root, _ = corpus
    files = [str(root / "rows" / "corrupt-page.parquet"), *map(str, sorted((root / "bad").glob("*.parquet")))]
    with fn_api_pipeline() as p:
        listings, errors = p | ReadListings(files, ["listing_id", "title", "image"], []).with_exception_handling()
        assert_that(listings | beam.Map(lambda r: r.listing_id), equal_to(["s7-000000", "s7-000001"]), label="Read")
        assert_that(errors | beam.Map(lambda e: (Path(e.source).name, e.stage, e.error_type, e.listing_id)),
                    equal_to([(name, "read", error_type, None) for name, (error_type, _) in BAD_FILES.items()]),
                    label="Errors")


# ---------------------------------------------------------------------------- text that is not UTF-8
def with_invalid_utf8(table: pa.Table, column: str, row: int, value: bytes) -> pa.Table:
    """``table`` with ``value`` (bytes that are not UTF-8) as row ``row`` of string ``column``."""
    values = table.column(column).to_pylist()
    values[row] = value
    raw = pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary())
    return table.set_column(table.schema.get_field_index(column), column, raw.view(pa.string()))


@pytest.mark.parametrize("skip", [False, True])
def test_one_invalid_utf8_value_fails_its_row_only(tmp_path: Path, skip: bool):
    """One title with bytes \\xff\\xfe among 16 rows of one row group: that listing is an
    error row, the other 15 are scored, with --skip-bad-files or without."""
    table = with_invalid_utf8(make_listings(16, seed=5, size=64), "title", 3, b"Red \xff\xfe Shirt")
    bad_id = table.column("listing_id")[3].as_py()
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet", row_group_size=16)
    assert pq.read_metadata(tmp_path / "in" / "a.parquet").num_row_groups == 1
    out = tmp_path / "out"
    assert scan("--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--batch-size", "4",
                *(["--skip-bad-files"] if skip else [])) == 0
    scores, _, errors, summary = read_reports(out)
    assert len(scores) == 15 and bad_id not in {r["listing_id"] for r in scores}
    assert [(e["listing_id"], e["stage"], e["error_type"], e["message"]) for e in errors] == \
        [(bad_id, "decode", "ListingError", "title is not valid UTF-8 (byte 0xff at offset 4)")]
    assert (summary["counts"]["read"], summary["skipped_inputs"]) == (16, 0)


def test_invalid_utf8_in_any_text_column_names_the_column(tmp_path: Path):
    table = make_listings(4, seed=5, size=64).drop_columns(["image"]).append_column(
        "image_uri", pa.array([str(tmp_path / "x.png")] * 4))
    table = with_invalid_utf8(table, "listing_id", 0, b"id-\xc3")
    table = with_invalid_utf8(table, "base_colour", 1, b"R\xe9d")
    table = with_invalid_utf8(table, "image_uri", 2, b"/img/\x80.png")
    path = write_table(tmp_path / "a.parquet", table)
    group = file_row_groups(path, ["base_colour"])[0]
    rows = read_row_group(group, table.column_names, ["base_colour"])
    assert [r.invalid for r in rows] == [{"listing_id": "listing_id is not valid UTF-8 (byte 0xc3 at offset 3)"},
                                         {"base_colour": "base_colour is not valid UTF-8 (byte 0xe9 at offset 1)"},
                                         {"image_uri": "image_uri is not valid UTF-8 (byte 0x80 at offset 5)"}, {}]
    assert rows[0].listing_id == "id-\\xc3" and rows[3].listing_id == table.column("listing_id")[3].as_py()


# ---------------------------------------------------------------------------- two scans, one prefix
def test_two_scans_racing_to_one_prefix_leave_exactly_one_run(small_input: Path, tmp_path: Path, monkeypatch):
    """Scan A (24 listings) is mid-run when scan B (8 other listings) starts on the same prefix
    and finishes. A must not publish: it fails, and the prefix holds B's run alone: its
    summary.json with its run id, every shard it lists named with that id and holding B's
    listings (both used to exit 0, mixing one run's errors shard with the other's summary)."""
    other = tmp_path / "other"
    sample_shards(other, 8, 1, seed=11)
    out = tmp_path / "out"
    flag, calls = transforms.flag.flag_listing, []

    def start_b_midway(scored: Any, *rest: Any):
        calls.append(scored.listing_id)
        if len(calls) == 1:                 # A has started writing; B runs to the end meanwhile
            b = subprocess.run([sys.executable, "-m", "pipelines.scan", "--input", str(other / "*.parquet"),
                                "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
            assert b.returncode == 0, b.stderr[-3000:]
        return flag(scored, *rest)
    monkeypatch.setattr(transforms.flag, "flag_listing", start_b_midway)
    with pytest.raises(Exception, match="another scan .* started writing to .* after this one"):
        run(["--input", str(small_input / "*.parquet"), "--output", str(out), "--batch-size", "1"],
            save_main_session=False)
    summary = json.loads((out / "summary.json").read_text())
    run_id = summary["run_id"]
    assert json.loads((out / "run.json").read_text()) == {"run_id": run_id}
    listed = [p for paths in summary["files"].values() for p in paths]
    assert listed and all(f"part-{run_id}-" in p and (out / p).is_file() for p in listed), listed
    ids = {r["listing_id"] for p in summary["files"]["scores"] for r in pq.read_table(out / p).to_pylist()}
    expected = {r["listing_id"] for f in other.glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert ids == expected and summary["counts"]["read"] == 8

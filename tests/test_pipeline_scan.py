"""The scan end to end: CLI, layout, reconciliation, reruns, bad schemas, multi-process runs
and the bundled sample's ground truth."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from pipeline_fixtures import listings_table, mixed_rows, write_table
from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixtures)
from conftest import write_policy

from ecomatch_model import cli
from ecomatch_model.api import MODELS_DIR, load
from ecomatch_model.data import DEFAULT_ATTRIBUTE_COLUMNS, column_attributes, read_listings
from ecomatch_model.sample import make_listings
from pipelines.scan import run
from transforms.decode import content_hash
from ecomatch_model.verdict import read_policy_file
from transforms.reports import ERRORS_SCHEMA, SCORES_SCHEMA, VIOLATIONS_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def sample_shards(root: Path, n: int, shards: int, seed: int = 3) -> list[str]:
    """``n`` synthetic listings in ``shards`` files shaped like the bundled sample."""
    table = make_listings(n, seed=seed, size=64)
    step = -(-n // shards)
    return [write_table(root / f"listings-{k}.parquet", table.slice(k * step, step)) for k in range(shards)]


def read_reports(out: Path) -> tuple[list[dict], list[dict], list[dict], dict]:
    tables = [pq.read_table(out / d) for d in ("scores", "violations", "errors")]
    assert [t.schema for t in tables] == [SCORES_SCHEMA, VIOLATIONS_SCHEMA, ERRORS_SCHEMA]
    return (*(t.to_pylist() for t in tables), json.loads((out / "summary.json").read_text()))


def scan(*args: str) -> int:
    return cli.main(["scan", *args])


def test_scan_cli_end_to_end_then_rerun(tmp_path: Path, model_dir, capsys):
    good = sample_shards(tmp_path / "in", 12, 2)
    write_table(tmp_path / "in" / "listings-mixed.parquet", listings_table(mixed_rows(tmp_path)))
    out = tmp_path / "out"
    assert scan("--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--model", model_dir,
                "--batch-size", "4", "--image-uri-prefix", f"{tmp_path}/images/") == 0    # b's image is not under in/
    printed = capsys.readouterr().out
    assert "read 18 listings: 15 scored" in printed and f"violations: {out}/violations/" in printed

    scores, violations, errors, summary = read_reports(out)
    input_ids = [r["listing_id"] for f in sorted((tmp_path / "in").glob("*.parquet"))
                 for r in pq.read_table(f, columns=["listing_id"]).to_pylist()]
    assert sorted([r["listing_id"] for r in scores] + [e["listing_id"] for e in errors], key=str) == \
        sorted(input_ids, key=str)                                     # every row in exactly one output
    assert {e["listing_id"]: e["error_type"] for e in errors} == {
        "d": "ImageDecodeError", "e": "UnsupportedImageError", None: "ListingError"}
    assert all(e["stage"] == "decode" and e["source"].endswith("listings-mixed.parquet") for e in errors)
    flagged = {r["listing_id"]: r for r in scores if r["verdict"] == "violation"}
    assert {v["listing_id"] for v in violations} == set(flagged)
    assert all(v["severity"] == flagged[v["listing_id"]]["severity"] and v["reasons"] for v in violations)
    assert all((r["worst_kind"] is None) == (r["verdict"] == "ok") for r in scores)
    c = summary["counts"]
    assert (c["read"], c["scored"], c["errors"], c["ok"] + c["violations"]) == (18, 15, 3, 15)
    assert c["violations"] == len(violations) and sum(c["violations_per_kind"].values()) == len(violations)
    assert summary["model"] == {"name": model_dir, "sha256": load(model_dir, device="cpu").sha256}
    first = pq.read_table(good[0]).slice(0, 1).to_pylist()[0]
    matcher = load(model_dir, device="cpu")
    attrs = [(k, matcher.lexicon.canonical(k, first[c])) for c, k in DEFAULT_ATTRIBUTE_COLUMNS.items()]
    expected_hash = content_hash(matcher.sha256, first["title"], [(k, v) for k, v in attrs if v], first["image"])
    assert next(r for r in scores if r["listing_id"] == first["listing_id"])["content_hash"] == expected_hash

    first_run = summary["run_id"]
    # A rerun to the same prefix replaces everything: fewer listings, a calibration that passes all.
    (out / "scores" / "part-00003-of-00007.parquet").write_bytes(b"stale")
    kinds = json.loads((Path(model_dir) / "lexicon.json").read_text())["kinds"]
    passing = write_policy(tmp_path / "t.json", {"match": -1.5, **{k["kind"]: -0.5 for k in kinds}})
    assert scan("--input", good[1], "--output", str(out), "--model", model_dir, "--calibration", passing) == 0
    scores, violations, errors, summary = read_reports(out)
    assert sorted(r["listing_id"] for r in scores) == sorted(pq.read_table(good[1]).column("listing_id").to_pylist())
    assert (violations, errors) == ([], [])
    assert {r["verdict"] for r in scores} == {"ok"}
    assert summary["calibration"]["source"] == passing and summary["calibration"]["cut"] == 0.5
    assert summary["files"]["scores"] == [f"scores/part-{summary['run_id']}-00000-of-00001.parquet"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", summary["run_id"]) and summary["run_id"] != first_run


def test_bad_schema_fails_fast_naming_file_and_column(tmp_path: Path, model_dir, capsys):
    write_table(tmp_path / "in" / "a.parquet", listings_table([{"listing_id": "1", "title": "t", "image": b"x"}]))
    bad = write_table(tmp_path / "in" / "b.parquet", pa.table({"listing_id": [1], "title": ["t"], "image": [b"x"]}))
    out = tmp_path / "out"
    assert scan("--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--model", model_dir) == 2
    assert f"{bad}: column 'listing_id' has type int64, expected string" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--calibration", "THRESHOLDS"], "checks.colur: unknown kind"),
    (["--attribute-columns", "base_colour=hue"], "--attribute-columns: unknown kind(s) hue"),
    (["--model", "no-such-model"], "no model at 'no-such-model'"),
    (["--batch-size", "0"], "--batch-size and --model-copies must be at least 1"),
    (["--image-fetch-concurrency", "0"], "--image-fetch-concurrency must be at least 1"),
])
def test_bad_arguments_fail_fast(tmp_path: Path, model_dir, capsys, args, message):
    write_table(tmp_path / "a.parquet", listings_table([{"listing_id": "1", "title": "t", "image": b"x"}]))
    write_policy(tmp_path / "t.json", {"colur": 0.5})
    args = [str(tmp_path / "t.json") if a == "THRESHOLDS" else a for a in args]
    assert scan("--input", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "out"), "--model", model_dir,
                *args) == 2
    assert message in capsys.readouterr().err


def test_multi_process_run_scores_like_a_single_process_with_counters(tmp_path: Path, model_dir):
    sample_shards(tmp_path / "in", 10, 2)
    common = ["--input", str(tmp_path / "in" / "*.parquet"), "--model", model_dir, "--batch-size", "4"]
    result = run([*common, "--output", str(tmp_path / "one")], save_main_session=False)
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("ecomatch"))["counters"]}
    counts = read_reports(tmp_path / "one")[3]["counts"]
    names = ("read", "scored", "ok", "violations", "errors")
    assert {k: counters.get(k, 0) for k in names} == {k: counts[k] for k in names}
    per_kind = counts["violations_per_kind"]
    assert {k: counters.get(f"violations_{k}", 0) for k in per_kind} == per_kind
    assert scan(*common, "--output", str(tmp_path / "two"), "--direct_num_workers=2",
                "--direct_running_mode=multi_processing") == 0
    one, two = ({r["listing_id"]: r for r in read_reports(tmp_path / d)[0]} for d in ("one", "two"))
    assert sorted(one) == sorted(two) and len(one) == 10
    for lid, r in one.items():
        assert {k: v for k, v in r.items() if k not in ("severity", "match_score")} == \
            {k: v for k, v in two[lid].items() if k not in ("severity", "match_score")}
        assert r["severity"] == pytest.approx(two[lid]["severity"], abs=1e-6)
        assert r["match_score"] == pytest.approx(two[lid]["match_score"], abs=1e-6)


SAMPLE_CALIBRATION = SAMPLE / "calibration.json"
needs_sample = pytest.mark.skipif(
    not (MODELS_DIR / "default").is_dir() or not list(SAMPLE.glob("*.parquet")) or not SAMPLE_CALIBRATION.is_file(),
    reason="the bundled default model (ecomatch_model/models/default), sample_data/*.parquet or "
           "sample_data/calibration.json is not there yet")


@pytest.fixture(scope="module")
def sample_scan(tmp_path_factory) -> tuple[list[dict], list[dict], list[dict], dict]:
    """The README's scan: sample_data/ with the bundled default model at the sample's
    calibration (fitted for that synthetic catalogue), run once."""
    out = tmp_path_factory.mktemp("sample") / "out"
    assert scan("--input", str(SAMPLE / "*.parquet"), "--calibration", str(SAMPLE_CALIBRATION), "--output",
                str(out)) == 0
    return read_reports(out)


@needs_sample
def test_sample_scan_reconciles_and_agrees_with_the_python_api(sample_scan):
    scores, violations, errors, summary = sample_scan
    listings = read_listings(str(SAMPLE / "*.parquet"))
    c = summary["counts"]
    assert (c["read"], c["scored"], c["errors"], errors) == (len(listings), len(listings), 0, [])
    assert c["scored"] == c["ok"] + c["violations"] == c["ok"] + len(violations)
    matcher = load("default")
    policy = read_policy_file(str(SAMPLE_CALIBRATION), matcher.lexicon.kinds)
    # ecomatch evaluate's path (Matcher.assess, with the swap search where the policy asks).
    direct = matcher.assess(listings.images, listings.titles,
                            column_attributes(listings, matcher.lexicon, DEFAULT_ATTRIBUTE_COLUMNS), policy)
    by_id = {r["listing_id"]: r for r in scores}
    assert sum(a.violation for _, a in direct) == c["violations"] > 0
    for lid, (s, want) in zip(listings.ids, direct):
        got = by_id[lid]
        assert (got["verdict"] == "violation", got["worst_kind"]) == (want.violation, want.worst_kind), lid
        assert got["severity"] == pytest.approx(want.p_violation, abs=1e-5)
        assert got["match_score"] == pytest.approx(s.match, abs=1e-5)


# What a correct flag is for each deliberate mismatch in the sample; an image swap changes
# the article (and with it colour and pattern), so any of those or the global match.
RIGHT_KINDS = {"colour": {"colour"}, "article_type": {"article_type"}, "pattern": {"pattern"},
               "image": {"match", "article_type", "colour", "pattern"}}


def _planted(scores: list[dict], kind: str) -> list[dict]:
    by_id = {r["listing_id"]: r for r in scores}
    truth = pa.concat_tables([pq.read_table(f, columns=["listing_id", "mismatch_kind"])
                              for f in sorted(SAMPLE.glob("*.parquet"))]).to_pylist()
    planted = [by_id[t["listing_id"]] for t in truth if t["mismatch_kind"] == kind]
    assert planted, f"sample_data holds no deliberate {kind} mismatch"
    return planted


# Known misses at the sample's calibration (model card, "Evaluation on sample_data/"): two
# planted pattern mismatches ("Gray Plaid" over polka dots, "Polka Dots" over another print)
# whose pattern score the model gives as consistent and whose global match is unremarkable.
KNOWN_MISSES = {"pattern": 2}


@needs_sample
@pytest.mark.parametrize("kind", sorted(RIGHT_KINDS))
def test_sample_scan_flags_every_deliberate_mismatch_with_the_right_kind(sample_scan, kind):
    # An unflagged listing has no worst kind, so this also checks that every one is flagged.
    wrong = [(r["listing_id"], r["verdict"], r["worst_kind"]) for r in _planted(sample_scan[0], kind)
             if r["worst_kind"] not in RIGHT_KINDS[kind]]
    assert len(wrong) <= KNOWN_MISSES.get(kind, 0), wrong


@pytest.mark.parametrize("where", ["under-a-file", "proc", "read-only"])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path: Path, model_dir, capsys, where: str):
    """--output under a regular file, under /proc or in a read-only folder: one line, exit 2,
    before the job starts (it used to fail after the job had started, with a traceback)."""
    good = sample_shards(tmp_path / "in", 4, 1)
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    out = {"under-a-file": tmp_path / "file" / "out", "proc": Path("/proc/ecomatch-out"),
           "read-only": tmp_path / "ro" / "out"}[where]
    if where == "read-only" and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("running as a user who may write anywhere (root): a read-only folder is writable")
    assert scan("--input", good[0], "--output", str(out), "--model", model_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ecomatch scan: error: --output cannot write under {out}: "), err

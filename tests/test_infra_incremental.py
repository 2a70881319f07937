"""Incremental scans (``--state``, transforms/state.py) end to end on the local runner: a rerun
carries every verdict forward and scores nothing, changing 10 listings scores exactly those
10, dropped listings are reported as removed, and a new model (or new scoring rules) rescans everything."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult
from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixture)

from ecomatch_model.checkpoint import Checkpoint, save
from ecomatch_model.sample import make_listings
from pipelines.scan import ScanConfigError, run
from transforms.reports import SCORING_RULES, read_summary
from transforms.state import previous_run

N, CHANGED, DROPPED = 24, 10, 3


def scan(tmp: Path, table: pa.Table, out: str, model: str, *extra: str) -> PipelineResult:
    shard = tmp / f"in-{out}" / "listings.parquet"
    shard.parent.mkdir()
    pq.write_table(table, shard)
    return run(["--input", str(shard), "--output", str(tmp / out), "--model", model, "--batch-size", "8", *extra],
               save_main_session=False)


def rows(prefix: Path, name: str) -> dict[str, dict]:
    """A report's rows by listing id, without the input file (each scan here reads its own copy)."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted((prefix / name).glob("*.parquet"))])
    return {r["listing_id"]: {k: v for k, v in r.items() if k != "source"} for r in table.to_pylist()}


def inferred(result: PipelineResult) -> int:
    """Listings that went through the model (the ``scored`` counter of transforms/score.py)."""
    counters = result.metrics().query(MetricsFilter().with_namespace("ecomatch").with_name("scored"))["counters"]
    return sum(c.committed for c in counters)


@pytest.fixture(scope="module")
def catalogue() -> pa.Table:
    return make_listings(N, seed=7, size=48)


def test_rerun_carries_everything_then_changes_score_only_changed(catalogue: pa.Table, model_dir: str,
                                                                   tmp_path: Path):
    first = scan(tmp_path, catalogue, "a", model_dir)
    assert inferred(first) == N and read_summary(str(tmp_path / "a"))["incremental"] == {
        "state": None, "carried": 0, "scored": N, "removed": 0}

    again = scan(tmp_path, catalogue, "b", model_dir, "--state", str(tmp_path / "a"))
    assert inferred(again) == 0
    summary = read_summary(str(tmp_path / "b"))
    assert summary["incremental"] == {"state": str(tmp_path / "a"), "carried": N, "scored": 0, "removed": 0}
    assert summary["counts"]["scored"] == N and summary["files"]["removed"]
    assert rows(tmp_path / "b", "scores") == rows(tmp_path / "a", "scores")
    assert rows(tmp_path / "b", "violations") == rows(tmp_path / "a", "violations")
    # A carried row names the file the listing was read from now.
    assert {r["source"] for r in pq.read_table(tmp_path / "b" / "violations").to_pylist()} == {
        str(tmp_path / "in-b" / "listings.parquet")}
    assert rows(tmp_path / "b", "removed") == {}

    ids = catalogue.column("listing_id").to_pylist()
    titles = catalogue.column("title").to_pylist()
    changed = set(ids[:CHANGED])
    edited = catalogue.set_column(1, "title", pa.array([t + " Deluxe" if i in changed else t
                                                        for i, t in zip(ids, titles)]))
    edited = edited.slice(0, N - DROPPED)
    third = scan(tmp_path, edited, "c", model_dir, "--state", str(tmp_path / "a"))
    assert inferred(third) == CHANGED
    assert read_summary(str(tmp_path / "c"))["incremental"] == {
        "state": str(tmp_path / "a"), "carried": N - CHANGED - DROPPED, "scored": CHANGED, "removed": DROPPED}
    before, now = rows(tmp_path / "a", "scores"), rows(tmp_path / "c", "scores")
    assert {i for i in now if now[i]["content_hash"] != before[i]["content_hash"]} == changed
    assert all(now[i] == before[i] for i in now if i not in changed)
    kept = rows(tmp_path / "a", "violations")
    assert {i: r for i, r in rows(tmp_path / "c", "violations").items() if i not in changed} == {
        i: r for i, r in kept.items() if i in now and i not in changed}
    assert {i: (r["verdict"], r["content_hash"]) for i, r in rows(tmp_path / "c", "removed").items()} == {
        i: (before[i]["verdict"], before[i]["content_hash"]) for i in ids[N - DROPPED:]}


def test_new_model_rescans_everything(catalogue: pa.Table, model_dir: str, tiny_ckpt: Checkpoint, tmp_path: Path):
    scan(tmp_path, catalogue, "a", model_dir)
    with torch.no_grad():
        next(tiny_ckpt.model.parameters()).add_(0.01)
    new_model = str(tmp_path / "model-v2")
    save(tiny_ckpt, new_model)
    result = scan(tmp_path, catalogue, "b", new_model, "--state", str(tmp_path / "a"))
    assert inferred(result) == N
    assert read_summary(str(tmp_path / "b"))["incremental"] == {"state": None, "carried": 0, "scored": N, "removed": 0}


def test_state_is_used_only_when_complete_and_alike(catalogue: pa.Table, model_dir: str, tmp_path: Path):
    scan(tmp_path, catalogue, "a", model_dir)
    summary = read_summary(str(tmp_path / "a"))
    sha, calibration = summary["model"]["sha256"], summary["calibration"]["sha256"]
    previous, why = previous_run(str(tmp_path / "a"), sha, calibration)
    assert why == "" and previous.prefix == str(tmp_path / "a") and len(previous.scores) >= 1
    assert previous_run(str(tmp_path / "a"), sha, "0" * 64) == (None, "it was scanned with another calibration")
    assert previous_run(str(tmp_path / "a"), "f" * 64, calibration)[1].startswith("it was scanned with another model")
    # A run made under other scoring rules (here: before the version was recorded) is rescanned.
    assert summary["scoring_rules"] == SCORING_RULES
    older = tmp_path / "older"
    shutil.copytree(tmp_path / "a", older)
    del summary["scoring_rules"]
    (older / "summary.json").write_text(json.dumps(summary))
    assert previous_run(str(older), sha, calibration) == (
        None, f"it was scanned under other scoring rules (version 1; this scan's is {SCORING_RULES})")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{}")
    for incomplete in ("missing", "broken"):
        assert previous_run(str(tmp_path / incomplete), sha, calibration) == (
            None, "it holds no complete run (no readable summary.json)")
    with pytest.raises(ScanConfigError, match="--state must be an earlier run"):
        run(["--input", "x.parquet", "--output", str(tmp_path / "a"), "--state", str(tmp_path / "a") + "/"])


def smash_first_page(path: Path) -> None:
    """Overwrite the first page header of ``listing_id`` in row group 1: the footer stays readable."""
    meta = pq.read_metadata(path)
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index("listing_id"))
    offset = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "not-parquet", "corrupt-page"])
def test_an_unreadable_state_is_ignored_with_a_warning(catalogue: pa.Table, model_dir: str, tmp_path: Path,
                                                      caplog, damage: str):
    """A state whose scores shard is truncated, not Parquet, or has a corrupt page behind a good
    footer: the scan finishes, says why in a warning, and scores every listing again (it used
    to end in an ArrowInvalid traceback)."""
    scan(tmp_path, catalogue, "a", model_dir)
    [shard] = (tmp_path / "a" / "scores").glob("*.parquet")
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "not-parquet":
        shard.write_bytes(b"<!doctype html><title>503</title>")
    else:
        smash_first_page(shard)
    with caplog.at_level("WARNING"):
        result = scan(tmp_path, catalogue, "b", model_dir, "--state", str(tmp_path / "a"))
    summary = read_summary(str(tmp_path / "b"))
    assert inferred(result) == N and summary["counts"]["scored"] == N and summary["incremental"]["carried"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--state" in r.getMessage()]
    if damage == "corrupt-page":          # the footer check passes; the job skips the row group
        assert any(f"row group 1 of {shard} cannot be read" in w for w in warnings), warnings
    else:
        assert summary["incremental"]["state"] is None
        assert any(f"its shard {shard} cannot be read" in w for w in warnings), warnings

"""Training recipes (``ecomatch train --recipe FILE``): a tiny recipe trained end to end, the
command line over the recipe, bad recipes refused, the shipped model's recipes against its
training logs, and the bundled model without its logs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ecomatch_model.api import load
from ecomatch_model.checkpoint import load_checkpoint
from ecomatch_model.cli import main, parse_args, recipe_fields
from ecomatch_model.data import read_listings
from ecomatch_model.recipe import data_globs, dump_recipe, read_recipe, synthetic_listings
from ecomatch_model.sample import write_sample

try:
    import tomllib
except ModuleNotFoundError:     # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT / "recipes" / "default").glob("stage*.toml"), key=lambda p: int(p.stem[5:]))
LOGS = ROOT / "docs" / "training" / "default"
MODEL = ROOT / "ecomatch_model" / "models" / "default"


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_tiny_recipe_trains_and_writes_the_values_it_used(tmp_path, capsys):
    write_sample(tmp_path / "data" / "real", n=96, seed=5, mismatch_rate=0.0, shards=1, size=64)
    out = tmp_path / "out"
    recipe = _write(tmp_path / "tiny.toml", f"""# a comment, as the shipped recipes have
description = "tiny smoke run"
data = ["real/*.parquet"]
synthetic_seeds = [7]
synthetic_n = 32
config = "tiny"
set = ["compression=2"]
out = "{out}"
device = "cpu"
epochs = 1
batch_size = 32
lr = 1e-3
max_eval = 40
""")
    assert main(["train", "--recipe", recipe, "--data-root", str(tmp_path / "data"), "--lr", "5e-4",
                 "--set", "text.depth=1"]) == 0
    ckpt = load_checkpoint(str(out))
    cfg = ckpt.model.cfg
    assert (cfg.compression, cfg.text.depth, cfg.image.depth) == (2, 1, 2)    # the recipe's set, then the flag's
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    # 96 real + 32 synthetic listings, 10% held out by content: 115 for training, 3 steps of 32.
    assert [(r["epoch"], r["step"]) for r in log] == [(1, 3)]
    assert f"Recipe: `{recipe}`" in ckpt.card and "32 synthetic listings (seeds 7, 32 each)" in ckpt.card
    used = read_recipe(str(out / "recipe.toml"), recipe_fields())
    assert used["lr"] == 5e-4 and used["epochs"] == 1 and used["batch_size"] == 32
    assert used["set"] == ["compression=2", "text.depth=1"]
    assert used["data"] == [os.path.join(str(tmp_path / "data"), "real/*.parquet")]
    assert used["description"] == "tiny smoke run"
    # The written recipe reruns the same run: parsed, it gives the values this run used.
    again = parse_args(["train", "--recipe", str(out / "recipe.toml")])
    first = parse_args(["train", "--recipe", recipe, "--data-root", str(tmp_path / "data"), "--lr", "5e-4",
                        "--set", "text.depth=1"])
    for key in recipe_fields():
        if key not in ("data", "description"):
            assert getattr(again, key) == getattr(first, key), key
    assert data_globs(again.recipe_values["data"], again.data_root) == used["data"]
    # The written recipe as a fine-tuning stage: init, a loss weight and a sharper input from the
    # command line (the recipe's own overrides repeat the checkpoint's values, so they pass).
    tuned = tmp_path / "tuned"
    assert main(["train", "--recipe", str(out / "recipe.toml"), "--init", str(out), "--out", str(tuned),
                 "--image-negatives", "1.0", "--set", "image.image_size=128"]) == 0
    after = load_checkpoint(str(tuned))
    assert after.model.cfg.image.image_size == 128 and after.vocab.to_json() == ckpt.vocab.to_json()
    assert after.model.cfg.to_json()["text"] == cfg.to_json()["text"] and after.model.cfg.compression == 2
    assert [r["image_bce"] > 0 for r in map(json.loads, open(tuned / "train_log.jsonl"))] == [True]


def test_flags_override_single_values_and_data_replaces_the_recipes(tmp_path):
    recipe = _write(tmp_path / "r.toml", 'data = ["a/*.parquet"]\nepochs = 3\nlr = 1\nset = ["compression=1"]\n'
                                         'synthetic_seeds = [101, 102]\n')
    args = parse_args(["train", "--recipe", recipe])
    assert (args.epochs, args.lr, args.set, args.synthetic_seeds, args.data) == (3, 1.0, ["compression=1"],
                                                                                 [101, 102], None)
    assert isinstance(args.lr, float) and args.batch_size == 128          # an int for a number; defaults stay
    args = parse_args(["train", "--recipe", recipe, "--epochs", "5", "--synthetic-seeds", "9", "--data", "b/*",
                       "--set", "image.depth=1"])
    assert (args.epochs, args.lr, args.synthetic_seeds, args.data) == (5, 1.0, [9], ["b/*"])
    assert args.set == ["compression=1", "image.depth=1"]
    assert data_globs(["a/*.parquet", "/abs/*.parquet", "gs://b/c/*.parquet"], "root") == [
        os.path.join("root", "a/*.parquet"), "/abs/*.parquet", "gs://b/c/*.parquet"]


@pytest.mark.parametrize("text,key,what", [
    ("learning_rate = 0.1\n", "learning_rate", "unknown key"),
    ("resume = true\n", "resume", "unknown key"),                    # an invocation option, not a recipe value
    ('epochs = "ten"\n', "epochs", "must be an integer"),
    ("epochs = true\n", "epochs", "must be an integer"),
    ("epochs = 2.5\n", "epochs", "must be an integer"),
    ('lr = "fast"\n', "lr", "must be a number"),
    ('trainable = "heads"\n', "trainable", "must be one of all, aga"),
    ('config = "huge"\n', "config", "must be one of"),
    ('data = "x/*.parquet"\n', "data", "must be a list of strings"),
    ('synthetic_seeds = [101, "102"]\n', "synthetic_seeds", "must be a list of integers"),
    ("[stage]\nepochs = 1\n", "stage", "a recipe is flat"),
    ("epochs = \n", "", "not valid TOML"),
])
def test_a_bad_recipe_is_refused_in_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, key, what):
    recipe = _write(tmp_path / "bad.toml", text)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", recipe, "--out", str(tmp_path / "never")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ecomatch train: error: {recipe}: ")
    assert what in err and (not key or repr(key) in err), err
    assert not (tmp_path / "never").exists()                         # nothing trained


def test_a_missing_recipe_is_refused_naming_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--recipe", str(tmp_path / "nope.toml")])
    assert capsys.readouterr().err.startswith(f"ecomatch train: error: {tmp_path / 'nope.toml'}: ")


@pytest.mark.parametrize("flag, what", [
    ("compression=1", "only image.image_size can change (the checkpoint has compression=4)"),
    ("image.width=64", "only image.image_size can change"),
    ("image.image_size=100", "image.image_size must be a multiple of image.patch"),
    ("image.nope=3", "not a config field"),
])
def test_init_refuses_overrides_that_change_the_checkpoints_shape(tmp_path, tiny_ckpt, capsys, flag, what):
    from ecomatch_model.checkpoint import save
    save(tiny_ckpt, str(tmp_path / "m"))
    with pytest.raises(SystemExit, match="ecomatch train: error: --set") as exc:
        main(["train", "--init", str(tmp_path / "m"), "--data", str(tmp_path / "none*.parquet"),
              "--out", str(tmp_path / "o"), "--set", flag])
    assert what in str(exc.value) and not (tmp_path / "o").exists()


def test_train_without_data_or_out_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no data"):
        main(["train", "--out", str(tmp_path / "o")])
    recipe = _write(tmp_path / "r.toml", f'data = ["{tmp_path}/*.parquet"]\n')
    with pytest.raises(SystemExit, match="no output directory"):
        main(["train", "--recipe", recipe])


def test_dump_recipe_is_toml_that_reads_back():
    values = {"description": 'a "quoted" ünïcode\tline\x7f', "data": ["a/*.parquet", "gs://b/*"], "lr": 1e-05,
              "time_budget": float("inf"), "epochs": 3, "synthetic_seeds": [101, 102], "set": [], "init": None}
    text = dump_recipe(values, "first line\nsecond line")
    assert text.startswith("# first line\n# second line\n") and "init" not in text
    assert tomllib.loads(text) == {k: v for k, v in values.items() if v is not None}


def test_synthetic_listings_are_make_samples_in_seed_order(tmp_path):
    together = synthetic_listings([11, 12], 6, workers=2)       # two processes
    for k, seed in enumerate([11, 12]):
        write_sample(tmp_path / str(seed), n=6, seed=seed, mismatch_rate=0.0, shards=1)
        ref = read_listings(str(tmp_path / str(seed) / "*.parquet"))
        part = together.take(range(6 * k, 6 * k + 6))
        assert (part.ids, part.titles, part.images) == (ref.ids, ref.titles, ref.images)
        assert part.columns == ref.columns
    assert len(synthetic_listings([], 6)) == 0 and len(synthetic_listings([1], 0)) == 0


def test_the_shipped_recipes_are_valid_chain_and_match_their_logs():
    assert [p.stem for p in STAGES] == [f"stage{i}" for i in range(1, 9)]
    recipes = [read_recipe(str(p), recipe_fields()) for p in STAGES]
    assert "init" not in recipes[0] and recipes[0]["config"] == "base"
    assert recipes[1]["init"] == recipes[0]["out"] + "-pruned"           # stage 1 is pruned before stage 2
    for before, after in zip(recipes[1:], recipes[2:]):
        assert after["init"] == before["out"]
    assert recipes[6]["image_negatives"] == recipes[7]["image_negatives"] == 1.0
    # Stage 8 reads both photo folders, split on the 60x80 one's ids.
    assert recipes[7]["split_reference"] == ["fashion-small/60x80/*.parquet"]
    assert set(recipes[7]["data"]) == {"fashion-small/60x80/*.parquet", "fashion-small/224/*.parquet"}
    for i, r in enumerate(recipes, start=1):
        log = [json.loads(line) for line in open(LOGS / f"train_log.stage{i}.jsonl")]
        assert [e["epoch"] for e in log] == list(range(1, len(log) + 1))
        if "time_budget" in r:                                           # planned as the recipe says, then shrunk
            assert log[0]["planned_epochs"] == r["epochs"] > len(log), i
        else:                                                            # ran as the recipe says
            assert len(log) == r.get("stop_after", r["epochs"]), i
        if i >= 7:
            assert all(e["image_bce"] > 0 for e in log)


def test_the_bundled_default_loads_without_its_training_logs():
    matcher = load("default")
    manifest = json.loads((MODEL / "manifest.json").read_text())
    assert matcher.sha256 == manifest["sha256"]["weights.safetensors"]
    assert sorted(os.listdir(MODEL)) == sorted([*manifest["sha256"], "manifest.json", "MODEL_CARD.md"])
    card = (MODEL / "MODEL_CARD.md").read_text()
    for p in STAGES:
        assert f"recipes/default/{p.name}" in card

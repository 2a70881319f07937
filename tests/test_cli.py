import subprocess
import sys

import pytest

from ecomatch_model.checkpoint import load_checkpoint, save
from ecomatch_model.cli import main
from ecomatch_model.model import count_parameters, prunable_channels


def test_model_info_paper_size(capsys):
    assert main(["model-info", "paper"]) == 0
    out = capsys.readouterr().out
    assert "compressed width d/4=128" in out and "input 224x224" in out
    after = next(line for line in out.splitlines() if "after 40% pruning" in line)
    millions = float(after.split("(")[1].split("M)")[0])
    assert abs(millions - 38.6) / 38.6 < 0.10


def test_prune_command_writes_smaller_checkpoint(tiny_ckpt, tmp_path, capsys):
    save(tiny_ckpt, str(tmp_path / "m"))
    assert main(["prune", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    before, after = load_checkpoint(str(tmp_path / "m")).model, load_checkpoint(str(tmp_path / "p")).model
    assert f"parameters before {count_parameters(before):,} after {count_parameters(after):,}" in out
    assert prunable_channels(after) == pytest.approx(0.6 * prunable_channels(before), abs=4)
    assert "Pruning" in (tmp_path / "p" / "MODEL_CARD.md").read_text()


def test_model_package_never_imports_beam():
    code = ("import sys, ecomatch_model, ecomatch_model.cli, ecomatch_model.train, ecomatch_model.evaluate, "
            "ecomatch_model.sample; assert not any(m.startswith('apache_beam') for m in sys.modules), 'beam imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_calibrate_then_evaluate_at_a_calibration_file(tiny_ckpt, tmp_path):
    import json
    from ecomatch_model.sample import write_sample
    save(tiny_ckpt, str(tmp_path / "m"))
    write_sample(str(tmp_path / "data"), n=60, seed=3, mismatch_rate=0.0, shards=1, size=64)
    data = str(tmp_path / "data" / "*.parquet")
    cal = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(tmp_path / "m"), "--data", data, "--review-budget", "500",
                 "--write", str(cal)]) == 0
    policy = json.loads(cal.read_text())
    assert policy["operating_point"]["review_budget_per_10k"] == 500 and policy["operating_point"]["flags_per_10k"] <= 500
    assert {"colour", "article_type", "match"} <= set(policy["checks"])
    # The same curves with a cut no listing reaches: nothing flagged, the same ranking.
    silent = {**policy, "cut": 1.0}
    (tmp_path / "silent.json").write_text(json.dumps(silent))
    args = ["evaluate", "--model", str(tmp_path / "m"), "--data", data, "--queries", "5", "--negatives", "5"]
    assert main([*args, "--calibration", str(cal), "--json", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--calibration", str(tmp_path / "silent.json"), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert b["calibration_file"] == str(tmp_path / "silent.json") and b["operating_point"]["cut"] == 1.0
    assert b["detection"]["false_positive_rate"] == 0.0 and b["detection"]["overall"]["recall"] == 0.0
    assert a["detection"]["cut"] == policy["cut"]
    assert [v["roc_auc"] for v in a["detection"]["kinds"].values()] == \
        [v["roc_auc"] for v in b["detection"]["kinds"].values()]              # the ranking needs no cut
    assert set(a["detection"]["kinds"]) == {"colour", "article_type", "image"}
    (tmp_path / "bad.json").write_text(json.dumps({**policy, "checks": {"sparkle": {"x": [0.0], "y": [0.0]}}}))
    with pytest.raises(SystemExit, match="bad.json: checks.sparkle: unknown kind"):
        main([*args, "--calibration", str(tmp_path / "bad.json")])


def test_agreement_compares_two_photo_folders_and_writes_the_card(tiny_ckpt, tmp_path):
    import json
    from ecomatch_model.sample import write_sample
    save(tiny_ckpt, str(tmp_path / "m"))
    write_sample(str(tmp_path / "small"), n=40, seed=4, mismatch_rate=0.0, shards=1, size=48)
    write_sample(str(tmp_path / "large"), n=40, seed=4, mismatch_rate=0.0, shards=1, size=128)
    small, large = (str(tmp_path / d / "*.parquet") for d in ("small", "large"))
    assert main(["calibrate", "--model", str(tmp_path / "m"), "--data", small, "--review-budget", "500"]) == 0
    out = tmp_path / "agree.json"
    assert main(["agreement", "--model", str(tmp_path / "m"), "--data", small, "--other", large, "--json", str(out),
                 "--update-card"]) == 0
    report = json.loads(out.read_text())
    assert report["unmodified"]["listings"] == 40 and report["data"] == {"a": small, "b": large, "split": "all"}
    assert 0 <= report["all"]["verdict_agreement"] <= 1
    card = load_checkpoint(str(tmp_path / "m")).card
    assert "## Photo agreement" in card and f"| unmodified | 40 | {report['unmodified']['mean_abs_diff_p_violation']:.4f}" in card

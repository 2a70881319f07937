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


def test_evaluate_at_a_thresholds_file(tiny_ckpt, tmp_path):
    import json
    from ecomatch_model.sample import write_sample
    save(tiny_ckpt, str(tmp_path / "m"))
    write_sample(str(tmp_path / "data"), n=40, seed=3, mismatch_rate=0.0, shards=1, size=64)
    data = str(tmp_path / "data" / "*.parquet")
    # Nothing can be flagged at these thresholds: recall 0, no false positives.
    silent = {"match": -1.0, "colour": 0.0, "article_type": 0.0, "pattern": 0.0, "material": 0.0, "gender": 0.0}
    (tmp_path / "t.json").write_text(json.dumps(silent))
    args = ["evaluate", "--model", str(tmp_path / "m"), "--data", data, "--queries", "5", "--negatives", "5"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--thresholds", str(tmp_path / "t.json"), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert b["thresholds"] == silent and b["thresholds_file"] == str(tmp_path / "t.json")
    assert b["at_thresholds"]["recall"] == 0.0 and b["at_thresholds"]["false_positive_rate"] == 0.0
    assert a["thresholds"]["colour"] == 0.4 and a["roc_auc"] == b["roc_auc"]    # AUCs need no thresholds
    (tmp_path / "bad.json").write_text(json.dumps({"sparkle": 0.3}))
    with pytest.raises(SystemExit, match="bad.json"):
        main([*args, "--thresholds", str(tmp_path / "bad.json")])

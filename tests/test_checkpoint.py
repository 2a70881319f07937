import json
import os

import pytest
import torch

from ecomatch_model.checkpoint import CheckpointError, load_checkpoint, save
from ecomatch_model.prune import prune_model


def test_roundtrip_bit_exact(tiny_ckpt, tmp_path):
    sha = save(tiny_ckpt, str(tmp_path / "m"))
    back = load_checkpoint(str(tmp_path / "m"))
    a, b = tiny_ckpt.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.policy == tiny_ckpt.policy and back.weights_sha256 == sha
    assert back.lexicon.values == tiny_ckpt.lexicon.values and back.vocab.words == tiny_ckpt.vocab.words
    assert sha in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    # Saving again gives identical files.
    save(back, str(tmp_path / "m2"))
    for name in ("weights.safetensors", "config.json", "manifest.json"):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "m2" / name).read_bytes()


def test_pruned_checkpoint_roundtrip(tiny_ckpt, tmp_path):
    tiny_ckpt.model = prune_model(tiny_ckpt.model)
    save(tiny_ckpt, str(tmp_path / "p"))
    back = load_checkpoint(str(tmp_path / "p"))
    assert back.model.cfg.image.mlp_hidden == tiny_ckpt.model.cfg.image.mlp_hidden
    assert back.model.cfg.pruned


def test_tampered_weights_fail_sha_check(tiny_ckpt, tmp_path):
    save(tiny_ckpt, str(tmp_path / "m"))
    w = tmp_path / "m" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 of weights.safetensors"):
        load_checkpoint(str(tmp_path / "m"))


def _rewrite(path, name, mutate):
    """Change one file and re-sign the manifest, as a careless converter would."""
    import hashlib
    p = path / name
    p.write_bytes(mutate(p.read_bytes()))
    man = json.loads((path / "manifest.json").read_text())
    man["sha256"][name] = hashlib.sha256(p.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(man))


def test_unknown_config_key_refused(tiny_ckpt, tmp_path):
    save(tiny_ckpt, str(tmp_path / "m"))
    def add_key(b):
        cfg = json.loads(b)
        cfg["image"]["dropout"] = 0.1
        return json.dumps(cfg).encode()
    _rewrite(tmp_path / "m", "config.json", add_key)
    with pytest.raises(CheckpointError, match="unknown ImageConfig keys in config: dropout"):
        load_checkpoint(str(tmp_path / "m"))


def test_misshaped_and_missing_tensors_named(tiny_ckpt, tmp_path):
    save(tiny_ckpt, str(tmp_path / "m"))
    def widen(b):
        cfg = json.loads(b)
        cfg["image"]["mlp_hidden"] = [300, 256]
        cfg["text"]["depth"], cfg["text"]["mlp_hidden"] = 3, [256, 256, 256]
        return json.dumps(cfg).encode()
    _rewrite(tmp_path / "m", "config.json", widen)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path / "m"))
    msg = str(err.value)
    assert "missing tensors: text.blocks.2." in msg
    assert "image.blocks.0.mlp.fc1.weight (256, 128) (expected (300, 128))" in msg


def test_missing_file_named(tiny_ckpt, tmp_path):
    save(tiny_ckpt, str(tmp_path / "m"))
    os.remove(tmp_path / "m" / "lexicon.json")
    with pytest.raises(CheckpointError, match="missing lexicon.json"):
        load_checkpoint(str(tmp_path / "m"))


def test_weights_file_is_not_a_pickle(tiny_ckpt, tmp_path):
    save(tiny_ckpt, str(tmp_path / "m"))
    head = (tmp_path / "m" / "weights.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # not pickle, not a torch zip


@pytest.mark.parametrize("edit, key", [
    (lambda c: {**c, "cut": float("nan")}, "cut"),
    (lambda c: {**c, "checks": {**c["checks"], "colour": {"x": [0.1, 0.5], "y": [-1.0, 1.0]}}}, "checks.colour.y"),
    (lambda c: {**c, "checks": {**c["checks"], "size": {"x": [0.1], "y": [0.0]}}}, "checks.size: unknown kind"),
    (lambda c: {**c, "prevalence": 2.0}, "prevalence"),
])
def test_a_bad_calibration_in_a_checkpoint_is_refused_naming_the_file_and_key(tiny_ckpt, tmp_path, edit, key):
    import hashlib
    import json
    save(tiny_ckpt, str(tmp_path / "m"))
    cal_path, manifest_path = tmp_path / "m" / "calibration.json", tmp_path / "m" / "manifest.json"
    cal = edit(json.loads(cal_path.read_text()))
    cal_path.write_text(json.dumps(cal))         # NaN is written as the literal NaN, as a careless tool would
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"]["calibration.json"] = hashlib.sha256(cal_path.read_bytes()).hexdigest()   # re-signed
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path / "m"))
    assert str(err.value).startswith(str(tmp_path / "m" / "calibration.json") + ": ") and key in str(err.value)


def test_an_uncalibrated_checkpoint_loads_without_a_policy(tiny_ckpt, tmp_path):
    tiny_ckpt.policy = None
    save(tiny_ckpt, str(tmp_path / "m"))
    assert not (tmp_path / "m" / "calibration.json").exists() and load_checkpoint(str(tmp_path / "m")).policy is None


@pytest.mark.parametrize("key, value, message", [
    ("image.patch", 0, "image.patch is 0, expected an integer in [4, 256]"),
    ("text.max_len", 1e9, "text.max_len is 1000000000.0, expected an integer in [1, 4096]"),
    ("text.max_len", 10 ** 9, "text.max_len is 1000000000, expected an integer in [1, 4096]"),
    ("image.width", "128", "image.width is '128', expected an integer in [1, 8192]"),
    ("image.depth", True, "image.depth is True, expected an integer in [1, 64]"),
    ("text.heads", -4, "text.heads is -4, expected an integer in [1, 128]"),
    ("image.mlp_hidden", [256, "x"], "image.mlp_hidden[1] is 'x', expected an integer in [1, 65536]"),
    ("compression", 0, "compression is 0, expected an integer in [1, 1024]"),
    ("aga_heads", None, "aga_heads is None, expected an integer in [1, 128]"),
    ("prune_ratio", float("nan"), "prune_ratio is nan, expected a number in [0, 1)"),
    ("pruned", "yes", "pruned is 'yes', expected true or false"),
    ("text", "big", "text is 'big', expected an object of TextConfig keys"),
])
def test_config_values_are_checked_naming_the_key(tiny_ckpt, tmp_path, key, value, message):
    """A re-signed config.json with a value of the wrong type or out of bounds ends in one
    CheckpointError line naming the key (it used to be a ZeroDivisionError, a 768 GB
    allocation or a cryptic TypeError)."""
    save(tiny_ckpt, str(tmp_path / "m"))

    def set_value(b):
        cfg = json.loads(b)
        *path, leaf = key.split(".")
        target = cfg
        for part in path:
            target = target[part]
        target[leaf] = value
        return json.dumps(cfg).encode()
    _rewrite(tmp_path / "m", "config.json", set_value)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path / "m"))
    assert str(err.value) == f"{tmp_path / 'm'}: bad config.json: {message}"

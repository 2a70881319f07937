"""Model files cannot run code: loading never unpickles, a pickle placed as the weights is
refused without being run, and a scan refuses a tampered model before any work.
(The sha256 check, unknown config keys and mis-shaped tensors are tested in test_checkpoint.py.)"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import listings_table, write_table
from test_checkpoint import _rewrite

from ecomatch_model import cli
from ecomatch_model.checkpoint import CheckpointError, load_checkpoint, save


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_loading_never_unpickles(tiny_ckpt, tmp_path: Path, monkeypatch):
    save(tiny_ckpt, str(tmp_path / "m"))

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled")
    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    back = load_checkpoint(str(tmp_path / "m"))
    expected = tiny_ckpt.model.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in back.model.state_dict().items())


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_a_pickle_placed_as_the_weights_is_refused_without_running_it(tiny_ckpt, tmp_path: Path, fmt):
    """The attacker controls the whole directory, so the manifest is re-signed to match."""
    save(tiny_ckpt, str(tmp_path / "m"))
    marker = tmp_path / "pwned"

    def payload(_: bytes) -> bytes:
        if fmt == "pickle":
            return pickle.dumps({"weight": Payload(marker)})
        buf = io.BytesIO()
        torch.save({"weight": Payload(marker)}, buf)
        return buf.getvalue()
    _rewrite(tmp_path / "m", "weights.safetensors", payload)
    with pytest.raises(CheckpointError, match="weights.safetensors is not a safetensors file"):
        load_checkpoint(str(tmp_path / "m"))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker)))     # the payload is live: unpickling it does run
    assert marker.exists()


def test_scan_refuses_a_tampered_model_before_any_work(tiny_ckpt, tmp_path: Path, capsys):
    save(tiny_ckpt, str(tmp_path / "m"))
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    write_table(tmp_path / "in.parquet", listings_table([{"listing_id": "1", "title": "t", "image": b"x"}]))
    out = tmp_path / "out"
    assert cli.main(["scan", "--input", str(tmp_path / "in.parquet"), "--output", str(out),
                     "--model", str(tmp_path / "m")]) == 2
    assert "sha256 of weights.safetensors" in capsys.readouterr().err and not out.exists()

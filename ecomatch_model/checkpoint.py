"""Checkpoint format: a directory (local or any fsspec URL, e.g. ``gs://``) holding

- ``weights.safetensors``: the tensors (never pickled),
- ``config.json``: ``ModelConfig.to_json()``; unknown keys are refused on load,
- ``vocab.json`` and ``lexicon.json``: the text side the model was trained with,
- ``calibration.json``: the verdict policy's calibration (``ecomatch_model.verdict``),
  validated on load; absent until the model is calibrated,
- ``manifest.json``: format version and the sha256 of every other file, checked on load,
- ``MODEL_CARD.md``: what the model is, how it was trained and measured.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping

import fsspec
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import ModelConfig
from .model import DualMatcher
from .text import Lexicon, Vocabulary
from .verdict import CalibrationError, Policy, policy_bytes, read_policy

FORMAT = "ecomatch-checkpoint/2"
# Format 1 held thresholds.json, which the verdict policy no longer reads: such a checkpoint
# loads without a calibration (recalibrate it with ``ecomatch calibrate``).
OLD_FORMATS = ("ecomatch-checkpoint/1",)
# The weights file's own metadata: its layout did not change with format 2, and keeping the
# bytes keeps the weights' sha256 (the model's identity in reports and --state).
WEIGHTS_FORMAT = "ecomatch-checkpoint/1"
_FILES = ("weights.safetensors", "config.json", "vocab.json", "lexicon.json")
CALIBRATION = "calibration.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing files, fails its hashes, or does not fit its config."""


@dataclass
class Checkpoint:
    """A loaded (or about to be saved) model with its text side and calibration."""

    model: DualMatcher
    vocab: Vocabulary
    lexicon: Lexicon
    policy: Policy | None = None
    card: str = ""
    weights_sha256: str = ""


def value_kind_tensor(lexicon: Lexicon) -> torch.Tensor:
    """(V,) kind index of every lexicon value, in the lexicon's global value order."""
    return torch.tensor([lexicon.kind_id[k] for k, _ in lexicon.values], dtype=torch.long)


def build_model(cfg: ModelConfig, vocab: Vocabulary, lexicon: Lexicon) -> DualMatcher:
    """A fresh model whose vocabulary and value tables match ``vocab`` and ``lexicon``."""
    cfg.text.vocab_size = vocab.size
    cfg.n_values = len(lexicon.values)
    cfg.n_kinds = len(lexicon.kinds)
    return DualMatcher(cfg, value_kind_tensor(lexicon))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def serialize(ckpt: Checkpoint) -> dict[str, bytes]:
    """File name -> bytes of a checkpoint directory (deterministic)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in ckpt.model.state_dict().items()}
    files = {
        "weights.safetensors": st_save(state, metadata={"format": WEIGHTS_FORMAT}),
        "config.json": _json_bytes(ckpt.model.cfg.to_json()),
        "vocab.json": _json_bytes(ckpt.vocab.to_json()),
        "lexicon.json": _json_bytes(ckpt.lexicon.to_json()),
        **({CALIBRATION: policy_bytes(ckpt.policy)} if ckpt.policy is not None else {}),
    }
    ckpt.weights_sha256 = _sha256(files["weights.safetensors"])
    files["manifest.json"] = _json_bytes({"format": FORMAT, "sha256": {n: _sha256(b) for n, b in files.items()}})
    files["MODEL_CARD.md"] = ckpt.card.replace("{weights_sha256}", ckpt.weights_sha256).encode("utf-8")
    return files


def save(ckpt: Checkpoint, path: str) -> str:
    """Write ``ckpt`` as a checkpoint directory at ``path``; returns the weights' sha256."""
    fs, root = fsspec.core.url_to_fs(path)
    fs.makedirs(root, exist_ok=True)
    for name, data in serialize(ckpt).items():
        with fs.open(posixpath.join(root, name), "wb") as f:
            f.write(data)
    return ckpt.weights_sha256


def _read_all(path: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.isdir(root):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    out = {}
    for name in ("manifest.json", *_FILES, CALIBRATION):
        full = posixpath.join(root, name)
        if not fs.exists(full):
            if name == CALIBRATION:
                continue
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        with fs.open(full, "rb") as f:
            out[name] = f.read()
    card = posixpath.join(root, "MODEL_CARD.md")
    out["MODEL_CARD.md"] = fs.cat_file(card) if fs.exists(card) else b""
    return out


def _check_state(model: DualMatcher, state: Mapping[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("unknown tensors: " + ", ".join(unexpected))
    if misshaped:
        problems.append("mis-shaped tensors: " + ", ".join(misshaped))
    if problems:
        raise CheckpointError(f"{where}: weights do not fit config.json: " + "; ".join(problems))


def deserialize(files: Mapping[str, bytes], where: str = "checkpoint") -> Checkpoint:
    """Rebuild a checkpoint from its files, verifying hashes, config keys and tensor shapes."""
    try:
        manifest = json.loads(files["manifest.json"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where}: unreadable manifest.json: {exc}") from None
    if manifest.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{where}: unsupported format {manifest.get('format')!r}, expected {FORMAT}")
    listed = manifest.get("sha256", {}) if isinstance(manifest.get("sha256"), dict) else {}
    if CALIBRATION in listed and CALIBRATION not in files:
        raise CheckpointError(f"{where}: checkpoint is missing {CALIBRATION}, which manifest.json lists")
    for name in (*_FILES, *([CALIBRATION] if CALIBRATION in files else [])):
        want = listed.get(name)
        got = _sha256(files[name])
        if want != got:
            raise CheckpointError(f"{where}: sha256 of {name} is {got}, manifest says {want}: "
                                  "the file was altered or corrupted")
    try:
        cfg = ModelConfig.from_json(json.loads(files["config.json"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad config.json: {exc}") from None
    try:
        vocab = Vocabulary.from_json(json.loads(files["vocab.json"]))
        lexicon = Lexicon.from_json(json.loads(files["lexicon.json"]))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{where}: bad vocab.json or lexicon.json: {type(exc).__name__}: {exc}") from None
    try:
        policy = (read_policy(files[CALIBRATION], lexicon.kinds, posixpath.join(where, CALIBRATION))
                  if CALIBRATION in files and manifest.get("format") == FORMAT else None)
    except CalibrationError as exc:
        raise CheckpointError(str(exc)) from None
    if cfg.text.vocab_size != vocab.size or cfg.n_values != len(lexicon.values):
        raise CheckpointError(f"{where}: config.json sizes (vocab {cfg.text.vocab_size}, values "
                              f"{cfg.n_values}) do not match vocab.json ({vocab.size}) and "
                              f"lexicon.json ({len(lexicon.values)})")
    model = DualMatcher(cfg, value_kind_tensor(lexicon))
    try:
        state = st_load(files["weights.safetensors"])
    except Exception as exc:  # the safetensors parser's own error types
        raise CheckpointError(f"{where}: weights.safetensors is not a safetensors file: {exc}") from None
    _check_state(model, state, where)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model, vocab, lexicon, policy, files.get("MODEL_CARD.md", b"").decode("utf-8"),
                      manifest["sha256"]["weights.safetensors"])


def load_checkpoint(path: str) -> Checkpoint:
    """Load a checkpoint directory from a local path or fsspec URL."""
    return deserialize(_read_all(path), where=path)

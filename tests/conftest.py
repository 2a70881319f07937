"""Shared fixtures: a tiny model with a small real lexicon and vocabulary, built in-process."""
from __future__ import annotations

import io
import os

# Before anything imports gcsfs: without it every gcsfs call first waits about a minute on a
# gRPC probe that cannot reach Google from here.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest
import torch
from PIL import Image

from ecomatch_model.checkpoint import Checkpoint, build_model
from ecomatch_model.config import get_config
from ecomatch_model.text import Lexicon, Vocabulary
from ecomatch_model.verdict import Curve, Policy, describe, policy_bytes


def threshold_policy(thresholds: dict, cut: float = 0.5) -> Policy:
    """A policy that behaves like per-kind thresholds: a check's likelihood ratio passes 1
    at its kind's threshold (steeply, within +-0.05), the listing curve is the identity and
    p_violation is stated at prevalence 0.5, so that with the default cut a listing is a
    violation when (about) one check is below its threshold."""
    checks = {k: Curve((t - 0.05, t + 0.05), (4.0, -4.0)) for k, t in thresholds.items()}
    return Policy(checks, Curve((-12.0, 12.0), (-12.0, 12.0)), 0.5, cut, {"precision": 0.9, "expected_precision": 0.9,
                                                                          "expected_recall": 0.8,
                                                                          "false_positive_rate": 0.01})


def write_policy(path, thresholds: dict, cut: float = 0.5) -> str:
    """A calibration file of :func:`threshold_policy` at ``path``; returns the path."""
    with open(path, "wb") as f:
        f.write(policy_bytes(threshold_policy(thresholds, cut)))
    return str(path)


def calibration_summary(thresholds: dict) -> dict:
    """``summary.json``'s calibration block of :func:`threshold_policy` (as ScanInfo takes it)."""
    return describe(threshold_policy(thresholds), "checkpoint")


@pytest.fixture(scope="session")
def lexicon() -> Lexicon:
    return Lexicon.from_seeds()


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary.build(["Ardent Men Navy Blue Cotton T-Shirt", "Kestrel Women Red Dress"] * 2, n_buckets=64)


@pytest.fixture()
def tiny_ckpt(lexicon, vocab) -> Checkpoint:
    torch.manual_seed(0)
    model = build_model(get_config("tiny"), vocab, lexicon).eval()
    # Untrained gates are all one; spread them so pruning has an order to follow.
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "gate"):
                m.gate.copy_(torch.rand(m.gate.shape))
    return Checkpoint(model, vocab, lexicon, threshold_policy({"match": 0.1, "colour": 0.4}),
                      "# card\n\nsha `{weights_sha256}`\n")


def jpeg_bytes(colour=(200, 30, 30), size=(90, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def red_jpeg() -> bytes:
    return jpeg_bytes()

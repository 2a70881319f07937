"""Physical channel pruning: remove the least important MLP hidden units of every block.

A unit's importance is the magnitude of its learned gate times the norm of its outgoing
weights (what it can add to the residual stream). Pruning keeps the most important
``1 - ratio`` units of each block, folds the kept gates into ``fc2`` and resets them to one,
and returns a smaller dense model with the same API and, for the kept units, the same
function.
"""
from __future__ import annotations

import copy

import torch

from .model import DualMatcher, GatedMLP


def channel_importance(mlp: GatedMLP) -> torch.Tensor:
    """(H,) importance of each hidden unit."""
    return mlp.gate.detach().abs() * mlp.fc2.weight.detach().norm(dim=0)


def _keep_indices(mlp: GatedMLP, ratio: float) -> torch.Tensor:
    hidden = mlp.gate.numel()
    keep = max(1, hidden - int(round(hidden * ratio)))
    return channel_importance(mlp).topk(keep).indices.sort().values


@torch.no_grad()
def prune_model(model: DualMatcher, ratio: float | None = None) -> DualMatcher:
    """A new model with ``ratio`` (default: the config's) of each block's MLP units removed."""
    ratio = model.cfg.prune_ratio if ratio is None else ratio
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    cfg = copy.deepcopy(model.cfg)
    keeps: dict[str, torch.Tensor] = {}
    for tower, tcfg in (("image", cfg.image), ("text", cfg.text)):
        blocks = getattr(model, tower).blocks
        for i, blk in enumerate(blocks):
            keeps[f"{tower}.blocks.{i}.mlp"] = _keep_indices(blk.mlp, ratio)
        tcfg.mlp_hidden = [int(keeps[f"{tower}.blocks.{i}.mlp"].numel()) for i in range(len(blocks))]
    cfg.pruned = True
    new = DualMatcher(cfg, model.value_kind)
    state = model.state_dict()
    for prefix, keep in keeps.items():
        gate = state[f"{prefix}.gate"][keep]
        state[f"{prefix}.fc1.weight"] = state[f"{prefix}.fc1.weight"][keep]
        state[f"{prefix}.fc1.bias"] = state[f"{prefix}.fc1.bias"][keep]
        state[f"{prefix}.fc2.weight"] = state[f"{prefix}.fc2.weight"][:, keep] * gate
        state[f"{prefix}.gate"] = torch.ones_like(gate)
    new.load_state_dict(state)
    return new.train(model.training)

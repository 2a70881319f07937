"""MODEL_CARD.md: written at training time, its sections replaced by later commands
(calibration, evaluation) so the card always states how each number was produced."""
from __future__ import annotations

import json
import re

from .model import DualMatcher, count_parameters, prunable_channels


def section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n"


def replace_section(card: str, title: str, body: str) -> str:
    """``card`` with section ``title`` replaced (or appended)."""
    new = section(title, body)
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(card):
        return pattern.sub(lambda _: new + "\n", card).rstrip() + "\n"
    return card.rstrip() + "\n\n" + new


def header(name: str, model: DualMatcher) -> str:
    cfg = model.cfg
    return (f"# Model card: {name}\n\n"
            f"- Config: `{cfg.name}`{' (pruned)' if cfg.pruned else ''}; input {cfg.image.image_size}x"
            f"{cfg.image.image_size}; text {cfg.text.max_len} tokens\n"
            f"- Parameters: {count_parameters(model):,}; prunable MLP channels: {prunable_channels(model):,}\n"
            f"- Compressed feature width: {cfg.embed_dim} (= {cfg.image.width} / r, r = {cfg.compression})\n"
            f"- Weights sha256: `{{weights_sha256}}`\n")


def metrics_block(report: dict, command: str) -> str:
    r = report
    lines = [f"Command: `{command}`", ""]
    if "retrieval" in r:
        rt = r["retrieval"]
        lines += [f"Retrieval ({rt['queries']} queries, {rt['candidates']} candidates each):", "",
                  "| direction | R@1 | R@5 | R@10 |", "|---|---|---|---|",
                  f"| image -> text | {rt['image_to_text_R@1']:.3f} | {rt['image_to_text_R@5']:.3f} | "
                  f"{rt['image_to_text_R@10']:.3f} |",
                  f"| text -> image | {rt['text_to_image_R@1']:.3f} | {rt['text_to_image_R@5']:.3f} | "
                  f"{rt['text_to_image_R@10']:.3f} |", ""]
    if "roc_auc" in r:
        lines += ["Mismatch detection ROC-AUC (corrupted copies against the same listings unmodified); the "
                  "last column scores the same pairs with the global cosine alone (no AGA):", "",
                  "| corruption | ROC-AUC | pairs | global cosine only |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['auc']:.4f} | {v['pairs']} | {v['global_only_auc']:.4f} |"
                  for k, v in r["roc_auc"].items()]
        lines.append("")
    if "at_thresholds" in r:
        a = r["at_thresholds"]
        lines += [f"At the shipped thresholds, over {a['clean']} unmodified and {a['corrupted']} corrupted "
                  f"listings (colour, article type, image swap in turn): precision {a['precision']:.3f}, "
                  f"recall {a['recall']:.3f}, false-positive rate on unmodified listings "
                  f"{a['false_positive_rate']:.3f}, attribution accuracy {a['attribution_accuracy']:.3f} (share of detected "
                  "attribute corruptions whose blamed attribute is the corrupted one: the worst failing attribute, "
                  "or when only the global match fails, the one whose swap restores the match).", ""]
    if r.get("ground_truth"):
        lines += ["Labelled mismatches in the data (`mismatch_kind`):", "",
                  "| kind | total | flagged | flagged with the right worst kind (image: match or a visible attribute) |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['total']} | {v['flagged']} | {v['right_kind']} |"
                  for k, v in sorted(r["ground_truth"].items())]
        lines.append("")
    lines += ["<details><summary>Raw JSON</summary>", "", "```json", json.dumps(r, indent=1, sort_keys=True),
              "```", "</details>"]
    return "\n".join(lines)

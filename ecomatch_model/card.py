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
    if "detection" in r:
        d, op = r["detection"], r.get("operating_point", {})
        lines += [f"Mismatch detection ranked by `p_violation`, the severity the scan writes: each corrupted copy "
                  f"(from the catalogue's columns) against all {d['clean']} unmodified listings. Operating point "
                  f"`p_violation >= {d['cut']:.4f}`" + (f" (chosen for expected precision {op['precision']:.2f} at "
                  f"prevalence {op['prevalence']:g})" if "precision" in op else "") +
                  f": false-positive rate on unmodified listings **{d['false_positive_rate']:.4f}**.", "",
                  "| corruption | copies | ROC-AUC | recall at the operating point | recall at 1% FPR | "
                  "recall at 0.5% FPR | precision at 2% prevalence | attribution accuracy |",
                  "|---|---|---|---|---|---|---|---|"]
        rows = [*d.get("kinds", {}).items(), *([("**overall**", d["overall"])] if "overall" in d else [])]
        lines += [f"| {k} | {v['corrupted']} | {v['roc_auc']:.4f} | {v['recall']:.3f} | {v['recall_at_0.01_fpr']:.3f} | "
                  f"{v['recall_at_0.005_fpr']:.3f} | {v['precision_at_2pct']:.3f} | {v['attribution_accuracy']:.3f} |"
                  for k, v in rows]
        lines.append("")
    if r.get("ground_truth"):
        lines += ["Labelled mismatches in the data (`mismatch_kind`):", "",
                  "| kind | total | flagged | flagged with the right worst kind (image: match or a visible attribute) |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['total']} | {v['flagged']} | {v['right_kind']} |"
                  for k, v in sorted(r["ground_truth"].items())]
        lines.append("")
    lines += ["<details><summary>Raw JSON</summary>", "", "```json", json.dumps(r, indent=1, sort_keys=True),
              "```", "</details>"]
    return "\n".join(lines)

#!/usr/bin/env bash
# Rebuild the bundled default model (tiny config, synthetic catalogue) and the sample data.
# Training data is rendered with another seed than sample_data/, so the evaluation below
# runs on listings the model never saw; thresholds are set on a third synthetic set. Usage: scripts/train_default.sh [EPOCHS]
set -euo pipefail
epochs="${1:-40}"
ecomatch="${ECOMATCH:-.venv/bin/ecomatch}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$ecomatch" make-sample --out sample_data --n 400 --seed 0 --mismatch-rate 0.2 --shards 2
"$ecomatch" make-sample --out "$work/train" --n 12000 --seed 101 --mismatch-rate 0 --shards 6
"$ecomatch" make-sample --out "$work/calibration" --n 1000 --seed 303 --mismatch-rate 0 --shards 1
"$ecomatch" train --data "$work/train/*.parquet" --config tiny --out "$work/model" --epochs "$epochs" \
   --batch-size 256 --lr 2e-3
rm -rf ecomatch_model/models/default
mkdir -p ecomatch_model/models/default
cp "$work"/model/{weights.safetensors,config.json,vocab.json,lexicon.json,thresholds.json,manifest.json,MODEL_CARD.md} \
   "$work"/model/train_log.jsonl ecomatch_model/models/default/
"$ecomatch" calibrate --model default --data "$work/calibration/*.parquet" --precision 0.9
"$ecomatch" evaluate --model default --data 'sample_data/*.parquet' --json "$work/eval.json" --update-card \
   --card-section "Evaluation on sample_data/"

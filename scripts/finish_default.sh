#!/usr/bin/env bash
# Turn a trained real-data checkpoint into the shipped default model, on the CPU: calibrate
# on the real listings' validation split, evaluate there, calibrate the thresholds for the
# bundled synthetic sample_data/ on a separately rendered synthetic set (seed 303, never
# scanned), evaluate sample_data/ at those thresholds, and install the model into
# ecomatch_model/models/default (the checkpoint's files and card only) and the thresholds
# into sample_data/thresholds.json. The run's per-epoch training log is kept outside the
# installed package, as docs/training/default/train_log.stageSTAGE.jsonl (STAGE: the recipe's
# stage number; default: one more than the logs already there).
# Usage: scripts/finish_default.sh MODEL_DIR REAL_GLOB WORK [STAGE]
set -euo pipefail
model="$1"; real="$2"; work="$3"
logs=docs/training/default
shopt -s nullglob
kept=("$logs"/train_log.stage*.jsonl)
stage="${4:-$(( ${#kept[@]} + 1 ))}"
ecomatch="${ECOMATCH:-.venv/bin/ecomatch}"
mkdir -p "$work"
rm -rf "$work/default" "$work/sample-cal" "$work/synthetic-303"
cp -r "$model" "$work/default"
"$ecomatch" calibrate --model "$work/default" --data "$real" --split val --precision 0.9
"$ecomatch" evaluate --model "$work/default" --data "$real" --split val --json "$work/real-val.json" --update-card
# Thresholds for the synthetic catalogue: the same procedure on 1,000 rendered listings.
"$ecomatch" make-sample --out "$work/synthetic-303" --n 1000 --seed 303 --mismatch-rate 0 --shards 1
"$ecomatch" calibrate --model "$work/default" --data "$work/synthetic-303/*.parquet" --precision 0.9 \
  --out "$work/sample-cal"
cp "$work/sample-cal/thresholds.json" sample_data/thresholds.json
"$ecomatch" evaluate --model "$work/default" --data 'sample_data/*.parquet' --thresholds sample_data/thresholds.json \
  --json "$work/sample.json" --update-card --card-section "Evaluation on sample_data/ (at sample_data/thresholds.json)"
mkdir -p "$logs"
cp "$model/train_log.jsonl" "$logs/train_log.stage$stage.jsonl"
rm -rf ecomatch_model/models/default
mkdir -p ecomatch_model/models/default
cp "$work"/default/{weights.safetensors,config.json,vocab.json,lexicon.json,thresholds.json,manifest.json,MODEL_CARD.md} \
   ecomatch_model/models/default/

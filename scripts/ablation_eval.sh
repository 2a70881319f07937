#!/usr/bin/env bash
# One row of the default model's ablation table, by the shipped model's yardstick: a copy of
# MODEL_DIR is calibrated on the `cal` half of the validation split (both photo folders, as
# scripts/calibrate_default.sh does), evaluated on the `test` half of each folder, and its
# verdicts compared between the two photos of the listings both folders hold. Writes
# WORK/{eval-60x80,eval-224,agreement}.json and prints the row. MODEL_DIR is left as it is.
# Usage: scripts/ablation_eval.sh MODEL_DIR [DATA_DIR] WORK
set -euo pipefail
model="$1"; data="${2:-../shared/data/fashion-small}"; work="$3"
ecomatch="${ECOMATCH:-.venv/bin/ecomatch}"
ref="$data/60x80/*.parquet"
mkdir -p "$work"
rm -rf "$work/model"
cp -r "$model" "$work/model"
"$ecomatch" calibrate --model "$work/model" --data "$data/60x80/*.parquet" --data "$data/224/*.parquet" \
  --split cal --split-reference "$ref" --precision 0.5 --prevalence 0.02 --max-eval 6000 > "$work/calibrate.log" 2>&1
for folder in 60x80 224; do
  "$ecomatch" evaluate --model "$work/model" --data "$data/$folder/*.parquet" --split test --split-reference "$ref" \
    --json "$work/eval-$folder.json" > "$work/eval-$folder.log" 2>&1
done
"$ecomatch" agreement --model "$work/model" --data "$data/60x80/*.parquet" --other "$data/224/*.parquet" \
  --split test --split-reference "$ref" --json "$work/agreement.json" > "$work/agreement.log" 2>&1
"${PYTHON:-.venv/bin/python}" scripts/ablation_row.py "$work"

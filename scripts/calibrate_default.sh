#!/usr/bin/env bash
# The default model's verdict calibration and its evaluation, on the CPU. The validation
# split of the real catalogue (by image content, as in training; the 224 folder's listings
# follow their 60x80 ids) is halved by listing id: the policy is fitted and its operating
# point chosen on the `cal` half of both photo folders, and evaluated on the `test` half of
# each folder apart, and the verdicts of the listings both folders hold compared between their
# two photos (ecomatch agreement). sample_data/ gets its own calibration, fitted the same way on 1,000
# listings rendered with another seed (303, never scanned), at the sample's 20% prevalence.
# Usage: scripts/calibrate_default.sh [MODEL_DIR] [DATA_DIR] [WORK]
set -euo pipefail
model="${1:-ecomatch_model/models/default}"
data="${2:-../shared/data/fashion-small}"
work="${3:-runs/calibrate}"
ecomatch="${ECOMATCH:-.venv/bin/ecomatch}"
ref="$data/60x80/*.parquet"
mkdir -p "$work"
"$ecomatch" calibrate --model "$model" --data "$data/60x80/*.parquet" --data "$data/224/*.parquet" \
  --split cal --split-reference "$ref" --precision 0.5 --prevalence 0.02 --max-eval 6000
rm -f "$model/thresholds.json"          # format 1's calibration, replaced by calibration.json
for folder in 60x80 224; do
  "$ecomatch" evaluate --model "$model" --data "$data/$folder/*.parquet" --split test --split-reference "$ref" \
    --json "$work/eval-$folder.json" --update-card \
    --card-section "Evaluation: $folder photos (test half of the validation split)"
done
"$ecomatch" agreement --model "$model" --data "$data/60x80/*.parquet" --other "$data/224/*.parquet" \
  --split test --split-reference "$ref" --json "$work/agreement.json" --update-card
"$ecomatch" make-sample --out "$work/synthetic-303" --n 1000 --seed 303 --mismatch-rate 0 --shards 1
"$ecomatch" calibrate --model "$model" --data "$work/synthetic-303/*.parquet" --precision 0.9 --prevalence 0.2 \
  --write sample_data/calibration.json
"$ecomatch" evaluate --model "$model" --data 'sample_data/*.parquet' --calibration sample_data/calibration.json \
  --json "$work/sample.json" --update-card --card-section "Evaluation on sample_data/ (at sample_data/calibration.json)"

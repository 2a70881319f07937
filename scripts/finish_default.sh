#!/usr/bin/env bash
# Turn the runs of scripts/gpu_train_default.sh into the shipped default model, on the CPU:
# prune 40%, calibrate on the real listings' validation split, evaluate there and on the
# bundled synthetic sample_data/, and install into ecomatch_model/models/default.
# The ablation runs are evaluated with the same command into WORK/*.json.
# Usage: scripts/finish_default.sh RUNS_DIR REAL_GLOB WORK
set -euo pipefail
runs="$1"; real="$2"; work="$3"
ecomatch="${ECOMATCH:-.venv/bin/ecomatch}"
mkdir -p "$work"
"$ecomatch" prune --model "$runs/default" --out "$work/default-pruned"
"$ecomatch" calibrate --model "$work/default-pruned" --data "$real" --split val --precision 0.9
evaluate() {  # model json [extra]
  local model="$1" json="$2"; shift 2
  OMP_NUM_THREADS=1 "$ecomatch" evaluate --model "$model" --data "$real" --split val --json "$json" "$@"
}
evaluate "$work/default-pruned" "$work/default-pruned.json" --update-card &
evaluate "$runs/default" "$work/default-unpruned.json" &
wait
evaluate "$runs/default-r1" "$work/default-r1.json" &
evaluate "$runs/default-shuffled" "$work/default-shuffled.json" &
wait
"$ecomatch" evaluate --model "$work/default-pruned" --data 'sample_data/*.parquet' --json "$work/sample.json" \
  --update-card --card-section "Evaluation on sample_data/"
rm -rf ecomatch_model/models/default
mkdir -p ecomatch_model/models/default
cp "$work"/default-pruned/{weights.safetensors,config.json,vocab.json,lexicon.json,thresholds.json,manifest.json,MODEL_CARD.md} \
   "$runs"/default/train_log.jsonl ecomatch_model/models/default/

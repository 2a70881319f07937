#!/usr/bin/env bash
# Turn a trained real-data checkpoint into the shipped default model, on the CPU: install it
# into ecomatch_model/models/default (the checkpoint's files and card only), keep the run's
# per-epoch training log outside the installed package, as
# docs/training/default/train_log.stageSTAGE.jsonl (STAGE: the recipe's stage number;
# default: one more than the logs already there), then calibrate and evaluate it with
# scripts/calibrate_default.sh (the verdict's calibration on the real catalogue, evaluation
# on both photo folders, sample_data/calibration.json).
# Usage: scripts/finish_default.sh MODEL_DIR DATA_DIR WORK [STAGE]
set -euo pipefail
model="$1"; data="$2"; work="$3"
logs=docs/training/default
shopt -s nullglob
kept=("$logs"/train_log.stage*.jsonl)
stage="${4:-$(( ${#kept[@]} + 1 ))}"
mkdir -p "$work"
mkdir -p "$logs"
cp "$model/train_log.jsonl" "$logs/train_log.stage$stage.jsonl"
rm -rf ecomatch_model/models/default
mkdir -p ecomatch_model/models/default
cp "$model"/{weights.safetensors,config.json,vocab.json,lexicon.json,manifest.json,MODEL_CARD.md} \
   ecomatch_model/models/default/
# The calibration the training run fitted on its validation split, which manifest.json lists;
# calibrate_default.sh then replaces it.
if [ -f "$model/calibration.json" ]; then cp "$model/calibration.json" ecomatch_model/models/default/; fi
bash scripts/calibrate_default.sh ecomatch_model/models/default "$data" "$work"

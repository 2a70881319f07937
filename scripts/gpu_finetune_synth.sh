#!/usr/bin/env bash
# Fine-tune on real listings plus a larger synthetic catalogue, runs side by side, on a GPU
# machine that has torch but not this project installed: stages 4 and 5 of the default model
# (recipes/default/stage4.toml, stage5.toml; stage 5 starts from stage 4, so they ran one
# after the other). RUNS lists NAME:RECIPE[:INIT] (INIT overrides the recipe's starting
# checkpoint, e.g. where it travelled; default: stage 4 from its recipe's init). Then
# every run and the starting default model are measured the same way: thresholds calibrated
# on a synthetic set rendered with seed 303, the deliberate mismatches of sample_data/ at
# those thresholds, and the real validation split of REAL_GLOB. Machine plumbing only: the
# recipes hold the training values; DATA_ROOT is where their data was copied; each run is
# time-boxed (SECONDS_BOX, MEASURE_BOX). Results (JSON) and the runs (tar parts of at most
# 15 MB) go to OUT.
# Usage: scripts/gpu_finetune_synth.sh OUT REAL_GLOB
set -uo pipefail
out="$1"; real="$2"
data_root="${DATA_ROOT:-.data}"; device="${DEVICE:-cuda}"; seconds="${SECONDS_BOX:-240}"
py="${PYTHON:-python3}"; cal_n="${CAL_N:-1000}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
work="$(mktemp -d)"
cli() { "$py" -m ecomatch_model.cli "$@"; }
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
echo "real: $(ls $real 2>/dev/null | wc -l) shards"
runs="${RUNS:-stage4:recipes/default/stage4.toml}"
cli make-sample --out "$work/cal" --n "$cal_n" --seed 303 --mismatch-rate 0 --shards 1 >/dev/null

train() {  # name recipe [init]
  local name="$1" recipe="$2" init="${3:-}" t0=$SECONDS
  OMP_NUM_THREADS=4 timeout "$seconds" "$py" -m ecomatch_model.cli train --recipe "$recipe" --data-root "$data_root" \
    ${init:+--init "$init"} --out "$work/$name" --device "$device" > "$work/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  grep -vE "step [0-9]+/[0-9]+ loss|threshold " "$work/$name.log" | tail -4
}
names=()
for r in $runs; do
  IFS=: read -r name recipe init <<< "$r"
  names+=("$name")
  train "$name" "$recipe" "$init" &
done
wait

measure() {  # name model-dir; at most MEASURE_BOX seconds a step
  local name="$1" model="$2" box="${MEASURE_BOX:-90}"
  cli() { timeout "$box" "$py" -m ecomatch_model.cli "$@"; }
  OMP_NUM_THREADS=4 cli calibrate --model "$model" --data "$work/cal/*.parquet" --precision 0.9 --device "$device" \
    --out "$work/$name-cal" > "$work/$name-measure.log" 2>&1
  OMP_NUM_THREADS=4 cli evaluate --model "$model" --data 'sample_data/*.parquet' --device "$device" \
    --thresholds "$work/$name-cal/thresholds.json" --json "$out/$name-sample.json" >> "$work/$name-measure.log" 2>&1
  OMP_NUM_THREADS=4 cli evaluate --model "$model" --data "$real" --split val --device "$device" \
    --json "$out/$name-real.json" >> "$work/$name-measure.log" 2>&1
  echo "$name measured: exit $?"
  cp "$work/$name-cal/thresholds.json" "$work/$name-sample-thresholds.json" 2>/dev/null
}
[ "${MEASURE_DEFAULT:-1}" = 1 ] && measure default ecomatch_model/models/default &
for name in "${names[@]}"; do
  [ -f "$work/$name/weights.safetensors" ] && measure "$name" "$work/$name" &
done
wait
"$py" - "$out" "${names[@]}" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"{'model':<8} {'colour':>7} {'article':>8} {'pattern':>8} {'image':>6} {'R@1':>6} | sample flagged/right kind")
for name in ["default"] + sys.argv[2:]:
    try:
        real = json.loads((out / f"{name}-real.json").read_text())
        sample = json.loads((out / f"{name}-sample.json").read_text())
    except FileNotFoundError:
        continue
    auc = {k: v["auc"] for k, v in real["roc_auc"].items()}
    r1 = real.get("retrieval", {}).get("image_to_text_R@1", float("nan"))
    gt = " ".join(f"{k} {v['flagged']}/{v['right_kind']}" for k, v in sorted(sample["ground_truth"].items()))
    print(f"{name:<8} {auc.get('colour', 0):7.4f} {auc.get('article_type', 0):8.4f} {auc.get('pattern', 0):8.4f} "
          f"{auc.get('image', 0):6.4f} {r1:6.3f} | {gt}")
PY
cd "$work" && tar cf - --exclude=train_state "${names[@]}" "${names[@]/%/.log}" *-sample-thresholds.json *-measure.log 2>/dev/null \
  | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

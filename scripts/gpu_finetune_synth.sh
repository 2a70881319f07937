#!/usr/bin/env bash
# Fine-tune on real listings plus a larger synthetic catalogue, runs side by side, on a GPU
# machine that has torch but not this project installed. RUNS lists NAME:INIT:SEEDS_GLOB
# (default: A, the shipped default on synthetic seeds 101-104; B, the same on seeds 101-108,
# twice as many); SEEDS are the synthetic seeds rendered, SYNTH_N listings each. Then every run and the
# starting model are measured the same way: thresholds calibrated on a synthetic set
# rendered with seed 303, the deliberate mismatches of sample_data/ at those thresholds,
# and the real validation split of the shards given. Results (JSON) and the runs (tar parts
# of at most 15 MB) go to OUT. Each run is time-boxed by SECONDS_BOX.
# Usage: scripts/gpu_finetune_synth.sh OUT REAL_GLOB
set -uo pipefail
out="$1"; real="$2"
device="${DEVICE:-cuda}"; seconds="${SECONDS_BOX:-240}"; synth_n="${SYNTH_N:-4000}"; lr="${LR:-2e-4}"
py="${PYTHON:-python3}"; cal_n="${CAL_N:-1000}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
work="$(mktemp -d)"
cli() { "$py" -m ecomatch_model.cli "$@"; }
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
echo "real: $(ls $real 2>/dev/null | wc -l) shards"
t0=$SECONDS
seeds="${SEEDS:-101 102 103 104 105 106 107 108}"
runs="${RUNS:-A:ecomatch_model/models/default:10[1-4] B:ecomatch_model/models/default:*}"
for seed in $seeds; do
  cli make-sample --out "$work/synth/$seed" --n "$synth_n" --seed "$seed" --mismatch-rate 0 --shards 1 >/dev/null &
done
cli make-sample --out "$work/cal" --n "$cal_n" --seed 303 --mismatch-rate 0 --shards 1 >/dev/null &
wait
echo "synthetic catalogue: $(($(echo $seeds | wc -w) * synth_n)) listings in $((SECONDS - t0)) s"

train() {  # name init synthetic-glob
  local name="$1" init="$2" synth="$3" t0=$SECONDS
  OMP_NUM_THREADS=4 timeout "$seconds" "$py" -m ecomatch_model.cli train --data "$real" --data "$synth" \
    --init "$init" --out "$work/$name" --epochs 40 --batch-size 256 --lr "$lr" \
    --device "$device" --max-eval 300 --time-budget $((seconds - 50)) > "$work/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  grep -vE "step [0-9]+/[0-9]+ loss|threshold " "$work/$name.log" | tail -4
}
names=()
for r in $runs; do
  IFS=: read -r name init glob <<< "$r"
  names+=("$name")
  train "$name" "$init" "$work/synth/$glob/*.parquet" &
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

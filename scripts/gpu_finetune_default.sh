#!/usr/bin/env bash
# Fine-tune a trained real-data checkpoint (INIT) on real listings plus the synthetic
# catalogue rendered here, on a GPU machine that has torch but not this project installed:
# two runs side by side that differ only in length. Time-boxed like gpu_train_default.sh;
# outputs packed into OUT as tar parts of at most 15 MB.
# Usage: scripts/gpu_finetune_default.sh OUT INIT REAL_GLOB [REAL_GLOB...]
set -uo pipefail
out="$1"; init="$2"; shift 2
device="${DEVICE:-cuda}"; seconds="${SECONDS_BOX:-160}"; synth_n="${SYNTH_N:-1500}"; lr="${LR:-3e-4}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
source "$(dirname "$0")/gpu_data.sh"
run() {  # name epochs
  local name="$1" epochs="$2"
  local t0=$SECONDS
  OMP_NUM_THREADS=4 timeout "$seconds" "$py" -m ecomatch_model.cli train "${data[@]}" --init "$init" \
    --out "$work/$name" --epochs "$epochs" --batch-size 256 --lr "$lr" --device "$device" --max-eval 300 \
    ${LIMIT:+--limit $LIMIT} --time-budget $((seconds - 60)) > "$work/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  grep -vE "step [0-9]+/[0-9]+ loss|threshold " "$work/$name.log" | tail -6
  tail -n 2 "$work/$name/train_log.jsonl"
}
run ft6 6 &
run ft12 12 &
wait
cd "$work" && tar cf - --exclude=train_state ft6 ft12 ft6.log ft12.log | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

#!/usr/bin/env bash
# Train the shipped default model (`base` config) on a GPU machine that has torch but not
# this project installed: the real catalogue listings plus a synthetic catalogue rendered
# here (so the bundled synthetic sample_data/ is in-domain too), with hard-negative batches.
# Two ablation runs train beside it with the same recipe: r=1 (no compression) and plain
# shuffled batches (no hard negatives).
# Each run is time-boxed; the checkpoint written after every epoch survives a timeout.
# Outputs are packed into OUT as tar parts of at most 15 MB.
# Usage: scripts/gpu_train_default.sh OUT EPOCHS REAL_GLOB [REAL_GLOB...]
set -uo pipefail
out="$1"; epochs="$2"; shift 2
device="${DEVICE:-cuda}"; seconds="${SECONDS_BOX:-360}"; synth_n="${SYNTH_N:-2500}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
source "$(dirname "$0")/gpu_data.sh"
run() {  # name extra-args...
  local name="$1"; shift
  local t0=$SECONDS
  OMP_NUM_THREADS=4 timeout "$seconds" "$py" -m ecomatch_model.cli train "${data[@]}" --config base \
    --out "$work/$name" --epochs "$epochs" --batch-size 256 --lr 1e-3 --device "$device" ${LIMIT:+--limit $LIMIT} \
    --time-budget $((seconds - 75)) \
    "$@" > "$work/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  grep -vE "step [0-9]+/[0-9]+ loss" "$work/$name.log" | tail -12
  tail -n 2 "$work/$name/train_log.jsonl"
}
run default --group-chunk 32 &
run default-r1 --group-chunk 32 --set compression=1 &
run default-shuffled &
wait
cd "$work" && tar cf - --exclude=train_state default* \
  | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

#!/usr/bin/env bash
# The card's from-scratch ablation group (recipes/ablations/scratch.toml: `base` on real plus
# synthetic listings, hard-negative batches) with its two variants beside it: r=1 (no
# compression) and plain shuffled batches (no hard negatives), on a GPU machine that has
# torch but not this project installed. Machine plumbing only: DATA_ROOT is where the
# recipe's data was copied; each run is time-boxed (SECONDS_BOX; the checkpoint written after
# every epoch survives a timeout); outputs are packed into OUT as tar parts of at most 15 MB.
# Usage: scripts/gpu_train_default.sh OUT EPOCHS
set -uo pipefail
out="$1"; epochs="$2"
data_root="${DATA_ROOT:-.data}"; device="${DEVICE:-cuda}"; seconds="${SECONDS_BOX:-385}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
run() {  # name extra-args...
  local name="$1"; shift
  local t0=$SECONDS
  OMP_NUM_THREADS=4 timeout "$seconds" "$py" -m ecomatch_model.cli train --recipe recipes/ablations/scratch.toml \
    --data-root "$data_root" --out "$work/$name" --epochs "$epochs" --device "$device" "$@" > "$work/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  grep -vE "step [0-9]+/[0-9]+ loss" "$work/$name.log" | tail -12
  tail -n 2 "$work/$name/train_log.jsonl"
}
run default &
run default-r1 --set compression=1 &
run default-shuffled --group-chunk 0 &
wait
cd "$work" && tar cf - --exclude=train_state default* \
  | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

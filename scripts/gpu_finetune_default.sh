#!/usr/bin/env bash
# Stage 2 of the default model (recipes/default/stage2.toml: fine-tune stage 1 on real plus
# synthetic listings), on a GPU machine that has torch but not this project installed: two
# runs side by side that differ only in length (ft12 is the recipe; ft6 stops at 6 epochs).
# Machine plumbing only: DATA_ROOT is where the recipe's data was copied, INIT where stage 1
# travelled; each run is time-boxed (SECONDS_BOX); outputs are packed into OUT as tar parts
# of at most 15 MB.
# Usage: scripts/gpu_finetune_default.sh OUT INIT
set -uo pipefail
out="$1"; init="$2"
data_root="${DATA_ROOT:-.data}"; device="${DEVICE:-cuda}"; seconds="${SECONDS_BOX:-160}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
run() {  # name extra-args...
  local name="$1"; shift
  local t0=$SECONDS
  OMP_NUM_THREADS=4 timeout "$seconds" "$py" -m ecomatch_model.cli train --recipe recipes/default/stage2.toml \
    --data-root "$data_root" --init "$init" --out "$work/$name" --device "$device" "$@" > "$work/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  grep -vE "step [0-9]+/[0-9]+ loss|threshold " "$work/$name.log" | tail -6
  tail -n 2 "$work/$name/train_log.jsonl"
}
run ft6 --epochs 6 &
run ft12 &
wait
cd "$work" && tar cf - --exclude=train_state ft6 ft12 ft6.log ft12.log | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

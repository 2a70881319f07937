#!/usr/bin/env bash
# Stage 1 of the default model (recipes/default/stage1.toml: `base` from scratch on real
# listings) and its r=1 (no compression) ablation, on a GPU machine that has torch but not
# this project installed. Machine plumbing only: the recipe holds the training values.
# DATA_ROOT is where the recipe's data was copied (fashion-small/60x80/...). Each run is
# time-boxed; the checkpoint written after every epoch survives a timeout. Outputs are packed
# into OUT as tar parts of at most 15 MB.
# Usage: scripts/gpu_train_base.sh OUT
set -uo pipefail
out="$1"
data_root="${DATA_ROOT:-.data}"; device="${DEVICE:-cuda}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
run() {  # name seconds extra-args...
  local name="$1" secs="$2"; shift 2
  local t0=$SECONDS
  timeout "$secs" "$py" -m ecomatch_model.cli train --recipe recipes/default/stage1.toml --data-root "$data_root" \
    --out "$work/$name" --device "$device" "$@" 2>&1 | tee "$work/$name.log" \
    | grep -vE "step [0-9]+/[0-9]+ loss" | tail -20
  echo "$name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
run base "${BASE_SECONDS:-270}"
run base-r1 "${R1_SECONDS:-200}" --set compression=1
cd "$work" && tar cf - --exclude=train_state base base-r1 base.log base-r1.log | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

#!/usr/bin/env bash
# Train the `base` model and its r=1 (no compression) ablation on real listings, on a GPU
# machine that has torch but not this project installed. Each run is time-boxed; the
# checkpoint written after every epoch survives a timeout. Outputs are packed into
# OUT as tar parts of at most 15 MB.
# Usage: scripts/gpu_train_base.sh DATA_GLOB OUT [EPOCHS]
set -uo pipefail
data="$1"; out="$2"; epochs="${3:-40}"
device="${DEVICE:-cuda}"; limit="${LIMIT:+--limit $LIMIT}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
run() {  # name seconds extra-args...
  local name="$1" secs="$2"; shift 2
  local t0=$SECONDS
  timeout "$secs" "$py" -m ecomatch_model.cli train --data "$data" --config base --out "$work/$name" \
    --epochs "$epochs" --batch-size 256 --lr 1e-3 --device "$device" $limit "$@" 2>&1 | tee "$work/$name.log" \
    | grep -vE "step [0-9]+/[0-9]+ loss" | tail -20
  echo "$name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
run base "${BASE_SECONDS:-270}"
run base-r1 "${R1_SECONDS:-200}" --set compression=1
cd "$work" && tar cf - --exclude=train_state base base-r1 base.log base-r1.log | split -b 15m - "$out/runs.tar.part-"
ls -la "$out"

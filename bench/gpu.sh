#!/usr/bin/env bash
# The GPU benchmark: fast-path checks, model forward (fp32, bf16, bf16 + torch.compile) for
# paper (224x224, pruned) and base, JPEG decode (Pillow per core, batched nvJPEG) and
# decode + forward; one markdown table at the end, JSON in OUTDIR. No network, no Beam.
#
#   bash bench/gpu.sh OUTDIR DATA_DIR        # DATA_DIR holds 60x80/ and/or 224/ Parquet shards
#
# Run from the repository root. Wheels in .whl/ (if any) are installed into /tmp/site first.
# Each part is time-boxed (about 4.5 minutes in all on an H100). DEVICE=cpu QUICK=1 is the
# small run that checks this script on a machine without a GPU; PYTHON picks the interpreter.
# PROFILE=paper is the shorter run for the paper config's targets: autocast against bf16
# weights (``precision="bf16-weights"``), compiled, and decode + compiled forward with the
# decode of the next batch pipelined, on the 224x224 shards, then the model as trained
# (--as-loaded: without for_inference's NHWC stem and aligned MLP widths); about 6 minutes
# on an H100. T_TUNED=SECONDS adds autotuned GEMMs (max-autotune-no-cudagraphs: it did not
# finish compiling `paper` in 120 s on an H100). COMPILE_MODE passes a torch.compile mode
# to the compiled rows (reduce-overhead, ...). bench/paper_variants.sh compares batch
# sizes, attention backends, cuDNN's algorithm search and CUDA graphs for `paper`.
set -u
source "$(dirname "$0")/lib.sh"

"$PY" - <<PYEOF
import platform, sys, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
try:
    import torchvision; print(f"torchvision {torchvision.__version__}")
except Exception as exc:
    print(f"torchvision: not importable ({type(exc).__name__})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
try:
    import apache_beam; print("apache_beam importable (not used)")
except Exception:
    print("apache_beam: not importable (as intended: nothing here needs it)")
print("device for this run: $DEVICE")
PYEOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader

DATA_ARGS=(); CHECK_DATA=()
for d in 224 60x80; do
  if compgen -G "$DATA/$d/*.parquet" > /dev/null; then
    DATA_ARGS+=(--data "$DATA/$d/*.parquet"); CHECK_DATA+=(--data "$DATA/$d/*.parquet")
  fi
done
[ ${#DATA_ARGS[@]} -gt 0 ] || echo "no Parquet shards under $DATA/224 or $DATA/60x80: decode and check parts skipped" >&2

if [ "${QUICK:-0}" = 1 ]; then
  CHECK=(--limit 64); MODEL=(--configs tiny base --batch-sizes 2 8 --repeats 2 --min-seconds 0.1 --matmul-n 512)
  COMPILE=(--configs tiny --compile-batch-sizes 4 --batch-sizes 4 --repeats 2 --min-seconds 0.1 --matmul-n 512)
  DECODE=(--limit 32 --sizes 80 --synthetic 0 --repeats 1 --gpu-batch 16 --e2e-limit 16)
  T_CHECK=120 T_MODEL=200 T_DECODE=300 T_COMPILE=300
elif [ "${PROFILE:-}" = paper ]; then
  CHECK=(--limit 512); MODEL=(--configs paper --dtypes bf16 bf16w --batch-sizes 256 1024 --repeats 5 --min-seconds 0.25)
  COMPILE=(--configs paper --compile-batch-sizes 256 512 --batch-sizes 256 --repeats 5 --min-seconds 0.25 --profile 25)
  DECODE=(--limit 1024 --sizes 224 --synthetic 0 --repeats 3 --gpu-batch 256 --no-pillow --e2e-models paper
          --e2e-precision bf16-weights --e2e-compile --e2e-tile 4)
  [ -d "$DATA/224" ] && DATA_ARGS=(--data "$DATA/224/*.parquet")
  T_CHECK=50 T_MODEL=35 T_DECODE=100 T_COMPILE=150
else
  CHECK=(--limit 1024); MODEL=(--configs paper base --batch-sizes 64 256 1024 --repeats 5 --min-seconds 0.25)
  COMPILE=(--configs paper base --compile-batch-sizes 256 --batch-sizes 256 --repeats 5 --min-seconds 0.25)
  DECODE=(--limit 1024 --sizes 80 224 --synthetic 0 --repeats 3 --gpu-batch 256)
  T_CHECK=40 T_MODEL=80 T_DECODE=75 T_COMPILE=90
fi


[ ${#CHECK_DATA[@]} -gt 0 ] && run check "$T_CHECK" "$PY" bench/fastpath_check.py "${CHECK_DATA[@]}" "${CHECK[@]}" \
  --device "$DEVICE" --json "$OUT/check.json" --dump "$OUT/worst.npz"
run model "$T_MODEL" "$PY" bench/model.py --prune --device "$DEVICE" "${MODEL[@]}" --json "$OUT/model.json"
[ ${#DATA_ARGS[@]} -gt 0 ] && run decode "$T_DECODE" "$PY" bench/decode.py "${DATA_ARGS[@]}" "${DECODE[@]}" \
  --batched --e2e --device "$DEVICE" --json "$OUT/decode.json"
[ -n "${COMPILE_MODE:-}" ] && COMPILE+=(--compile-mode "$COMPILE_MODE")   # e.g. reduce-overhead, max-autotune
run compile "$T_COMPILE" "$PY" bench/model.py --prune --device "$DEVICE" --dtypes bf16+compile \
  $([ "${PROFILE:-}" = paper ] && echo bf16w+compile) "${COMPILE[@]}" \
  --json "$OUT/compile.json"

if [ "${PROFILE:-}" = paper ]; then   # the same rows without for_inference's preparation, then autotuned GEMMs
  run model-as-loaded 30 "$PY" bench/model.py --prune --as-loaded --device "$DEVICE" --configs paper --dtypes bf16w \
    --batch-sizes 1024 --repeats 5 --min-seconds 0.25 --json "$OUT/model-as-loaded.json"
  run compile-as-loaded 60 "$PY" bench/model.py --prune --as-loaded --device "$DEVICE" --configs paper \
    --dtypes bf16w+compile --compile-batch-sizes 256 --repeats 5 --min-seconds 0.25 --json "$OUT/compile-as-loaded.json"
  [ -n "${T_TUNED:-}" ] && run compile-tuned "$T_TUNED" "$PY" bench/model.py --prune --device "$DEVICE" --configs paper \
    --dtypes bf16w+compile --compile-batch-sizes 256 --compile-mode max-autotune-no-cudagraphs --repeats 5 \
    --min-seconds 0.25 --json "$OUT/compile-tuned.json"
fi

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), device $DEVICE, ${SECONDS}s in all)"
"$PY" bench/summary.py "$OUT"

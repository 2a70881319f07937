#!/usr/bin/env bash
# The `paper` forward under the run-time options that could decide the GPU defaults, each
# compiled, bf16 weights, as Matcher holds the model (``for_inference``'s one path): batch
# size, then the fast-path score check and a profile with operator shapes. ALL=1 adds
# cuDNN's algorithm search, the attention backends and CUDA graphs (measured 2026-11-26: all
# within 2%). Variants of the model's layout (other MLP paddings, a padded stem input, 2-D
# MLP rows) are no longer options of the model code: try one by changing a copy of the model
# here in bench/ and timing it beside the default. One JSON per part in OUTDIR, one table at
# the end. No network, no Beam; its time boxes add up to under 3 minutes without ALL=1.
#
#   bash bench/paper_variants.sh OUTDIR DATA_DIR     # DATA_DIR as for bench/gpu.sh
set -u
source "$(dirname "$0")/lib.sh"
RUN_SHOW='^  .*listings/s|^(PASS|FAIL)'
BASE=(bench/model.py --prune --device "$DEVICE" --configs "${CONFIG:-paper}" --dtypes bf16w+compile --repeats 5
      --min-seconds 0.25)
B=${BATCH:-512}


run compile 70 "$PY" "${BASE[@]}" --compile-batch-sizes "$B" 1024 --json "$OUT/compile.json"
CHECK=()
for d in 224 60x80; do compgen -G "$DATA/$d/*.parquet" > /dev/null && CHECK+=(--data "$DATA/$d/*.parquet"); done
[ ${#CHECK[@]} -gt 0 ] && run check 50 "$PY" bench/fastpath_check.py "${CHECK[@]}" --limit 512 --device "$DEVICE" \
  --json "$OUT/check.json"
run profile 50 "$PY" "${BASE[@]}" --compile-batch-sizes "$B" --profile 30 --json "$OUT/profile.json"
[ "${ALL:-0}" = 1 ] || SKIP=1
[ -z "${SKIP:-}" ] && run compile-flash 45 "$PY" "${BASE[@]}" --compile-batch-sizes "$B" --sdpa flash --json "$OUT/compile-flash.json"
[ -z "${SKIP:-}" ] && run compile-cudnn-benchmark 45 "$PY" "${BASE[@]}" --compile-batch-sizes "$B" --cudnn-benchmark \
  --json "$OUT/compile-cudnn-benchmark.json"
[ -z "${SKIP:-}" ] && run compile-graphs 60 "$PY" "${BASE[@]}" --compile-batch-sizes "$B" --compile-mode reduce-overhead \
  --json "$OUT/compile-graphs.json"
[ -z "${SKIP:-}" ] && run compile-efficient 45 "$PY" "${BASE[@]}" --compile-batch-sizes "$B" --sdpa efficient \
  --json "$OUT/compile-efficient.json"

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), device $DEVICE, ${SECONDS}s in all)"
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
sys.path.insert(0, "bench")
from summary import mode_label
out = pathlib.Path(sys.argv[1])
print(f"| part | mode | batch | listings/s | TFLOP/s | share of ceiling |\n|---|---|---|---|---|---|")
for path in sorted(out.glob("*.json")):
    if path.stem == "check":
        for c in json.loads(path.read_text())["checks"]:
            print(f"| check | {c['check']} | | max {c['max_abs_diff']} | | {'PASS' if c['ok'] else 'FAIL'} (limit {c['limit']}) |")
        continue
    for r in json.loads(path.read_text())["rows"]:
        print(f"| {path.stem} | {mode_label(r)} | {r['batch']} | {r['listings_per_s']:,.0f} | "
              f"{r['achieved_tflop_s']:.0f} | {r['share_of_ceiling']:.1%} |")
PY

# Shared by bench/gpu.sh and bench/paper_variants.sh (sourced, with the script's arguments):
# OUT and DATA from the arguments, PY (the interpreter: $PYTHON or python3), ROOT (the
# repository, made the working directory), wheels in .whl/ installed into /tmp/site,
# PYTHONPATH, DEVICE (cuda when torch sees one, else cpu, unless set), and run().
OUT=${1:?usage: bash bench/$(basename "$0") OUTDIR DATA_DIR}
DATA=${2:?usage: bash bench/$(basename "$0") OUTDIR DATA_DIR}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
cd "$ROOT"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=${DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}

run() {  # name seconds command...: time-boxed, its log in $OUT/name.log; shows the log's last
  # 25 lines, or its lines matching $RUN_SHOW (an extended regex) when set
  local name=$1 secs=$2; shift 2
  echo "== $name (at most ${secs}s): $*"
  local t0=$SECONDS
  timeout --kill-after=5 "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ -n "${RUN_SHOW:-}" ]; then grep -E "$RUN_SHOW" "$OUT/$name.log" | tail -n 12; else tail -n 25 "$OUT/$name.log"; fi
  echo "== $name: exit $rc after $((SECONDS - t0))s"
}

# Sourced by the GPU training scripts: sets `data` to --data arguments for the real-listing
# globs given (a glob that matches nothing, data that did not travel, is left out) plus a
# synthetic training catalogue rendered into "$work/synth" (seeds 101-104, $synth_n each;
# sample_data/ is seed 0 and the sample's calibration set 303). Needs py, work, synth_n.
data=()
for g in "$@"; do
  n=$(ls $g 2>/dev/null | wc -l); echo "$g: $n shards"
  if [ "$n" -gt 0 ]; then data+=(--data "$g"); fi
done
t0=$SECONDS
for seed in 101 102 103 104; do
  "$py" -m ecomatch_model.cli make-sample --out "$work/synth/$seed" --n "$synth_n" --seed "$seed" \
    --mismatch-rate 0 --shards 1 >/dev/null &
done
wait
echo "synthetic catalogue: $((4 * synth_n)) listings in $((SECONDS - t0)) s"
data+=(--data "$work/synth/*/*.parquet")

"""End-to-end `ecomatch scan` throughput on real listings, against the raw forward
throughput of the same model measured in the same run.

For each worker count the scan runs as a child process (FnApiRunner; 2 workers use
multi_processing) over the input, optionally repeated K times to show that peak memory
does not grow with the input. Prints a table (listings/s, peak RSS of the scan's processes,
ratio to raw forward) and writes JSON. Peak RSS is that of the scan's largest process.
The raw forward is measured right before and right after every scan, and each scan's ratio
is taken against the mean of those two, so a machine whose speed drifts (a shared one)
moves both sides of the ratio alike; with ``--trials N`` each scan runs N times and the
table gives the median ratio.

    python bench/scan.py --data '../shared/data/fashion-small/60x80/*.parquet' --model default \\
        --repeat 1 3 --workers 1 2 --json bench/scan.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ecomatch_model.api import load  # noqa: E402
from ecomatch_model.data import expand_glob  # noqa: E402

from model import make_inputs, time_forward  # noqa: E402  (bench/model.py)


def repeated_input(files: list[str], k: int, where: Path) -> str:
    """A glob over ``k`` links to every input file (the same listings k times)."""
    where.mkdir(parents=True, exist_ok=True)
    for r in range(k):
        for i, f in enumerate(files):
            link = where / f"r{r}-{i:05d}.parquet"
            if not link.exists():
                link.symlink_to(os.path.abspath(f))
    return str(where / "*.parquet")


def run_scan(pattern: str, model: str, workers: int, batch: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "pipelines.scan", "--input", pattern, "--output", str(out), "--model", model,
           "--batch-size", str(batch)]
    if workers > 1:
        cmd += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    # A fresh wrapper process per scan, so RUSAGE_CHILDREN covers this scan's processes only.
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    peak = int(done.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(wall, 2), "listings": summary["counts"]["read"],
            "scored": summary["counts"]["scored"], "pipeline_listings_per_s": summary["listings_per_second"],
            "wall_listings_per_s": round(summary["counts"]["read"] / wall, 1),
            "peak_rss_mib": round(peak / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--workers", nargs="*", type=int, default=[1, 2])
    p.add_argument("--repeat", nargs="*", type=int, default=[1])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=1, help="runs of each scan (the median ratio is shown)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    matcher = load(args.model, device="cpu")
    inputs = make_inputs(matcher.model, args.batch_size, torch.device("cpu"))

    def forward() -> float:
        return statistics.median(time_forward(matcher.model, inputs, "fp32", 5, 1.0))
    files = expand_glob(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.repeat:
            pattern = repeated_input(files, k, Path(tmp) / f"in-x{k}")
            for w in args.workers:
                trials = []
                for t in range(args.trials):
                    before = forward()
                    r = run_scan(pattern, args.model, w, args.batch_size, Path(tmp) / f"out-x{k}-w{w}-t{t}")
                    after = forward()
                    r.update({"forward_before": round(before, 1), "forward_after": round(after, 1),
                              "ratio_to_forward": round(r["pipeline_listings_per_s"] / ((before + after) / 2), 3)})
                    trials.append(r)
                    print(f"  x{k} w{w} trial {t + 1}: scan {r['pipeline_listings_per_s']:.1f}/s, forward "
                          f"{before:.1f} then {after:.1f}/s, ratio {r['ratio_to_forward']:.3f}", file=sys.stderr,
                          flush=True)
                mid = sorted(trials, key=lambda r: r["ratio_to_forward"])[len(trials) // 2]
                rows.append({**mid, "repeat": k, "workers": w,
                             "ratios": [r["ratio_to_forward"] for r in trials],
                             "peak_rss_mib": max(r["peak_rss_mib"] for r in trials), "trials": trials})
    print(f"model {args.model}: raw forward at batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of 5, measured before and after each scan; {args.trials} trial(s) each, the median shown")
    print(f"{'repeat':>6} {'workers':>7} {'listings':>8} {'wall s':>7} {'scan l/s':>9} {'wall l/s':>9} "
          f"{'forward l/s':>13} {'ratio':>6} {'all ratios':>22} {'peak RSS MiB':>12}")
    for r in rows:
        fwd = f"{r['forward_before']:.0f}/{r['forward_after']:.0f}"
        print(f"{r['repeat']:>6} {r['workers']:>7} {r['listings']:>8} {r['wall_s']:>7.1f} "
              f"{r['pipeline_listings_per_s']:>9.1f} {r['wall_listings_per_s']:>9.1f} {fwd:>13} "
              f"{r['ratio_to_forward']:>6.2f} {str(r['ratios']):>22} {r['peak_rss_mib']:>12.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

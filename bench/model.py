"""Forward throughput of the model configs: listings/s (median of repeats), peak memory,
GFLOP per listing and achieved GFLOP/s. Runs on the CPU here and on CUDA where present
(fp32 and bf16 autocast; --compile adds torch.compile). Needs only torch and this
package's model code (no Beam). Prints a table and writes JSON.

    python bench/model.py --configs tiny base --batch-sizes 1 32 128 --json bench/model.json
    python bench/model.py --model ecomatch_model/models/default   # a trained checkpoint
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecomatch_model.checkpoint import build_model, load_checkpoint  # noqa: E402
from ecomatch_model.cli import gflops_per_listing  # noqa: E402
from ecomatch_model.config import get_config  # noqa: E402
from ecomatch_model.text import Lexicon, Vocabulary  # noqa: E402


def make_inputs(model, batch: int, device: torch.device):
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    l, a, s = cfg.text.max_len, cfg.max_attrs, cfg.image.image_size
    ids = torch.randint(1, cfg.text.vocab_size, (batch, l), generator=g)
    mask = torch.arange(l).expand(batch, l) < 12                       # 12-token titles
    attr_mask = torch.zeros(batch, a, l)
    for j in range(4):                                                   # 4 mentions each
        attr_mask[:, j, 2 * j:2 * j + 2] = 1
    valid = torch.arange(a).expand(batch, a) < 4
    value = torch.randint(0, cfg.n_values, (batch, a), generator=g)
    pixels = torch.randn(batch, 3, s, s, generator=g)
    return [t.to(device) for t in (pixels, ids, mask, attr_mask, valid, value)]


def time_forward(model, inputs, dtype: str, repeats: int, min_seconds: float) -> list[float]:
    device = inputs[0].device
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
           else torch.autocast(device.type, enabled=False))
    rates = []
    with torch.inference_mode(), ctx:
        model(*inputs)  # warm-up (and compile)
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            while True:
                model(*inputs)
                n += 1
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if time.perf_counter() - t0 >= min_seconds:
                    break
            rates.append(n * inputs[0].shape[0] / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=["tiny", "base"])
    p.add_argument("--model", action="append", default=[], help="checkpoint directory (repeatable)")
    p.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 32, 128])
    p.add_argument("--dtypes", nargs="*", default=None, help="fp32 bf16 (default: fp32 on CPU, both on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    models = [(name, build_model(get_config(name), Vocabulary([], n_buckets=get_config(name).text.vocab_size - 1),
                                 Lexicon.from_seeds())) for name in args.configs]
    models += [(path, load_checkpoint(path).model) for path in args.model]
    rows = []
    for name, model in models:
        gflop = gflops_per_listing(model)
        model = model.to(device).eval()
        run = torch.compile(model) if args.compile else model
        for dtype in dtypes:
            for batch in args.batch_sizes:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rates = time_forward(run, make_inputs(model, batch, device), dtype, args.repeats, args.min_seconds)
                med = statistics.median(rates)
                peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                rows.append({"model": name, "device": str(device), "dtype": dtype, "compile": args.compile,
                             "batch": batch, "listings_per_s": round(med, 1),
                             "min_max": [round(min(rates), 1), round(max(rates), 1)],
                             "gflop_per_listing": round(gflop, 4), "achieved_gflop_s": round(med * gflop, 1),
                             "peak_mib": round(peak, 1)})
    print(f"{'model':<34} {'device':<6} {'dtype':<5} {'batch':>5} {'listings/s':>11} {'(min-max)':>17} "
          f"{'GFLOP/l':>8} {'GFLOP/s':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['model']:<34} {r['device']:<6} {r['dtype']:<5} {r['batch']:>5} {r['listings_per_s']:>11.1f} "
              f"{str(r['min_max']):>17} {r['gflop_per_listing']:>8.3f} {r['achieved_gflop_s']:>8.1f} {r['peak_mib']:>9.0f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

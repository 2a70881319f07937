"""Forward throughput of the model configs: listings/s (median of repeats), peak memory,
GFLOP per listing, achieved TFLOP/s and its share of a matrix-product ceiling measured in
the same run. Runs on the CPU here and on CUDA where present (modes fp32, bf16 autocast,
and bf16 under torch.compile with --compile). Needs only torch and this package's model
code (no Beam). Prints a table and writes JSON.

    python bench/model.py --configs tiny base --batch-sizes 1 32 128 --json bench/model.json
    python bench/model.py --model ecomatch_model/models/default   # a trained checkpoint
    python bench/model.py --configs base base:image.image_size=112 --prune --batch-sizes 32   # a resized config
    python bench/model.py --configs paper base --prune --batch-sizes 64 256 1024 --compile   # GPU

On CUDA each measurement is timed with CUDA events around ``iters`` forwards (``iters``
chosen after warm-up so a repeat lasts about --min-seconds); on the CPU with the wall clock.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecomatch_model.checkpoint import build_model, load_checkpoint  # noqa: E402
from ecomatch_model.cli import gflops_per_listing  # noqa: E402
from ecomatch_model.config import apply_overrides, get_config  # noqa: E402
from ecomatch_model.model import for_inference, towers_to  # noqa: E402
from ecomatch_model.prune import prune_model  # noqa: E402
from ecomatch_model.text import Lexicon, Vocabulary  # noqa: E402

# bf16: autocast; bf16w: the towers held in bf16 (``Matcher(precision="bf16-weights")``).
MODES = ("fp32", "bf16", "bf16+compile", "bf16w", "bf16w+compile")
# --sdpa: attention backends allowed (the text tower's masked attention needs one that takes a mask).
SDPA = {"cudnn": ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"), "flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION"),
        "efficient": ("EFFICIENT_ATTENTION",), "math": ("MATH",)}


def sdpa_backends(name: str | None):
    """A context restricting attention to ``SDPA[name]`` (no restriction for None)."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, b) for b in SDPA[name]])


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


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype.split("+")[0] == "bf16")


def repeat_rates(fn: Callable[[], object], per_call: int, device: torch.device, repeats: int,
                 min_seconds: float, warmup: int = 3) -> list[float]:
    """Items/s of ``fn`` (``per_call`` items each), one rate per repeat; on CUDA timed with
    events around a calibrated number of calls, on the CPU with the wall clock."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        rates = []
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                if time.perf_counter() - t0 >= min_seconds:
                    break
            rates.append(n * per_call / (time.perf_counter() - t0))
        return rates
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    iters = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rates = []
    for _ in range(repeats):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        rates.append(iters * per_call / (start.elapsed_time(end) / 1e3))
    return rates


def time_forward(model, inputs, dtype: str, repeats: int, min_seconds: float, sdpa: str | None = None) -> list[float]:
    """Listings/s of ``model(*inputs)`` under ``dtype`` ("fp32", or "bf16" autocast), one per repeat."""
    device = inputs[0].device
    with torch.inference_mode(), autocast(device, dtype), sdpa_backends(sdpa):
        return repeat_rates(lambda: model(*inputs), inputs[0].shape[0], device, repeats, min_seconds)


def kernel_table(model, inputs, dtype: str, top: int, iters: int = 5, sdpa: str | None = None) -> str:
    """The ``top`` kernels by device time over ``iters`` forwards, then the ``top`` operators
    by device time including their callees, with their input shapes (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    device = inputs[0].device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), autocast(device, dtype), sdpa_backends(sdpa), \
            profile(activities=activities, record_shapes=True) as prof:
        for _ in range(iters):
            model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    dev = "cuda" if device.type == "cuda" else "cpu"
    return "\n".join([prof.key_averages().table(sort_by=f"self_{dev}_time_total", row_limit=top,
                                                 max_name_column_width=70),
                      prof.key_averages(group_by_input_shape=True).table(
                          sort_by=f"{dev}_time_total", row_limit=top, max_name_column_width=40,
                          max_shapes_column_width=90)])


def matmul_ceiling(device: torch.device, dtype: str, n: int, repeats: int = 3, min_seconds: float = 0.3) -> float:
    """TFLOP/s of an n x n x n matrix product in ``dtype`` (bf16 or fp32 operands): the
    ceiling the model's dense work is compared with."""
    dt = torch.bfloat16 if dtype.startswith("bf16") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    with torch.inference_mode():
        rates = repeat_rates(lambda: a @ b, 1, device, repeats, min_seconds)
    return statistics.median(rates) * 2 * n ** 3 / 1e12


def config_model(spec: str, prune: bool):
    """A randomly initialised model of ``NAME`` or ``NAME:KEY=VALUE,...`` (config overrides,
    e.g. ``base:image.image_size=112``, for sizing a config before training it)."""
    name, _, overrides = spec.partition(":")
    cfg = apply_overrides(get_config(name), overrides.split(",") if overrides else [])
    name = spec
    model = build_model(cfg, Vocabulary([], n_buckets=cfg.text.vocab_size - 1), Lexicon.from_seeds())
    if prune and not cfg.pruned:
        return f"{name} (random, {cfg.prune_ratio:.0%} pruned)", prune_model(model.eval())
    return f"{name} (random)", model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=["tiny", "base"])
    p.add_argument("--model", action="append", default=[], help="checkpoint directory (repeatable)")
    p.add_argument("--prune", action="store_true", help="prune the --configs models by their prune_ratio first")
    p.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 32, 128])
    p.add_argument("--dtypes", nargs="*", default=None, choices=MODES,
                   help="modes to run (default: fp32 on CPU, fp32 and bf16 on CUDA; --compile adds bf16+compile)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="add the bf16+compile mode")
    p.add_argument("--compile-batch-sizes", nargs="*", type=int, default=None,
                   help="batch sizes for bf16+compile (default: --batch-sizes; each size compiles once)")
    p.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode for the +compile modes (reduce-overhead: CUDA graphs)")
    p.add_argument("--as-loaded", action="store_true",
                   help="time the model as trained instead of as Matcher holds it (ecomatch_model.model."
                        "for_inference: on CUDA NHWC stem, MLP widths padded to 8)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--sdpa", default=None, choices=sorted(SDPA),
                   help="restrict scaled_dot_product_attention to these backends (default: PyTorch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after each row, print the N operators and kernels with the most device time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--matmul-n", type=int, default=None, help="ceiling matmul size (default 8192 CUDA, 1024 CPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    modes = list(args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"]))
    if args.compile and "bf16+compile" not in modes:
        modes.append("bf16+compile")
    n = args.matmul_n or (8192 if cuda else 1024)
    ceilings = {d: round(matmul_ceiling(device, d, n), 2) for d in sorted({m.split("+")[0].rstrip("w") for m in modes})}
    models = [config_model(name, args.prune) for name in args.configs]
    models += [(path, load_checkpoint(path).model) for path in args.model]
    rows = []
    for name, model in models:
        gflop = gflops_per_listing(model)
        model = model.to(device).eval()
        for mode in modes:
            compiled = mode.endswith("+compile")
            if args.as_loaded:     # the model as trained: BatchNorms, pruned widths, NCHW
                held = towers_to(copy.deepcopy(model), torch.bfloat16) if mode.startswith("bf16w") else model
            else:                  # as Matcher holds it
                held = for_inference(model, device, "bf16-weights" if mode.startswith("bf16w") else "fp32")
            run = torch.compile(held, dynamic=False, mode=args.compile_mode) if compiled else held
            for batch in (args.compile_batch_sizes or args.batch_sizes) if compiled else args.batch_sizes:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                try:
                    rates = time_forward(run, make_inputs(model, batch, device), mode, args.repeats, args.min_seconds,
                                         args.sdpa)
                except torch.OutOfMemoryError:
                    print(f"{name} {mode} batch {batch}: out of memory", file=sys.stderr)
                    continue
                med = statistics.median(rates)
                peak = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                tflops = med * gflop / 1e3
                rows.append({"model": name, "device": str(device), "dtype": mode, "compile": compiled,
                             "prepared": not args.as_loaded, "sdpa": args.sdpa,
                             "cudnn_benchmark": args.cudnn_benchmark,
                             "compile_mode": (args.compile_mode or "default") if compiled else None,
                             "batch": batch, "listings_per_s": round(med, 1),
                             "min_max": [round(min(rates), 1), round(max(rates), 1)],
                             "gflop_per_listing": round(gflop, 4), "achieved_gflop_s": round(med * gflop, 1),
                             "achieved_tflop_s": round(tflops, 3),
                             "ceiling_tflop_s": ceilings[mode.split("+")[0].rstrip("w")],
                             "share_of_ceiling": round(tflops / ceilings[mode.split("+")[0].rstrip("w")], 4),
                             "peak_mib": round(peak, 1), "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {name} {mode} batch {batch}: {med:.1f} listings/s", file=sys.stderr, flush=True)
                if args.profile:
                    print(kernel_table(run, make_inputs(model, batch, device), mode, args.profile, sdpa=args.sdpa),
                          file=sys.stderr)
    gpu = torch.cuda.get_device_name(device) if cuda else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          + (f", {gpu}, CUDA {torch.version.cuda}" if cuda else ""))
    print("matmul ceiling (" + f"{n}^3): " + ", ".join(f"{d} {t:.1f} TFLOP/s" for d, t in ceilings.items()))
    print(f"{'model':<34} {'device':<6} {'mode':<12} {'batch':>5} {'listings/s':>11} {'(min-max)':>19} "
          f"{'GFLOP/l':>8} {'TFLOP/s':>8} {'ceiling':>7} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['model']:<34} {r['device']:<6} {r['dtype']:<12} {r['batch']:>5} {r['listings_per_s']:>11.1f} "
              f"{str(r['min_max']):>19} {r['gflop_per_listing']:>8.3f} {r['achieved_tflop_s']:>8.3f} "
              f"{r['share_of_ceiling']:>7.1%} {r['peak_mib']:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "device": gpu or platform.machine(), "cuda": torch.version.cuda,
                                               "matmul_n": n, "ceilings_tflop_s": ceilings, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

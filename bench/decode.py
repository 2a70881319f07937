"""Decode + preprocess throughput per core: Pillow with and without JPEG draft mode, on
real listing images (a Parquet glob) and on synthetic 800x800 JPEGs. Prints a table and
writes JSON. One process, one thread: the numbers are per core.

    python bench/decode.py --data '../shared/data/fashion-small/224/*.parquet' --json bench/decode.json
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecomatch_model.data import expand_glob  # noqa: E402
from ecomatch_model.preprocess import letterbox, open_image  # noqa: E402
from ecomatch_model.sample import render_image  # noqa: E402


def synthetic_jpegs(n: int, size: int) -> list[bytes]:
    out = []
    for i in range(n):
        img = render_image("tshirt", "blue", "striped", np.random.default_rng(i), size=128).resize((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_plain(data: bytes, size: int) -> np.ndarray:
    """The baseline: full-resolution decode, then the same letterbox."""
    return letterbox(Image.open(io.BytesIO(data)).convert("RGB"), size)


def decode_draft(data: bytes, size: int) -> np.ndarray:
    """ecomatch's path: header check, JPEG draft mode (DCT scaling), letterbox."""
    return letterbox(open_image(data, size), size)


def rate(fn, images: list[bytes], size: int, repeats: int) -> tuple[float, list[float]]:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for data in images:
            fn(data, size)
        rates.append(len(images) / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", default=[], help="Parquet glob with an image column (repeatable)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--sizes", nargs="*", type=int, default=[80, 96, 224], help="model input sizes")
    p.add_argument("--synthetic", type=int, default=200, help="number of synthetic 800x800 JPEGs (0: none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sets: list[tuple[str, list[bytes]]] = []
    for pattern in args.data:
        images: list[bytes] = []
        for path in expand_glob(pattern):
            images += pq.read_table(path, columns=["image"]).column("image").to_pylist()
            if len(images) >= args.limit:
                break
        sets.append((pattern, images[: args.limit]))
    if args.synthetic:
        sets.append(("synthetic 800x800 JPEG", synthetic_jpegs(args.synthetic, 800)))
    rows = []
    for name, images in sets:
        w, h = Image.open(io.BytesIO(images[0])).size
        for size in args.sizes:
            for method, fn in (("pillow", decode_plain), ("pillow+draft", decode_draft)):
                med, rates = rate(fn, images, size, args.repeats)
                rows.append({"images": name, "source_px": f"{w}x{h}", "n": len(images), "input": size,
                             "method": method, "per_core_per_s": round(med, 1),
                             "min_max": [round(min(rates), 1), round(max(rates), 1)]})
    print(f"{'images':<48} {'source':>9} {'input':>5} {'method':<13} {'per core/s':>10} {'(min-max)':>18}")
    for r in rows:
        print(f"{r['images'][-48:]:<48} {r['source_px']:>9} {r['input']:>5} {r['method']:<13} "
              f"{r['per_core_per_s']:>10.1f} {str(r['min_max']):>18}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode + preprocess throughput per core: Pillow with and without JPEG draft mode, on
real listing images (a Parquet glob) and on synthetic 800x800 JPEGs. Prints a table and
writes JSON. One process, one thread: the numbers are per core.

With ``--batched`` it adds ``decode_batch`` (torchvision.io.decode_jpeg on a list of
images, nvJPEG on CUDA, then letterboxed to the model input on the device) in batches of
``--gpu-batch``: images/s for the whole device, not per core. With ``--e2e`` it adds
decode + forward for the ``--e2e-models`` (paper at 224x224, base at 80x80; random
weights with the bundled default checkpoint's vocabulary and lexicon, pruned): batched decode
feeding the bf16 model, and the whole Python API (``Matcher.score``: titles tokenised,
decode, forward, per-listing results). Needs no Beam.

    python bench/decode.py --data '../shared/data/fashion-small/224/*.parquet' --json bench/decode.json
    python bench/decode.py --data '.data/224/*.parquet' --batched --e2e --device cuda   # GPU
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecomatch_model.api import Matcher, load  # noqa: E402
from ecomatch_model.checkpoint import Checkpoint, build_model  # noqa: E402
from ecomatch_model.config import get_config  # noqa: E402
from ecomatch_model.data import expand_glob  # noqa: E402
from ecomatch_model.preprocess import (decode_batch, letterbox, normalize, open_image,  # noqa: E402
                                       torchvision_jpeg_decoder)
from ecomatch_model.prune import prune_model  # noqa: E402
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """Median items/s of ``fn()`` (``n`` items a call) after one warm-up call."""
    fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def batched_decode(images: list[bytes], size: int, device: torch.device, batch: int) -> None:
    for s in range(0, len(images), batch):
        decode_batch(images[s:s + batch], size, device)


def bench_matcher(name: str, device: torch.device, batch: int, precision: str | None = None,
                  compile: bool = False) -> Matcher:
    """``base``: the bundled default checkpoint (base config); a config name (``paper``): random
    weights, pruned by the config's ratio, with the default checkpoint's vocabulary and lexicon.
    Both decode JPEGs on the GPU (``gpu_decode``)."""
    if name == "base":
        return load("default", device=str(device), batch_size=batch, gpu_decode=True, precision=precision,
                    compile=compile)
    text = load("default", device="cpu").ckpt
    model = prune_model(build_model(get_config(name), text.vocab, text.lexicon).eval())
    return Matcher(Checkpoint(model, text.vocab, text.lexicon), name, device=str(device), batch_size=batch,
                   gpu_decode=True, precision=precision, compile=compile)


def e2e_rows(name: str, images: list[bytes], titles: list[str], matcher: Matcher, repeats: int) -> list[dict]:
    """decode + forward on tensors (one after the other, and with the next batch decoded on a
    side thread and CUDA stream while this one runs), and the whole ``Matcher.score``, in listings/s."""
    device, size, batch = matcher.device, matcher.image_size, matcher.batch_size
    chunks = [(images[s:s + batch], matcher.encode_texts(titles[s:s + batch])) for s in range(0, len(images), batch)]
    texts = {id(enc): [torch.from_numpy(a).to(device) for a in (enc.ids, enc.mask, enc.attr_mask, enc.attr_valid,
                                                                 enc.attr_value)] for _, enc in chunks}
    model = matcher.model if matcher._compiled is None else matcher._compiled
    cuda = device.type == "cuda"

    def forward(pixels: torch.Tensor, enc) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=matcher.precision == "bf16"):
            model(normalize(pixels), *texts[id(enc)])

    def decode_forward() -> None:
        for ims, enc in chunks:
            forward(decode_batch(ims, size, device), enc)

    side = torch.cuda.Stream(device) if cuda else None

    def decode_on_side(ims):
        with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
            pixels = decode_batch(ims, size, device)
            done = torch.cuda.Event() if cuda else None
            if cuda:
                done.record(side)
        return pixels, done

    def pipelined() -> None:
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(decode_on_side, chunks[0][0])
            for k, (_, enc) in enumerate(chunks):
                pixels, done = nxt.result()
                if k + 1 < len(chunks):
                    nxt = pool.submit(decode_on_side, chunks[k + 1][0])
                if cuda:
                    torch.cuda.current_stream(device).wait_event(done)
                    pixels.record_stream(torch.cuda.current_stream(device))
                forward(pixels, enc)

    rows = []
    for method, fn in (("decode+forward", decode_forward), ("pipelined", pipelined),
                       ("Matcher.score", lambda: matcher.score(images, titles))):
        med, rates = timed(fn, len(images), device, repeats)
        rows.append({"images": name, "model": matcher.name, "input": size, "method": method, "device": str(device),
                     "precision": matcher.precision + ("+compile" if matcher._compiled is not None else ""), "batch": batch,
                     "n": len(images),
                     "listings_per_s": round(med, 1), "min_max": [round(min(rates), 1), round(max(rates), 1)]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", default=[], help="Parquet glob with an image column (repeatable)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--sizes", nargs="*", type=int, default=[80, 96, 224], help="model input sizes")
    p.add_argument("--synthetic", type=int, default=200, help="number of synthetic 800x800 JPEGs (0: none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pillow", action=argparse.BooleanOptionalAction, default=True, help="the per-core Pillow rows")
    p.add_argument("--batched", action="store_true", help="add batched decode_batch rows on --device")
    p.add_argument("--e2e", action="store_true", help="add decode + forward rows for --e2e-models on --device")
    p.add_argument("--e2e-models", nargs="*", default=["paper", "base"])
    p.add_argument("--e2e-limit", type=int, default=None, help="listings per e2e set (default: --limit)")
    p.add_argument("--e2e-tile", type=int, default=1, help="repeat each e2e set this many times (more batches)")
    p.add_argument("--e2e-precision", nargs="*", default=[None],
                   help="Matcher precisions for the e2e rows (default: the device's default)")
    p.add_argument("--e2e-compile", action="store_true", help="e2e models through torch.compile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpu-batch", type=int, default=256, help="images per decode_batch call and per forward")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sets: list[tuple[str, list[bytes], list[str]]] = []
    for pattern in args.data:
        images: list[bytes] = []
        titles: list[str] = []
        for path in expand_glob(pattern):
            table = pq.read_table(path, columns=["image", "title"])
            images += table.column("image").to_pylist()
            titles += table.column("title").to_pylist()
            if len(images) >= args.limit:
                break
        sets.append((pattern, images[: args.limit], titles[: args.limit]))
    if args.synthetic:
        sets.append(("synthetic 800x800 JPEG", synthetic_jpegs(args.synthetic, 800), []))
    decoder = "torchvision" if torchvision_jpeg_decoder() else "pillow (no torchvision)"
    rows, e2e = [], []
    for name, images, _ in sets:
        w, h = Image.open(io.BytesIO(images[0])).size
        for size in args.sizes:
            methods = (("pillow", decode_plain), ("pillow+draft", decode_draft)) if args.pillow else ()
            for method, fn in methods:
                med, rates = rate(fn, images, size, args.repeats)
                rows.append({"images": name, "source_px": f"{w}x{h}", "n": len(images), "input": size,
                             "method": method, "device": "cpu, 1 core", "per_core_per_s": round(med, 1),
                             "images_per_s": round(med, 1), "min_max": [round(min(rates), 1), round(max(rates), 1)]})
            if args.batched:
                med, rates = timed(lambda: batched_decode(images, size, device, args.gpu_batch), len(images),
                                   device, args.repeats)
                rows.append({"images": name, "source_px": f"{w}x{h}", "n": len(images), "input": size,
                             "method": f"batched {decoder}", "device": str(device), "batch": args.gpu_batch,
                             "per_core_per_s": None, "images_per_s": round(med, 1),
                             "min_max": [round(min(rates), 1), round(max(rates), 1)]})
            print(f"  {name} {size}: done", file=sys.stderr, flush=True)
    if args.e2e:
        for model in args.e2e_models:
            for precision in args.e2e_precision:
                matcher = bench_matcher(model, device, args.gpu_batch, precision, args.e2e_compile)
                for name, images, titles in sets:
                    if titles:
                        n = args.e2e_limit or len(images)
                        e2e += e2e_rows(name, images[:n] * args.e2e_tile, titles[:n] * args.e2e_tile, matcher,
                                        args.repeats)
                        print(f"  e2e {model} {matcher.precision} {name}: "
                              + " / ".join(str(r["listings_per_s"]) for r in e2e[-3:]) + " listings/s",
                              file=sys.stderr, flush=True)
                del matcher
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"{'images':<40} {'source':>9} {'input':>5} {'method':<30} {'device':<11} {'images/s':>10} {'(min-max)':>20}")
    for r in rows:
        print(f"{r['images'][-40:]:<40} {r['source_px']:>9} {r['input']:>5} {r['method']:<30} {r['device']:<11} "
              f"{r['images_per_s']:>10.1f} {str(r['min_max']):>20}")
    if e2e:
        print(f"\n{'images':<40} {'model':<6} {'input':>5} {'method':<15} {'device':<7} {'prec':<20} {'batch':>5} "
              f"{'listings/s':>10} {'(min-max)':>20}")
        for r in e2e:
            print(f"{r['images'][-40:]:<40} {r['model']:<6} {r['input']:>5} {r['method']:<15} {r['device']:<7} "
                  f"{r['precision']:<20} {r['batch']:>5} {r['listings_per_s']:>10.1f} {str(r['min_max']):>20}")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "decoder": decoder, "rows": rows,
                                               "e2e": e2e}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checks of the inference fast path on the device it is meant for (CUDA), against the CPU
fp32 path: the bundled default model's scores on real listings with the device in fp32
(pinned, non-blocking copies), in bf16 autocast, and with batched GPU JPEG decode
(``Matcher.score`` on CUDA), and ``decode_batch`` pixels against Pillow's. Prints one line
per check and writes JSON; exits 1 when a check fails. Needs no Beam.

    python bench/fastpath_check.py --data '.data/60x80/*.parquet' --json /tmp/check.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecomatch_model.api import ListingScore, load  # noqa: E402
from ecomatch_model.data import expand_glob  # noqa: E402
from ecomatch_model.preprocess import decode_batch, to_uint8  # noqa: E402
from ecomatch_model.verdict import Policy  # noqa: E402

# Bounds, in score units (scores in [0, 1], match in [-1, 1]). fp32 on the GPU differs from the
# CPU by summation order and cuDNN's TF32 convolutions; bf16 keeps 8 mantissa bits (the CPU
# bf16 run of this model moved scores by at most 0.033, mean 0.0025).
LIMITS = {"fp32": 0.01, "bf16": 0.06, "bf16-weights": 0.06, "bf16+gpu decode": 0.08, "fp32+gpu decode": 0.08}
# "bf16+gpu decode" bounds the CUDA defaults (bf16-weights, GPU decode of photos >= 2x the input).


def values(scores: list[ListingScore]) -> np.ndarray:
    return np.concatenate([[s.match, *[a.score for a in s.attributes]] for s in scores]).astype(np.float64)


def compare(name: str, got: list[ListingScore], ref: list[ListingScore], limit: float, policy: Policy) -> dict:
    d = np.abs(values(got) - values(ref))
    per = np.array([np.abs(values([g]) - values([r])).max() for g, r in zip(got, ref)])
    cut = policy.cut
    flips = float(np.mean([(policy.p_violation(g) >= cut) != (policy.p_violation(r) >= cut) for g, r in zip(got, ref)]))
    return {"check": name, "max_abs_diff": round(float(d.max()), 5), "mean_abs_diff": round(float(d.mean()), 6),
            "p99_listing_diff": round(float(np.quantile(per, 0.99)), 5),
            "listings_over_limit": int((per > limit).sum()),
            "flag_flips": round(flips, 4), "limit": limit, "ok": bool(d.max() <= limit)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", default=[], help="Parquet glob with image and title columns")
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--dump", default=None, help="write the most different decodes to this .npz")
    args = p.parse_args(argv)
    images: list[bytes] = []
    titles: list[str] = []
    groups: list[tuple[str, slice]] = []      # (pattern, its listings), for per-dataset decode checks
    for pattern in args.data:
        for path in expand_glob(pattern):
            t = pq.read_table(path, columns=["image", "title"]).slice(0, args.limit)
            groups.append((pattern, slice(len(images), len(images) + t.num_rows)))
            images += t.column("image").to_pylist()
            titles += t.column("title").to_pylist()
            break
    if not images:
        print("no data: pass --data", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    cpu = load(args.model, device="cpu")
    ref, policy = cpu.score(images, titles), cpu.policy
    fp32 = load(args.model, device=str(dev), precision="fp32")
    bf16 = load(args.model, device=str(dev), precision="bf16")     # autocast
    bf16w = load(args.model, device=str(dev), precision="bf16-weights")
    defaults = load(args.model, device=str(dev))       # CUDA: bf16-weights, GPU decode for photos >= 2x the input
    size = fp32.image_size
    pixels = torch.from_numpy(np.stack([to_uint8(x, size) for x in images]))   # Pillow, as on the CPU

    def score_pixels(m, px: torch.Tensor = pixels) -> list[ListingScore]:
        out = []
        for s in range(0, len(images), m.batch_size):
            enc = m.encode_texts(titles[s:s + m.batch_size])
            out += m.results(m.forward(px[s:s + m.batch_size], enc), enc)
        return out
    fp32_pillow = score_pixels(fp32)
    checks = [compare(f"{dev.type} fp32, Pillow pixels", fp32_pillow, ref, LIMITS["fp32"], policy),
              compare(f"{dev.type} {bf16.precision}, Pillow pixels", score_pixels(bf16), ref, LIMITS["bf16"], policy),
              compare(f"{dev.type} bf16-weights, Pillow pixels", score_pixels(bf16w), ref, LIMITS["bf16-weights"], policy),
              compare(f"{dev.type} defaults ({defaults.precision}, GPU decode {defaults.gpu_decode}), Matcher.score",
                      defaults.score(images, titles), ref,
                      LIMITS["bf16+gpu decode"], policy)]
    # The decoder's own effect: every JPEG decoded on the GPU (min_factor=1) against Pillow pixels,
    # both scored in fp32 on the device, for each dataset (the draft-mode emulation only runs
    # where the photo is at least 2x the input).
    gpu_pixels = decode_batch(images, size, dev)
    fp32_gpu = score_pixels(fp32, gpu_pixels)
    gpu = gpu_pixels.cpu().numpy().astype(int)
    d = np.abs(gpu - pixels.numpy().astype(int))
    route = "Pillow: the batched decoder was not used" if d.max() == 0 else "batched decoder"
    checks.append({"check": f"decode_batch on {dev.type} ({route}) vs Pillow pixels", "max_abs_diff": int(d.max()), "mean_abs_diff": round(float(d.mean()), 4),
                   "limit": 2.0, "ok": bool(d.mean() <= 2.0)})
    per_image = d.reshape(len(images), -1).max(1)
    for pattern, sl in groups:
        c = compare(f"{dev.type} fp32, GPU decode vs Pillow pixels, {pattern}", fp32_gpu[sl], fp32_pillow[sl],
                    LIMITS["fp32+gpu decode"], policy)
        pix = d[sl]
        c.update({"pixel_max": int(pix.max()), "pixel_mean": round(float(pix.mean()), 4),
                  "pixel_p999": float(np.quantile(pix, 0.999)),
                  "images_pixel_max_over_16": int((per_image[sl] > 16).sum())})
        checks.append(c)
    if args.dump:   # the images whose pixels differ most, to study offline
        worst = np.argsort(-per_image)[:6]
        np.savez_compressed(args.dump, index=worst, gpu=gpu[worst].astype(np.uint8),
                            pillow=pixels.numpy()[worst], jpeg=np.array([bytes(images[i]) for i in worst], dtype=object))
    print(f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "")
          + f"; {len(images)} listings, model {args.model}, batch {bf16.batch_size}")
    for c in checks:
        print(f"{'PASS' if c['ok'] else 'FAIL'} {c['check']}: max |diff| {c['max_abs_diff']}, mean "
              f"{c['mean_abs_diff']}" + (f", flags flipped {c['flag_flips']:.1%}, p99 listing "
                                         f"{c['p99_listing_diff']}, {c['listings_over_limit']} over the limit"
                                         if "flag_flips" in c else "")
              + (f"; pixels max {c['pixel_max']} mean {c['pixel_mean']} p99.9 {c['pixel_p999']}, "
                 f"{c['images_pixel_max_over_16']} images over 16" if "pixel_max" in c else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(dev), "n": len(images), "checks": checks}, indent=1) + "\n")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

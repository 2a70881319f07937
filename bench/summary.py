"""One markdown table from the JSON that ``bench/gpu.sh`` writes (check, model, compile,
decode); parts that started but wrote no results are named below the table. Also writes summary.md.

    python bench/summary.py OUTDIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PARTS = ("check", "model", "model-as-loaded", "compile", "compile-as-loaded", "compile-tuned", "decode")


def mode_label(r: dict) -> str:
    """``bf16w+compile``, with the compile mode when not the default and ``as loaded`` for
    rows timed without ``for_inference``'s preparation."""
    extra = [r["compile_mode"]] if r.get("compile_mode") not in (None, "default") else []
    extra += ["as loaded"] if r.get("prepared") is False else []
    extra += [f"sdpa {r['sdpa']}"] if r.get("sdpa") else []
    extra += ["cudnn.benchmark"] if r.get("cudnn_benchmark") else []
    return r["dtype"] + (f" ({', '.join(extra)})" if extra else "")


def rows(part: str, data: dict) -> list[list[str]]:
    if part == "check":
        return [["check", c["check"], "", "", f"max {c['max_abs_diff']}, mean {c['mean_abs_diff']}"
                 + (f", flags flipped {c['flag_flips']:.1%}, p99 per listing {c['p99_listing_diff']}, "
                    f"{c['listings_over_limit']} listings over the limit" if "flag_flips" in c else "")
                 + (f"; pixels max {c['pixel_max']}, mean {c['pixel_mean']}, p99.9 {c['pixel_p999']}"
                    if "pixel_max" in c else ""), "abs diff",
                 ("PASS" if c["ok"] else "FAIL") + f" (limit {c['limit']})"] for c in data["checks"]]
    if part.startswith(("model", "compile")):
        return [["model forward", r["model"], mode_label(r), str(r["batch"]), f"{r['listings_per_s']:,.0f}", "listings/s",
                 f"{r['gflop_per_listing']:.3f} GFLOP/l, {r['achieved_tflop_s']:.3g} TFLOP/s = "
                 f"{r['share_of_ceiling']:.1%} of the {r['ceiling_tflop_s']:.3g} matmul ceiling, "
                 f"peak {r['peak_mib']:,.0f} MiB"]
                for r in data["rows"]]
    out = [["decode", f"{r['images'].split('/')[-2] if '/' in r['images'] else r['images']} ({r['source_px']})",
            r["method"], f"to {r['input']}" + (f", batch {r['batch']}" if r.get("batch") else ""),
            f"{r['images_per_s']:,.0f}", "images/s", r["device"]] for r in data["rows"]]
    out += [["decode + forward", f"{r['model']} {r['input']}x{r['input']} on "
             f"{r['images'].split('/')[-2] if '/' in r['images'] else r['images']}", r["method"],
             str(r["batch"]), f"{r['listings_per_s']:,.0f}", "listings/s", f"{r['device']}, {r['precision']}"]
            for r in data.get("e2e", [])]
    return out


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    table = ["| part | what | mode | batch / input | value | unit | notes |", "|---|---|---|---|---|---|---|"]
    missing = []
    for part in PARTS:
        path = out / f"{part}.json"
        if not path.exists():
            if (out / f"{part}.log").exists():     # started, but wrote no results
                missing.append(part)
            continue
        table += ["| " + " | ".join(r) + " |" for r in rows(part, json.loads(path.read_text()))]
    text = "\n".join(table) + ("\n\nnot run or timed out: " + ", ".join(missing) if missing else "") + "\n"
    print(text, end="")
    (out / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``ecomatch`` command: train, evaluate, calibrate, prune, model-info, make-sample,
explain (and scan, which lives in the pipelines package and is imported only when asked for)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import card as cards
from .api import Matcher, load, resolve_model_path
from .checkpoint import Checkpoint, build_model, load_checkpoint, save
from .config import CONFIGS, apply_overrides, get_config
from .data import Listings, concat_listings, parse_attribute_columns, read_listings
from .model import DualMatcher, count_parameters, prunable_channels
from .prune import prune_model
from .text import Lexicon, Vocabulary
from .verdict import (DEFAULT_PREVALENCE, CalibrationError, Policy, describe, feedback_cut, policy_bytes,
                      read_policy_file)

if TYPE_CHECKING:
    from .evaluate import EvalSet

log = logging.getLogger("ecomatch")
# Corruptions calibration fits on (evaluation reports colour, article type and image swaps).
CALIBRATION_KINDS = ("colour", "article_type", "gender", "image")


def _command_line() -> str:
    return "ecomatch " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def gflops_per_listing(model: DualMatcher) -> float:
    """Forward GFLOP (2 x multiply-adds) for one listing with a full title and attribute slots."""
    cfg = model.cfg
    b, l, a = 1, cfg.text.max_len, cfg.max_attrs
    args = (torch.zeros(b, 3, cfg.image.image_size, cfg.image.image_size), torch.ones(b, l, dtype=torch.long),
            torch.ones(b, l, dtype=torch.bool), torch.ones(b, a, l), torch.ones(b, a, dtype=torch.bool),
            torch.zeros(b, a, dtype=torch.long))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(*args)
    return counter.get_total_flops() / 1e9


def _model_for_info(name_or_path: str) -> tuple[str, DualMatcher]:
    if name_or_path in CONFIGS:
        cfg = get_config(name_or_path)
        lexicon = Lexicon.from_seeds()
        vocab = Vocabulary([], n_buckets=cfg.text.vocab_size - 1)  # the config's vocabulary size
        return f"config {name_or_path}", build_model(cfg, vocab, lexicon)
    return resolve_model_path(name_or_path), load_checkpoint(resolve_model_path(name_or_path)).model


def cmd_model_info(args: argparse.Namespace) -> int:
    what, model = _model_for_info(args.name)
    cfg = model.cfg
    rows = [("", model)]
    if not cfg.pruned:
        rows.append((f"after {cfg.prune_ratio:.0%} pruning", prune_model(model)))
    print(f"{what}: input {cfg.image.image_size}x{cfg.image.image_size}, {cfg.image.grid}x{cfg.image.grid} "
          f"image tokens, text {cfg.text.max_len} tokens, width d={cfg.image.width}, compressed width "
          f"d/{cfg.compression}={cfg.embed_dim}")
    for label, m in rows:
        print(f"  {label or 'as built':<22} parameters {count_parameters(m):>12,} ({count_parameters(m) / 1e6:.2f}M)"
              f"  prunable channels {prunable_channels(m):>7,}  GFLOPs/listing {gflops_per_listing(m):.3f}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(resolve_model_path(args.model))
    before, ch_before = count_parameters(ckpt.model), prunable_channels(ckpt.model)
    pruned = prune_model(ckpt.model, args.ratio)
    after, ch_after = count_parameters(pruned), prunable_channels(pruned)
    out = Checkpoint(pruned, ckpt.vocab, ckpt.lexicon, ckpt.policy,
                     cards.replace_section(ckpt.card, "Pruning",
                                           f"Pruned with `{_command_line()}`: prunable channels {ch_before:,} -> "
                                           f"{ch_after:,}; parameters {before:,} -> {after:,}. The calibration was "
                                           "copied from the unpruned model: recalibrate with `ecomatch calibrate`."))
    save(out, args.out)
    print(f"parameters before {before:,} after {after:,} ({after / before:.1%}); prunable channels "
          f"{ch_before:,} -> {ch_after:,} ({1 - ch_after / ch_before:.1%} removed); written to {args.out}")
    return 0


def _resized_init(model, overrides: list[str]):
    """``--init`` keeps the checkpoint's shape: a ``--set`` override must repeat the
    checkpoint's own value (a recipe written by the run that made it), except the image
    input size, which may change (``image.image_size=N``, the position embeddings resampled)."""
    from .model import resize_image_input
    data, size = model.cfg.to_json(), None
    for item in overrides:
        key, _, raw = item.partition("=")
        *path, leaf = key.strip().split(".")
        here = data
        try:
            for part in path:
                here = here[part]
            value, wanted = here[leaf], json.loads(raw)
        except (KeyError, TypeError, ValueError):
            raise SystemExit(f"ecomatch train: error: --set {item}: not a config field with a JSON value") from None
        if value == wanted:
            continue
        if key.strip() != "image.image_size":
            raise SystemExit(f"ecomatch train: error: --set {item}: with --init only image.image_size can change "
                             f"(the checkpoint has {key.strip()}={json.dumps(value)})")
        size = wanted
    if size is None:
        return model
    try:
        return resize_image_input(model, size)       # the new config is checked as it is built
    except ValueError as e:
        raise SystemExit(f"ecomatch train: error: --set image.image_size: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .evaluate import build_eval_set, calibrate
    from .recipe import data_globs, dump_recipe, synthetic_listings
    from .train import TrainOptions, split_by_reference, split_for_training, train
    recipe = args.recipe_values
    # --data replaces the recipe's globs (read as given); the recipe's are under --data-root.
    globs = args.data if args.data is not None else data_globs(recipe.get("data", []), args.data_root)
    if not globs and not args.synthetic_seeds:
        raise SystemExit("ecomatch train: error: no data: give --data GLOB or a --recipe with data")
    if not args.out:
        raise SystemExit("ecomatch train: error: no output directory: give --out DIR or a --recipe with out")
    init = load_checkpoint(resolve_model_path(args.init)) if args.init else None    # before the data: fail fast
    if init is not None and args.set:
        init.model = _resized_init(init.model, args.set)
    parts = [read_listings(d, limit=args.limit) for d in globs]
    synthetic = synthetic_listings(args.synthetic_seeds, args.synthetic_n)
    listings = concat_listings(parts + [synthetic])
    # The recipe's reference globs are under --data-root, like its data.
    refs = [data_globs([r], args.data_root)[0] if r in recipe.get("split_reference", []) else r
            for r in args.split_reference]
    if refs:
        reference = concat_listings([read_listings(d) for d in refs])
        train_set, val_set = split_by_reference(listings, reference, args.val_fraction, args.seed)
    else:
        train_set, val_set = split_for_training(listings, args.val_fraction, args.seed)
    log.info("%d listings (%d synthetic): %d train, %d validation", len(listings), len(synthetic), len(train_set),
             len(val_set))
    # The values this run used, as a recipe that reruns it (data globs made absolute).
    used = {k: getattr(args, k) for k in recipe_fields() if k != "description"}
    used["data"] = [g if "://" in g else os.path.abspath(g) for g in globs]
    used["split_reference"] = [g if "://" in g else os.path.abspath(g) for g in refs]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "recipe.toml"), "w", encoding="utf-8") as f:
        f.write(dump_recipe({"description": recipe.get("description"), **used},
                            f"Values used by: {_command_line()}" + (f"\nRecipe: {args.recipe}" if args.recipe else "")))
    cfg = apply_overrides(get_config(args.config), args.set)
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        device=args.device, stop_after=args.stop_after, group_chunk=args.group_chunk,
                        time_budget=args.time_budget, trainable=args.trainable,
                        image_negatives=args.image_negatives, column_fraction=args.column_fraction,
                        colour_focus=args.colour_focus, recolour=args.recolour, degrade=args.degrade)
    t0 = time.time()
    data = ", ".join(f"`{d}`" for d in globs)
    if len(synthetic):
        data += f"{', ' if globs else ''}{len(synthetic)} synthetic listings (seeds " \
                f"{', '.join(map(str, args.synthetic_seeds))}, {args.synthetic_n} each)"
    body = (f"Command: `{_command_line()}`" + (f"\n\nRecipe: `{args.recipe}`" if args.recipe else "")
            + f"\n\nData: {data}: {len(train_set)} training and {len(val_set)} validation listings "
            f"(split by image content, seed {args.seed}"
            + (f", decided on {', '.join(f'`{r}`' for r in refs)} for the ids it holds"
               if refs else "") + ").")
    card = cards.section("Training", body)
    ckpt = train(train_set, cfg, args.out, opts, parse_attribute_columns(args.attribute_columns),
                 resume=args.resume, card=card, init=init)
    minutes = (time.time() - t0) / 60
    ckpt.card = cards.header(os.path.basename(os.path.normpath(args.out)), ckpt.model) + "\n" + card + f"\nWall time: {minutes:.1f} min on " \
        f"{args.device} ({torch.get_num_threads()} threads); per-epoch curves in `train_log.jsonl` and the values " \
        "used in `recipe.toml`, beside the training output.\n"
    if len(val_set):
        matcher = Matcher(ckpt, args.out, device=args.device)
        try:
            ckpt.policy = calibrate(build_eval_set(matcher, val_set, args.max_eval, args.seed, CALIBRATION_KINDS,
                                                   _lexicon_kinds(matcher)),
                                    args.precision, DEFAULT_PREVALENCE,
                                    fitted_on={"data": "the validation split", "listings": len(val_set)})
            ckpt.card = cards.replace_section(ckpt.card, "Calibration",
                                              _calibration_text(ckpt.policy, "the validation split"))
        except ValueError as exc:    # too few listings of some kind to fit curves
            log.warning("not calibrated: %s", exc)
    save(ckpt, args.out)
    point = json.dumps(ckpt.policy.operating_point if ckpt.policy else None)
    print(f"trained {ckpt.model.cfg.name} in {minutes:.1f} min; operating point {point}; written to {args.out}")
    return 0


def _calibration_text(policy: Policy, where: str) -> str:
    point = policy.operating_point
    rule = (f"expected precision {point['precision']:.2f}" if "precision" in point
            else f"at most {point.get('review_budget_per_10k')} flags per 10,000 listings")
    rows = "\n".join(f"| {k} | {len(c.x)} |" for k, c in sorted(policy.checks.items()))
    return (f"Command: `{_command_line()}`\n\nFitted on {where}: per check kind a monotone map (isotonic "
            "regression) from the raw score to the likelihood ratio that the check is contradicted, from "
            "unmodified listings against corrupted copies (colour, article type and gender from the catalogue's "
            "columns, image swaps across sub-categories; kinds without a column swapped in the title), and the "
            "same on whole listings for their combined evidence; `p_violation` is stated at prevalence "
            f"{policy.prevalence:g} (see `ecomatch_model/verdict.py`). Operating point: {rule} at that "
            f"prevalence: `p_violation >= {policy.cut:.4f}`; on the calibration listings it gave expected "
            f"precision {point.get('expected_precision', float('nan')):.3f}, recall "
            f"{point.get('expected_recall', float('nan')):.3f} (mean over colour, article type and image swaps), "
            f"false-positive rate {point.get('false_positive_rate', float('nan')):.4f} on {point.get('clean')} "
            "unmodified listings. Recalibrate for another catalogue with `ecomatch calibrate --model M --data "
            "'shards/*.parquet' --precision P [--prevalence Q | --review-budget N]`.\n\n"
            f"| check kind | curve knots |\n|---|---|\n{rows}")


def _lexicon_kinds(matcher: Matcher) -> list[str]:
    """The attribute kinds that calibration corrupts in the title with the lexicon's groups:
    those the column corruptions (CALIBRATION_KINDS) do not cover."""
    return [k for k in matcher.lexicon.kinds if k not in CALIBRATION_KINDS]


def _read_split(args: argparse.Namespace, data: list[str] | None = None, reference: Listings | None = None) -> Listings:
    """The listings of every --data (or of ``data``), restricted to the --split of the
    training-time split (decided on --split-reference when given, or on ``reference`` when it
    is already read, so that the same listing in another photo folder falls on the same
    side); ``cal`` and ``test`` are two halves of ``val`` by listing id."""
    from .train import split_for_training
    from .data import id_half
    listings = concat_listings([read_listings(d) for d in data or args.data])
    if args.split == "all":
        return listings
    ref = reference if reference is not None else \
        concat_listings([read_listings(d) for d in args.split_reference]) if args.split_reference else listings
    train_set, val_set = split_for_training(ref, args.val_fraction, args.split_seed)
    side = set((train_set if args.split == "train" else val_set).ids)
    keep = [i for i, lid in enumerate(listings.ids) if lid in side
            and (args.split in ("train", "val") or id_half(lid) == (args.split == "cal"))]
    if args.split_reference:
        clean = set(train_set.ids) | set(val_set.ids)
        keep = [i for i in keep if listings.ids[i] in clean]
    return listings.take(keep)


def _add_split_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--split", choices=["all", "train", "val", "cal", "test"], default="all",
                   help="use only this side of the training split (by image content); cal and test are the two "
                        "halves of val (by listing id): calibrate on one, evaluate on the other")
    s.add_argument("--split-reference", action="append", default=[], metavar="GLOB",
                   help="decide the split on these shards (the training data) and keep the listings of --data "
                        "with the same ids: for the same listings in another photo folder")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--split-seed", type=int, default=0)


def _read_feedback(args: argparse.Namespace) -> tuple[list, dict]:
    """``--feedback FILE``'s decisions and the ``fitted_on["feedback"]`` entry recording it."""
    from .feedback import FeedbackError, read_decisions
    try:
        decisions, digest = read_decisions(args.feedback)
    except FeedbackError as exc:
        raise SystemExit(f"ecomatch calibrate: error: {exc}") from None
    confirmed = sum(d.confirmed for d in decisions)
    return decisions, {"file": args.feedback, "sha256": digest, "decisions": len(decisions), "confirmed": confirmed,
                       "false_alarm": len(decisions) - confirmed,
                       "scan_calibration_sha256": decisions[0].calibration_sha256}


def _feedback_policy(args: argparse.Namespace, matcher: Matcher) -> Policy:
    """``--feedback FILE`` alone: the scan's policy (the model's, or ``--calibration FILE``) with
    its cut re-chosen from the reviewers' decisions (``verdict.feedback_cut``), the decisions
    file recorded in ``fitted_on["feedback"]``."""
    def fail(msg: str) -> SystemExit:
        return SystemExit(f"ecomatch calibrate: error: {msg}")
    base = _read_calibration(args.calibration, matcher) if args.calibration else matcher.policy
    if base is None:
        raise fail(f"{args.model} has no calibration: pass the scan's --calibration FILE")
    decisions, feedback = _read_feedback(args)
    scanned, have = decisions[0].calibration_sha256, describe(base, "")["sha256"]
    if scanned != have:
        raise fail(f"the decisions in {args.feedback} were made on calibration {scanned[:12]}, not on "
                   f"{args.calibration or 'the model' + chr(39) + 's'} ({have[:12]}): pass that scan's calibration "
                   "with --calibration FILE")
    precision = args.precision if args.precision is not None else base.operating_point.get("precision")
    if precision is None:
        raise fail("give --precision P: the calibration states no target precision")
    try:
        cut, point = feedback_cut([d.severity for d in decisions], [d.confirmed for d in decisions], base.cut,
                                  float(precision))
    except ValueError as exc:
        raise fail(f"{args.feedback}: {exc}") from None
    log.info("feedback %s: cut %.4f -> %.4f (reviewed precision %.3f -> %.3f)", args.feedback, base.cut, cut,
             point["reviewed_precision_before"], point["reviewed_precision"])
    return dataclasses.replace(base.with_operating_point(cut, {**point, "prevalence": base.prevalence}),
                               fitted_on={**base.fitted_on, "feedback": feedback})


def _feedback_data_policy(args: argparse.Namespace, matcher: Matcher, listings: Listings, ev: EvalSet,
                          data: str) -> Policy:
    """``--feedback FILE --data GLOB``: calibrate on --data with the decided listings (found in
    --data by listing_id, scored again) as labels (``evaluate.calibrate_with_feedback``)."""
    from .evaluate import calibrate_with_feedback, score_listings
    decisions, feedback = _read_feedback(args)
    label = {d.listing_id: d.confirmed for d in decisions}
    rows = [i for i, lid in enumerate(listings.ids) if lid in label]
    first = {}
    for i in rows:
        first.setdefault(listings.ids[i], i)
    found, scores = score_listings(matcher, listings.take(sorted(first.values())))
    feedback["found_in_data"] = len(found)
    log.info("feedback %s: %d of %d decided listings found (and decoded) in --data", args.feedback, len(found),
             len(decisions))
    try:
        policy, refit = calibrate_with_feedback(ev, list(zip(scores, (label[i] for i in found.ids))),
                                                args.precision, args.prevalence,
                                                fitted_on={"data": data, "listings": len(ev.listings),
                                                           "feedback": feedback})
    except ValueError as exc:
        raise SystemExit(f"ecomatch calibrate: error: {args.feedback}: {exc}") from None
    log.info("feedback %s %s the listing curve's fit; cut %.4f", args.feedback,
             "joined" if refit else "did not join (too few of a label)", policy.cut)
    return policy


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .evaluate import build_eval_set, calibrate
    path = resolve_model_path(args.model)
    matcher = Matcher(load_checkpoint(path), args.model, device=args.device)
    if args.precision is not None and not 0 < args.precision <= 1:
        raise SystemExit("ecomatch calibrate: error: --precision must be in (0, 1]")
    if not 0 < args.prevalence < 1:
        raise SystemExit("ecomatch calibrate: error: --prevalence must be in (0, 1)")
    if args.feedback and args.review_budget is not None:
        raise SystemExit("ecomatch calibrate: error: --review-budget with --feedback: the decisions set a precision; "
                         "give --precision P")
    if args.feedback and not args.data:
        policy = _feedback_policy(args, matcher)
        data = f"`{args.calibration or args.model}` with the decisions in `{args.feedback}`"
    else:
        if not args.data:
            raise SystemExit("ecomatch calibrate: error: give --data GLOB (listings believed correct) or "
                             "--feedback FILE (reviewers' decisions)")
        if (args.precision is None) == (args.review_budget is None):
            raise SystemExit("ecomatch calibrate: error: give --precision P or --review-budget N (flags per 10,000)"
                             + (" (with --feedback and --data: --precision P)" if args.feedback else ""))
        listings = _read_split(args)
        data = " + ".join(f"`{d}`" for d in args.data) + ("" if args.split == "all" else f" ({args.split} split)")
        ev = build_eval_set(matcher, listings, args.max_eval, args.seed, CALIBRATION_KINDS,
                            _lexicon_kinds(matcher))
        policy = (_feedback_data_policy(args, matcher, listings, ev, data) if args.feedback else
                  calibrate(ev, args.precision, args.prevalence, args.review_budget,
                            fitted_on={"data": data, "listings": len(ev.listings)}))
    if args.write:
        with open(args.write, "wb") as f:
            f.write(policy_bytes(policy))
        print(f"calibration written to {args.write}")
    else:
        ckpt = matcher.ckpt
        ckpt.policy = policy
        ckpt.card = cards.replace_section(ckpt.card, "Calibration", _calibration_text(policy, data))
        save(ckpt, args.out or path)
    print(json.dumps({"cut": policy.cut, **policy.operating_point}, indent=1))
    return 0


def _judged(args: argparse.Namespace, command: str) -> tuple[Matcher, Policy]:
    """The model of ``--model`` and the policy it is judged by: ``--calibration FILE`` or its own."""
    matcher = load(args.model, device=args.device)
    policy = _read_calibration(args.calibration, matcher) if args.calibration else matcher.policy
    if policy is None:
        raise SystemExit(f"ecomatch {command}: error: {args.model} has no calibration: run `ecomatch calibrate` "
                         "or pass --calibration FILE")
    return matcher, policy


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    matcher, policy = _judged(args, "evaluate")
    report = evaluate(matcher, _read_split(args), policy, n_queries=args.queries, negatives=args.negatives,
                      seed=args.seed, max_listings=args.max_eval)
    report["model"] = {"path": args.model, "sha256": matcher.sha256, "config": matcher.cfg.name}
    report["data"] = " + ".join(args.data) + ("" if args.split == "all" else f" ({args.split} split)")
    if args.calibration:
        report["calibration_file"] = args.calibration
    text = json.dumps(report, indent=1, sort_keys=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(cards.metrics_block(report, _command_line()).split("<details>")[0])
    if args.update_card:
        ckpt = matcher.ckpt
        ckpt.card = cards.replace_section(ckpt.card, args.card_section, cards.metrics_block(report, _command_line()))
        save(ckpt, resolve_model_path(args.model))
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    from .evaluate import photo_agreement
    matcher, policy = _judged(args, "agreement")
    # The reference is read once for both photo sets.
    ref = concat_listings([read_listings(d) for d in args.split_reference]) \
        if args.split_reference and args.split != "all" else None
    a, b = (_read_split(args, [d], ref) for d in (args.data, args.other))
    try:
        report = photo_agreement(matcher, policy, a, b, max_listings=args.max_eval, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"ecomatch agreement: error: {args.data} and {args.other}: {exc}") from None
    report["data"] = {"a": args.data, "b": args.other, "split": args.split}
    report["model"] = {"path": args.model, "sha256": matcher.sha256}
    print(json.dumps(report, indent=1, sort_keys=True))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if args.update_card:
        rows = "\n".join(f"| {k} | {v['listings']} | {v['mean_abs_diff_p_violation']:.4f} | "
                         f"{v['verdict_agreement']:.4f} | {v['flagged_a']:.4f} | {v['flagged_b']:.4f} |"
                         for k, v in report.items() if isinstance(v, dict) and "listings" in v)
        body = (f"Command: `{_command_line()}`\n\nThe same listings with photo a (`{args.data}`) and photo b "
                f"(`{args.other}`), at the shipped operating point:\n\n| listings | n | mean abs. difference "
                f"of p_violation | verdict agreement | flagged with a | flagged with b |\n|---|---|---|---|---|---|\n"
                f"{rows}")
        ckpt = matcher.ckpt
        ckpt.card = cards.replace_section(ckpt.card, args.card_section, body)
        save(ckpt, resolve_model_path(args.model))
    return 0


def _read_calibration(path: str, matcher: Matcher) -> Policy:
    """``--calibration FILE`` checked against the kinds ``matcher`` knows; an error naming the
    file and the key otherwise."""
    try:
        return read_policy_file(path, matcher.lexicon.kinds)
    except CalibrationError as exc:
        raise SystemExit(f"ecomatch: error: {exc}") from None


def cmd_make_sample(args: argparse.Namespace) -> int:
    from .sample import write_sample
    paths = write_sample(args.out, n=args.n, seed=args.seed, mismatch_rate=args.mismatch_rate,
                         shards=args.shards, size=args.size)
    print("\n".join(paths))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import attribute_lines, render_explanation
    from .preprocess import ImageDecodeError
    matcher = load(args.model, device=args.device)
    policy = _read_calibration(args.calibration, matcher) if args.calibration else matcher.policy
    if policy is None:
        raise SystemExit(f"ecomatch explain: error: {args.model} has no calibration: run `ecomatch calibrate`")
    with open(args.image, "rb") as f:
        data = f.read()
    try:
        sheet, score, verdict = render_explanation(matcher, policy, data, args.title)
    except ImageDecodeError as exc:
        print(f"ecomatch explain: error: {args.image}: {exc}", file=sys.stderr)
        return 2
    sheet.save(args.out)
    print(f"p_violation {verdict.p_violation:.3f} (violation at >= {policy.cut:.3f}): "
          f"{'VIOLATION, worst ' + str(verdict.worst_kind) if verdict.violation else 'ok'}; match {score.match:.2f}")
    ev = policy.evidence(score)
    for j, (a, e) in enumerate(zip(score.attributes, ev)):
        print("  " + "; ".join(text for text, _ in attribute_lines(a, args.title, policy.probability(e),
                                                                   verdict.culprit == j)))
    for r in verdict.reasons:
        print(f"  - {r}")
    print(f"written to {args.out}")
    return 0


def cmd_scan(argv: list[str]) -> int:
    from pipelines.scan import main as scan_main  # Beam is only needed for scanning
    return scan_main(argv)


def build_parser(recipe: dict | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecomatch", description="Image/text consistency scanner for catalogues.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("model-info", help="parameters, GFLOPs per listing and input size of a config or model")
    s.add_argument("name", help=f"config name ({', '.join(CONFIGS)}), bundled model or checkpoint path")
    s.set_defaults(fn=cmd_model_info)

    s = sub.add_parser("prune", help="physically remove the least important channels")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--ratio", type=float, default=None, help="share of channels to remove (default: config's)")
    s.set_defaults(fn=cmd_prune)

    _add_train_parser(sub, recipe)

    s = sub.add_parser("calibrate", help="fit the verdict's calibration and choose its operating point on "
                                         "listings believed correct")
    s.add_argument("--model", required=True)
    s.add_argument("--data", default=[], action="append", help="Parquet glob; repeat for several sources")
    s.add_argument("--feedback", default=None, metavar="DECISIONS",
                   help="reviewers' decisions exported from a scan's report.html (CSV or JSON): raise the scan's "
                        "cut until the confirmed share of the reviewed listings at or above it is --precision "
                        "(default: the calibration's own target); never lowers it")
    s.add_argument("--calibration", default=None, metavar="FILE",
                   help="with --feedback: the scan's calibration file (default: the model's)")
    s.add_argument("--precision", type=float, default=None,
                   help="operating point: the highest recall whose expected precision at --prevalence is P")
    s.add_argument("--review-budget", type=float, default=None, metavar="N",
                   help="operating point: as many flags as fit in N per 10,000 listings at --prevalence")
    s.add_argument("--prevalence", type=float, default=DEFAULT_PREVALENCE,
                   help="share of listings that really contradict their photo (default: %(default)s)")
    s.add_argument("--out", default=None, help="write the recalibrated checkpoint here (default: in place)")
    s.add_argument("--write", default=None, metavar="FILE",
                   help="write only the calibration file (for `ecomatch scan --calibration FILE`); the checkpoint "
                        "is left as it is")
    s.add_argument("--max-eval", type=int, default=3000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    _add_split_args(s)
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("evaluate", help="retrieval and mismatch-detection metrics, ranked by p_violation")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, action="append", help="Parquet glob; repeat for several sources")
    s.add_argument("--json", default=None)
    s.add_argument("--queries", type=int, default=1000)
    s.add_argument("--negatives", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-eval", type=int, default=5000)
    s.add_argument("--device", default=None)
    s.add_argument("--calibration", "--thresholds", default=None, metavar="FILE",
                   help="judge with this calibration file instead of the checkpoint's")
    s.add_argument("--update-card", action="store_true", help="write the results into the model card")
    s.add_argument("--card-section", default="Evaluation")
    _add_split_args(s)
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("agreement", help="the same listings' verdicts with two photos each (two photo folders)")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help="Parquet glob: the listings with their first photo")
    s.add_argument("--other", required=True, help="Parquet glob: the same listing ids with another photo")
    s.add_argument("--json", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-eval", type=int, default=5000)
    s.add_argument("--device", default=None)
    s.add_argument("--calibration", default=None, metavar="FILE",
                   help="judge with this calibration file instead of the checkpoint's")
    s.add_argument("--update-card", action="store_true", help="write the results into the model card")
    s.add_argument("--card-section", default="Photo agreement")
    _add_split_args(s)
    s.set_defaults(fn=cmd_agreement)

    s = sub.add_parser("make-sample", help="render a synthetic sample catalogue")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=400)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mismatch-rate", type=float, default=0.2)
    s.add_argument("--shards", type=int, default=2)
    s.add_argument("--size", type=int, default=128)
    s.set_defaults(fn=cmd_make_sample)

    s = sub.add_parser("explain", help="draw one listing's per-attribute attention heatmaps and scores")
    s.add_argument("--model", default="default")
    s.add_argument("--image", required=True, help="image file (JPEG, PNG, WebP, GIF)")
    s.add_argument("--title", required=True)
    s.add_argument("--out", required=True, help="picture to write (PNG, or any format Pillow writes)")
    s.add_argument("--device", default=None)
    s.add_argument("--calibration", "--thresholds", default=None, metavar="FILE",
                   help="judge with this calibration file instead of the checkpoint's")
    s.set_defaults(fn=cmd_explain)

    sub.add_parser("scan", help="run the violation scan (Apache Beam); see `ecomatch scan --help`",
                   add_help=False)
    return p


# Options of `ecomatch train` that describe one invocation rather than a recipe.
_NOT_RECIPE = {"help", "recipe", "resume", "data_root"}


def _add_train_parser(sub, recipe: dict | None = None) -> argparse.ArgumentParser:
    """The train subcommand; ``recipe`` (checked values of --recipe) become its defaults."""
    s = sub.add_parser("train", help="train a model on listing Parquet shards")
    s.add_argument("--recipe", default=None, metavar="FILE",
                   help="a recipe (flat TOML, recipes/): its values are the defaults of the options below, "
                        "which override single values")
    s.add_argument("--data", default=None, action="append",
                   help="Parquet glob (local or gs://); repeat to train on several sources together "
                        "(replaces the recipe's data)")
    s.add_argument("--data-root", default="../shared/data", metavar="DIR",
                   help="where a recipe's relative data globs are read (default: %(default)s)")
    s.add_argument("--synthetic-seeds", nargs="*", type=int, default=[], metavar="SEED",
                   help="add a synthetic catalogue rendered for each seed (as make-sample --mismatch-rate 0)")
    s.add_argument("--synthetic-n", type=int, default=0, metavar="N", help="synthetic listings per seed")
    s.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    s.add_argument("--out", default=None, help="checkpoint directory (required unless the recipe names one)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    s.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start from this checkpoint's weights, vocabulary and lexicon")
    s.add_argument("--stop-after", type=int, default=None, help="end this run after epoch N (resume later)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=int, default=None, help="read at most this many listings of each data glob")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="shrink the epoch plan to what fits in this many seconds (the schedule follows)")
    s.add_argument("--group-chunk", type=int, default=0,
                   help="hard negatives: batches made of runs of N listings of one article type (0: off)")
    s.add_argument("--trainable", choices=["all", "aga"], default="all",
                   help="aga: fine-tune only the attribute-guided attention (with --init); the rest stays frozen")
    s.add_argument("--image-negatives", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the image-swap attribute loss: titles scored against another listing's "
                        "image, values it contradicts pushed to 0 (0: off)")
    s.add_argument("--column-fraction", type=float, default=0.5, metavar="SHARE",
                   help="share of listings whose structured columns are appended to the title as supervised "
                        "mentions (1: every image)")
    s.add_argument("--colour-focus", type=float, default=0.0, metavar="P",
                   help="probability that a corrupted title swaps its colour mention, where it has one")
    s.add_argument("--recolour", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the recolour loss: photos hue-rotated, the title's colour pushed to 0 (0: off)")
    s.add_argument("--degrade", type=float, default=0.0, metavar="P",
                   help="probability that a training photo is blurred by rescaling (and, half as often, "
                        "JPEG re-encoded)")
    s.add_argument("--split-reference", action="append", default=[], metavar="GLOB",
                   help="decide the validation split on these shards, by listing id, for the ids they hold "
                        "(the 60x80 folder, when training on both photo folders)")
    s.add_argument("--precision", type=float, default=0.5,
                   help="operating point chosen on the validation split: expected precision at prevalence 0.02")
    s.add_argument("--max-eval", type=int, default=3000)
    s.add_argument("--attribute-columns", default=None, help="column=kind,... (default: the catalogue's)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field for an ablation, e.g. compression=1 or image.depth=2 "
                        "(added after the recipe's); with --init only image.image_size=N may differ "
                        "from the checkpoint")
    recipe = recipe or {}
    # --data is left out: a command-line --data replaces the recipe's globs instead of adding to them.
    s.set_defaults(fn=cmd_train, recipe_values=recipe,
                   **{k: v for k, v in recipe.items() if k not in ("data", "description")})
    return s


def recipe_fields() -> dict:
    """Recipe key -> :class:`~ecomatch_model.recipe.Field`, from the train command's options."""
    from .recipe import Field
    s = _add_train_parser(argparse.ArgumentParser().add_subparsers())
    fields = {"description": Field(str)}
    for a in s._actions:
        if a.dest in _NOT_RECIPE:
            continue
        many = isinstance(a, argparse._AppendAction) or a.nargs == "*"
        fields[a.dest] = Field(a.type or str, many, tuple(a.choices) if a.choices else None)
    return fields


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; for ``train --recipe FILE`` parsed again with the recipe's values as defaults."""
    from .recipe import RecipeError, read_recipe
    args = build_parser().parse_args(argv)
    if getattr(args, "recipe", None):
        try:
            recipe = read_recipe(args.recipe, recipe_fields())
        except RecipeError as exc:
            print(f"ecomatch train: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        args = build_parser(recipe).parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return cmd_scan(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

"""The nightly violation scan: listing shards (Parquet, CSV or JSON Lines) -> violation reports.

    ecomatch scan --input 'shards/*.parquet' --output PREFIX [--model default|PATH]
                  [--input-format auto|parquet|csv|jsonl] [--image-fetch-concurrency N]
                  [--calibration FILE] [--attribute-columns col=kind,...] [--skip-bad-files]
                  [--state EARLIER_PREFIX] [Beam options...]
    python -m pipelines.scan ...same arguments...

Graph: ``ReadListings -> DecodeListings -> ScoreListings -> SearchSwaps -> FlagViolations ->
WriteReports`` (see ``transforms/``): scoring gives raw scores, the swap search runs only for
the listings the verdict policy asks about, and flagging applies the one policy of
``ecomatch_model.verdict`` (the model's calibration, or ``--calibration FILE``); with ``--state``, ``CarryForward`` (``transforms/state.py``) comes between
reading and decoding: listings unchanged since that earlier run keep its verdict without
being decoded or scored, and its ids no longer read are listed in ``removed/``. Input and
output may be local paths or ``gs://`` URIs. Unless
``--runner`` is given, Beam's in-process ``FnApiRunner`` runs the job (it honours
``--direct_num_workers`` and ``--direct_running_mode=multi_processing``); any other runner
and its options (``--runner DataflowRunner --project ...``) pass straight through. An option
that is neither the scan's nor a registered Beam pipeline option is an error naming the
closest known one (:func:`check_beam_args`); Beam's routine notices are dropped unless
``--verbose`` (``pipelines/notices.py``). With ``STORAGE_EMULATOR_HOST`` set, gs:// goes to that
local emulator, anonymously (``transforms/storage.py``).

Outputs under PREFIX (full schemas in ``transforms/reports.py``):

- ``scores/*.parquet``: listing_id, verdict (ok|violation), severity (``p_violation``, the
  probability at the calibration's prevalence that the photo contradicts the text),
  match_score, worst_kind, content_hash, one row per scored listing;
- ``violations/*.parquet``: listing_id, severity, match_score, worst_kind, reasons,
  attributes (kind, value, score, p_contradicted, suggested_value, suggested_score), title,
  image_uri (credentials masked), source, and the ``--carry-columns`` (``seller_id``, ...);
- ``errors/*.parquet``: listing_id, source, stage, error_type, message;
- ``summary.json``: counts, model, calibration and operating point, input, runner, the
  device each worker scored on, times, listings per second, the run id and the run's shards
  (shard names carry the run id; ``run.json`` names the run that owns the prefix, and a run
  whose prefix another scan claimed publishes nothing), and with a seller column
  (``--seller-column``) the sellers with the most violations;
- ``report.html``: a self-contained page for reviewers, written by the job's last step
  (``WriteHtmlReport``, on a worker, on every runner) from the outputs above once
  ``summary.json`` is final: the ``--report-top`` most severe violations with attention
  heatmaps (``transforms/html_report.py``).

Each input file's format is told by its extension unless ``--input-format`` names it; CSV and
JSON Lines files name each photo in ``image_uri`` (``transforms/listings.py``). An
``image_uri`` is read only under ``--image-uri-prefix`` (by default the input's own bucket or
folder; ``transforms/sources.py``), within ``--image-fetch-timeout``; http(s) ones are fetched
``--image-fetch-concurrency`` at a time per worker, with retries on 429 and 5xx answers.

A rerun to the same PREFIX replaces the previous outputs. Before any work the job checks
the model, the calibration file, the attribute-column mapping, every input file's schema
and that PREFIX can be written, and stops with a message naming what is wrong; a row
group or text block that turns out unreadable while the job runs stops it too, naming the
file. With ``--skip-bad-files`` such files, row groups and blocks are reported in
``errors/`` instead (stage ``read``) and the rest is scanned. Guarantees, limits and their tests: ``docs/RELIABILITY.md``.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from typing import Mapping, Sequence

from pipelines.notices import quiet_routine_notices

# Before Beam's import logs its first notice; main() settles it from the parsed --verbose.
quiet_routine_notices("--verbose" not in sys.argv[1:])

import apache_beam as beam  # noqa: E402 (after the notice filters)
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                  StandardOptions)
from apache_beam.runners.runner import PipelineResult, PipelineState
from ecomatch_model.api import Matcher, load
from ecomatch_model.checkpoint import CheckpointError
from ecomatch_model.data import parse_attribute_columns
from ecomatch_model.verdict import CalibrationError, Policy, describe, read_policy_file

from transforms.decode import DEFAULT_FETCH_CONCURRENCY, DecodeListings, ListingDecoder
from transforms.errors import redact
from transforms.flag import FlagViolations
from transforms.html_report import DEFAULT_TOP, WriteHtmlReport
from transforms.listings import INPUT_FORMATS, InputSchemaError, ReadListings, UnreadableInputError, survey_input
from transforms.progress import TrackProgress
from transforms.reports import (ERRORS, REMOVED, REPORT, SCORES, SUMMARY, VIOLATIONS, VIOLATIONS_SCHEMA, ScanInfo,
                                WriteReports, check_writable, claim_prefix, clear_outputs, new_run_id, read_summary)
from transforms.score import EcomatchModelHandler, ScoreListings, SearchSwaps, SwapSearchHandler
from transforms.sources import FetchLimits, ImageSources
from transforms.state import CarryForward, previous_run
from transforms.storage import use_storage_emulator

log = logging.getLogger("ecomatch.scan")

DEFAULT_RUNNER = "FnApiRunner"


class ScanConfigError(ValueError):
    """A scan argument (calibration file, attribute columns) is unusable."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecomatch scan", description="Flag listings whose photo contradicts their text. Arguments not "
        "listed here are Beam pipeline options (--runner, --direct_num_workers, --project, ...).")
    p.add_argument("--input", required=True, help="listing shards: a glob, local or gs://")
    p.add_argument("--input-format", default="auto", choices=INPUT_FORMATS,
                   help="the shards' format (default: %(default)s, by extension: .parquet/.pq, .csv, "
                        ".jsonl/.ndjson/.json, a text one optionally compressed, e.g. .csv.gz); CSV and JSON "
                        "Lines name the photo in image_uri"),
    p.add_argument("--output", required=True, help="report prefix, local or gs://; previous reports there are "
                                                   "replaced")
    p.add_argument("--model", default="default",
                   help="bundled model name or checkpoint path/URL (default: %(default)s)")
    p.add_argument("--calibration", "--thresholds", dest="calibration", default=None, metavar="FILE",
                   help="calibration file (`ecomatch calibrate --write FILE`, local or gs://) judging the scan "
                        "instead of the model's own calibration")
    p.add_argument("--attribute-columns", default=None,
                   help="structured columns checked against the image, column=kind,... "
                        "(default: base_colour=colour,article_type=article_type,pattern=pattern,"
                        "material=material,gender=gender; absent columns are skipped)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="listings per forward pass (default: 512 when scoring on CUDA, else 64)")
    p.add_argument("--device", default=None, choices=["cuda", "cpu"],
                   help="scoring device on the workers (default: CUDA where present, else the CPU)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "bf16-weights"],
                   help="scoring precision (default: bf16-weights on CUDA, the two towers held in bf16; fp32 "
                        "on the CPU; bf16 is autocast. Both bf16 modes move scores by up to about 0.02 and can "
                        "flip a verdict near a threshold, so use fp32 to reproduce CPU verdicts exactly)")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile on the workers")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="report an input file that cannot be read as its format or has the wrong schema, or a row "
                        "group or text block that cannot be read, in errors/ and scan the rest (default: stop the "
                        "job, naming the file)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch CPU threads per worker process (default: cores / --direct_num_workers for a "
                        "local multi-process run, else torch's own default)")
    p.add_argument("--model-copies", type=int, default=None,
                   help="share this many model copies across all worker processes of a VM (default: one "
                        "shared copy when the worker has CUDA, else one per process)")
    p.add_argument("--report-top", type=int, default=DEFAULT_TOP,
                   help="violation cards in report.html, the most severe first (default: %(default)s)")
    p.add_argument("--state", default=None,
                   help="an earlier run's output prefix: listings unchanged since (same content_hash) keep its "
                        "verdict without being decoded or scored, its ids no longer read are listed in removed/; "
                        "ignored, with a warning, when that run is incomplete or had another model or calibration")
    p.add_argument("--carry-columns", default=None, metavar="COL,COL",
                   help="input string columns copied into every violations/ row, e.g. seller_id,product_url "
                        "(each must be in some input file)")
    p.add_argument("--seller-column", default=None, metavar="NAME",
                   help="the carried column naming the seller: summary.json and the report list the sellers "
                        "with the most violations (default: seller_id when it is carried; carried when named)")
    p.add_argument("--verbose", action="store_true", help="also log Beam's routine notices (pipelines/notices.py)")
    p.add_argument("--image-uri-prefix", "--image_uri_prefix", dest="image_uri_prefix", action="append", default=[],
                   metavar="PREFIX", help="an image_uri must lie under this prefix (repeatable; one value may hold "
                   "several, separated by spaces), e.g. gs://catalogue-images/ or https://cdn.example.com/ "
                   "(default: the input's own bucket, or a local input's folder); see docs/RELIABILITY.md")
    p.add_argument("--image-fetch-timeout", type=float, default=FetchLimits.deadline, metavar="SECONDS",
                   help="the most time fetching one listing's image_uri may take, redirects included; connecting "
                        "and each read time out sooner; an answer of 429 or 5xx, or a reset connection, is tried up "
                        f"to {FetchLimits.attempts} times within it (default: %(default)s)")
    p.add_argument("--image-fetch-concurrency", type=int, default=DEFAULT_FETCH_CONCURRENCY, metavar="N",
                   help="http(s) image_uri fetches in flight at once per worker process (default: %(default)s)")
    return p


def beam_option_parser() -> argparse.ArgumentParser:
    """The parser Beam itself builds from every registered ``PipelineOptions`` class."""
    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    return parsers[0]


def check_beam_args(beam_args: Sequence[str], scan_parser: argparse.ArgumentParser) -> None:
    """Raise :class:`ScanConfigError` for the first of ``beam_args`` (what the scan's own
    parser left) that is no Beam pipeline option either, naming the closest known option."""
    parser = beam_option_parser()

    def refuse(message: str) -> None:    # a Beam option with a bad value: one line, not Beam's whole usage
        raise ScanConfigError(f"Beam pipeline option: {message}")

    parser.error = refuse  # type: ignore[method-assign]
    _, unknown = parser.parse_known_args(list(beam_args))
    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    if not flags:
        if unknown:
            raise ScanConfigError(f"unexpected argument {unknown[0]!r}")
        return
    known = [o for p in (scan_parser, parser) for a in p._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flags[0], known, n=1)
    raise ScanConfigError(f"unknown option {flags[0]}" + (f" (did you mean {close[0]}?)" if close else "")
                          + ": neither a scan option nor a Beam pipeline option (ecomatch scan --help)")


def scan_policy(path: str | None, matcher: Matcher) -> tuple[Policy, str]:
    """The verdict policy and where it came from: ``--calibration FILE`` (checked against the
    model's kinds), else the checkpoint's own."""
    if path:
        try:
            return read_policy_file(path, matcher.lexicon.kinds), redact(path)
        except CalibrationError as exc:
            raise ScanConfigError(f"--calibration {exc}") from None
    if matcher.policy is None:
        raise ScanConfigError(f"model {matcher.name} has no calibration: run `ecomatch calibrate` or pass "
                              "--calibration FILE")
    return matcher.policy, "checkpoint"


def attribute_columns(spec: str | None, matcher: Matcher) -> dict[str, str]:
    """``--attribute-columns`` as {column: kind}, every kind known to the model."""
    try:
        columns = parse_attribute_columns(spec)
    except ValueError as exc:
        raise ScanConfigError(f"--attribute-columns: {exc}") from None
    unknown = sorted({k for k in columns.values() if k not in matcher.lexicon.kinds})
    if unknown:
        raise ScanConfigError(f"--attribute-columns: unknown kind(s) {', '.join(unknown)} "
                              f"(the model knows {', '.join(matcher.lexicon.kinds)})")
    return columns


def carry_columns(spec: str | None, seller: str | None) -> tuple[list[str], str | None]:
    """``--carry-columns`` (with ``--seller-column``, carried too) as names in order, and the
    seller column (``seller_id`` when carried and no other is named)."""
    names = [c.strip() for c in spec.split(",")] if spec else []
    if any(not c for c in names):
        raise ScanConfigError(f"--carry-columns: empty column name in {spec!r}")
    if seller is not None and not seller.strip():
        raise ScanConfigError("--seller-column: empty column name")
    names += [seller.strip()] if seller and seller.strip() not in names else []
    taken = sorted({c for c in names if c in VIOLATIONS_SCHEMA.names or c == "image"})
    if taken:
        raise ScanConfigError(f"--carry-columns: {', '.join(taken)} already in violations/ rows or not a string")
    if len(set(names)) != len(names):
        raise ScanConfigError(f"--carry-columns: a column is named twice in {spec!r}")
    return names, (seller.strip() if seller else ("seller_id" if "seller_id" in names else None))


def _runner_name(options: PipelineOptions, pipeline: beam.Pipeline) -> str:
    runner = options.view_as(StandardOptions).runner
    return runner if isinstance(runner, str) else type(pipeline.runner).__name__


def local_worker_threads(options: PipelineOptions) -> int | None:
    """Torch threads per process for a local multi-process run (cores shared out between
    the worker processes); None elsewhere, where torch's default stands."""
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers or 1
    if direct.direct_running_mode != "multi_processing" or workers < 2:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def local_processes(options: PipelineOptions) -> int | None:
    """How many processes share a local run's work (for the progress log's estimate); None on
    other runners, where the number of workers is the service's to choose."""
    if options.view_as(StandardOptions).runner not in (DEFAULT_RUNNER, "DirectRunner"):
        return None
    direct = options.view_as(DirectOptions)
    return (direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1


def run(argv: Sequence[str] | None = None, save_main_session: bool = True,
        test_pipeline: beam.Pipeline | None = None) -> PipelineResult:
    """Build and run the scan; returns the finished pipeline's result. Raises
    :class:`ScanConfigError`, ``InputSchemaError``, ``CheckpointError`` or
    ``FileNotFoundError`` before any work when an argument or an input file is unusable,
    and ``UnreadableInputError`` when a row group cannot be read (unless ``--skip-bad-files``)."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(beam_args, parser)
    use_storage_emulator()      # STORAGE_EMULATOR_HOST: gs:// to a local emulator, anonymously
    if (args.batch_size is not None and args.batch_size < 1) or (args.model_copies is not None and args.model_copies < 1):
        raise ScanConfigError("--batch-size and --model-copies must be at least 1")
    if args.report_top < 0:
        raise ScanConfigError("--report-top must be at least 0")
    if args.state and args.state.rstrip("/") == args.output.rstrip("/"):
        raise ScanConfigError("--state must be an earlier run's prefix, not --output (its reports are replaced)")
    if not args.image_fetch_timeout > 0:
        raise ScanConfigError("--image-fetch-timeout must be above 0")
    if args.image_fetch_concurrency < 1:
        raise ScanConfigError("--image-fetch-concurrency must be at least 1")
    try:
        sources = ImageSources.for_scan(args.input, [p for v in args.image_uri_prefix for p in v.split()],
                                        FetchLimits.within(args.image_fetch_timeout))
    except ValueError as exc:
        raise ScanConfigError(f"--image-uri-prefix: {exc}") from None
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    options.view_as(SetupOptions).save_main_session = save_main_session
    pipeline = test_pipeline or beam.Pipeline(options=options)

    matcher = load(args.model, device="cpu")       # the launcher only needs its text side and metadata
    policy, policy_source = scan_policy(args.calibration, matcher)
    calibration = describe(policy, policy_source)
    columns = attribute_columns(args.attribute_columns, matcher)
    carry, seller_column = carry_columns(args.carry_columns, args.seller_column)
    # Carried columns are read and type-checked as optional string columns, like attribute columns.
    optional = [*columns, *(c for c in carry if c not in columns)]
    survey = survey_input(args.input, optional, strict=not args.skip_bad_files, input_format=args.input_format)
    files, read_columns = survey.files, survey.columns
    missing = [c for c in carry if c not in read_columns]
    if missing:
        raise ScanConfigError(f"--carry-columns: no input file has column(s) {', '.join(map(repr, missing))}")
    for why in survey.bad.values():
        log.warning("--skip-bad-files: skipping %s", redact(why))
    previous, why = previous_run(args.state, matcher.sha256, calibration["sha256"]) if args.state else (None, "")
    if why:
        log.warning("--state %s is not used, every listing is scanned: %s", redact(args.state), why)
    info = ScanInfo(args.input, len(files) + len(survey.bad), args.output, args.model, matcher.sha256, calibration,
                    list(matcher.lexicon.kinds), _runner_name(pipeline.options if test_pipeline else options, pipeline),
                    state=previous.prefix if previous else None, run_id=new_run_id(),
                    carry_columns=carry, seller_column=seller_column)
    log.info("scanning %s listings in %d file(s) matching %s (columns %s) with model %s (sha256 %s) into %s; "
             "image_uri under %s", "the" if survey.rows is None else survey.rows, len(files), redact(args.input),
             ", ".join(read_columns), redact(args.model), matcher.sha256[:12], redact(args.output),
             redact(" ".join(sources.prefixes)))
    try:
        check_writable(args.output)     # the last check before any work: it creates the prefix
    except OSError as exc:
        raise ScanConfigError(f"--output {exc}") from None
    clear_outputs(args.output)
    claim_prefix(args.output, info.run_id)     # a run that claimed it earlier and still runs will fail

    # The files found bad above go to the reader too: it reports them, with any found bad later.
    read = ReadListings([*files, *survey.bad], read_columns, optional, args.input_format)
    if args.skip_bad_files:
        listings, read_errors = pipeline | "ReadListings" >> read.with_exception_handling()
        failures = [read_errors]
    else:
        listings, failures = pipeline | "ReadListings" >> read, []
    decoder = ListingDecoder.from_matcher(matcher, columns, sources=sources, carry_columns=carry)
    fetches = args.image_fetch_concurrency
    changed, carried, removed = (listings | "CarryForward" >> CarryForward(previous, decoder, seller_column, fetches)
                                 if previous else (listings, None, None))
    decoded, decode_errors = changed | "DecodeListings" >> DecodeListings(decoder, fetches)
    handler = EcomatchModelHandler(args.model, args.batch_size, args.model_copies,
                                   args.torch_threads or local_worker_threads(options), device=args.device,
                                   precision=args.precision, compile=args.compile)
    scored, score_errors = decoded | "ScoreListings" >> ScoreListings(handler, policy)
    searched = scored | "SearchSwaps" >> SearchSwaps(SwapSearchHandler(handler))
    verdicts = searched | "FlagViolations" >> FlagViolations(policy, seller_column)
    if previous:
        verdicts = (verdicts, carried) | "AllVerdicts" >> beam.Flatten()
    errors = (*failures, decode_errors, score_errors) | "MergeErrors" >> beam.Flatten()
    _ = (verdicts, errors) | "TrackProgress" >> TrackProgress(survey.rows, local_processes(options))
    reports = {"listings": listings, "verdicts": verdicts, "errors": errors, "scored": scored,
               **({REMOVED: removed} if previous else {})}
    summary = reports | "WriteReports" >> WriteReports(info)
    # A step of the job, like summary.json, so that a launcher that does not wait (a template
    # launch) leaves nothing undone: it runs once summary.json is written.
    _ = summary | "WriteHtmlReport" >> WriteHtmlReport(args.output, args.model, policy, decoder, files,
                                                       read_columns, args.report_top, args.input_format)

    result = pipeline.run()
    if pipeline.options.view_as(GoogleCloudOptions).template_location:
        return result       # only the job description was written (a Dataflow template launch): nothing ran yet
    result.wait_until_finish()
    return result


def report_lines(summary: Mapping, prefix: str) -> list[str]:
    """What ``ecomatch scan`` prints: the counts and where the reports are."""
    c = summary["counts"]
    kinds = ", ".join(f"{k} {n}" for k, n in c["violations_per_kind"].items() if n) or "none"
    errors = ", ".join(f"{k} {n}" for k, n in c["errors_per_type"].items()) or "none"
    return [f"read {c['read']} listings: {c['scored']} scored ({c['ok']} ok, {c['violations']} violations), "
            f"{c['errors']} errors, in {summary['seconds']:.1f} s ({summary['listings_per_second']:.1f} listings/s)",
            f"violations by kind: {kinds}",
            f"errors by type: {errors}",
            f"duplicate listing ids: {summary['duplicates']['ids']} (on {summary['duplicates']['rows']} rows); "
            f"unreadable inputs skipped: {summary['skipped_inputs']}",
            *(f"{name + ':':<11} {FileSystems.join(prefix, name)}/" for name in (SCORES, VIOLATIONS, ERRORS)),
            f"{'summary:':<11} {FileSystems.join(prefix, SUMMARY)}",
            f"{'report:':<11} {FileSystems.join(prefix, REPORT)}"]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the scan, print the counts and where the reports are."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_routine_notices("--verbose" not in argv)
    try:
        result = run(argv)
    except (ScanConfigError, InputSchemaError, UnreadableInputError, CheckpointError, FileNotFoundError) as exc:
        print(f"ecomatch scan: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    args, beam_args = build_parser().parse_known_args(argv)
    template = PipelineOptions(beam_args).view_as(GoogleCloudOptions).template_location
    if template:  # the job was described, not run: there are no reports to show yet
        print(f"job description written to {template}")
        return 0
    if result.state != PipelineState.DONE:
        print(f"ecomatch scan: the pipeline ended in state {result.state}", file=sys.stderr)
        return 1
    prefix = args.output
    print("\n".join(report_lines(read_summary(prefix), prefix)))
    return 0


if __name__ == "__main__":
    # force: importing Beam has already given the root logger a WARNING handler
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    sys.exit(main())

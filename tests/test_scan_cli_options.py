"""``ecomatch scan`` as a command line that respects its user: a misspelt option is an error
naming the closest known one (a real Beam pipeline option passes), ``--help`` comes without
Beam's import warnings, and Beam's routine notices stay out of the log unless ``--verbose``."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_fixtures import model_dir_fixture, write_table  # noqa: F401 (fixture)

from ecomatch_model.cli import main as cli_main
from ecomatch_model.sample import make_listings
from pipelines.notices import ROUTINE, quiet_routine_notices
from pipelines.scan import ScanConfigError, beam_option_parser, build_parser, check_beam_args


@pytest.mark.parametrize("args, wrong, closest", [
    (["--bach-size", "8"], "--bach-size", "--batch-size"),
    (["--runnr", "DataflowRunner"], "--runnr", "--runner"),
    (["--batch_size=8"], "--batch_size", "--batch-size"),
    (["--direct_num_worker", "2"], "--direct_num_worker", "--direct_num_workers"),
])
def test_misspelt_option_is_an_error_naming_the_closest(tmp_path: Path, capsys, args, wrong, closest):
    code = cli_main(["scan", "--input", str(tmp_path / "none-*.parquet"), "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert f"unknown option {wrong} (did you mean {closest}?)" in err
    assert not (tmp_path / "out").exists(), "nothing may run before the arguments are checked"


@pytest.mark.parametrize("args", [["--direct_num_workers", "2"], ["--runner", "X"], ["--project", "P"],
                                  ["--runner=PortableRunner", "--job_endpoint=127.0.0.1:1", "--environment_type",
                                   "LOOPBACK"], ["--experiments", "a", "--experiments=b"]])
def test_beam_pipeline_options_pass(args):
    parser = build_parser()
    _, beam_args = parser.parse_known_args(["--input", "x", "--output", "y", *args])
    assert beam_args == args
    check_beam_args(beam_args, parser)      # raises for anything Beam does not know


def test_stray_argument_and_bad_beam_value_are_errors():
    with pytest.raises(ScanConfigError, match="unexpected argument 'stray'"):
        check_beam_args(["stray"], build_parser())
    with pytest.raises(ScanConfigError, match="--direct_num_workers: invalid int value"):
        check_beam_args(["--direct_num_workers", "two"], build_parser())


def test_no_beam_option_is_taken_by_the_scans_parser():
    scan = build_parser()
    beam = [o for a in beam_option_parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert len(beam) > 100
    taken = [o for o in beam if scan.parse_known_args(["--input", "x", "--output", "y", o, "1"])[1][:1] != [o]]
    assert taken == []


@pytest.mark.parametrize("command", [["-m", "pipelines.scan", "--help"], ["-m", "ecomatch_model.cli", "scan", "--help"]])
def test_help_has_no_beam_import_warnings(command):
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.startswith("usage: ecomatch scan")
    assert "--verbose" in done.stdout
    assert done.stderr == ""


def routine(records: list[logging.LogRecord]) -> set[str]:
    """The :data:`ROUTINE` message starts found among ``records``."""
    return {start for r in records for start in ROUTINE.get(r.name, ()) if r.getMessage().startswith(start)}


def test_routine_notices_only_with_verbose(tmp_path: Path, model_dir: str, caplog):
    shard = write_table(tmp_path / "in" / "l.parquet", make_listings(6, seed=1, size=48))
    argv = ["scan", "--input", shard, "--model", model_dir, "--batch-size", "4"]
    caplog.set_level(logging.INFO)
    assert cli_main([*argv, "--output", str(tmp_path / "a")]) == 0
    assert routine(caplog.records) == set()
    assert any(r.name == "ecomatch.scan" for r in caplog.records), "the scan's own lines still show"
    caplog.clear()
    try:
        assert cli_main([*argv, "--output", str(tmp_path / "b"), "--verbose"]) == 0
        assert {"*** WriteImpl min_shards undef", "Resource module is not available"} <= routine(caplog.records)
    finally:
        quiet_routine_notices(True)         # as the other tests expect

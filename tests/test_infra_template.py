"""The flex template's metadata (infra/metadata.json) against the scan, and the scripts and
request bodies that use it: parameter names are the scan's arguments, the validation regexes
accept good values and reject bad ones, the nightly launch body passes them, and every
placeholder the deploy script fills in is one it exports."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import string
import subprocess
from pathlib import Path

import pytest

from ecomatch_model.data import DEFAULT_ATTRIBUTE_COLUMNS
from infra import launch
from infra.nightly import expand_dates
from pipelines.scan import build_parser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
METADATA = json.loads((INFRA / "metadata.json").read_text())
PARAMS = {p["name"]: p for p in METADATA["parameters"]}
DAY = dt.date(2026, 11, 26)

GOOD = {
    "input": ["gs://catalogue/listings/*.parquet", "gs://my-shop.example_1/export/{date}/part-0001.parquet",
              "gs://abc/x", "gs://catalogue/export/{date}/*.csv.gz", "gs://catalogue/feed.jsonl"],
    "input_format": ["auto", "parquet", "csv", "jsonl"],
    "image_fetch_concurrency": ["1", "16", "128"],
    "output": ["gs://reports/scan/{date}", "gs://reports/scan/2026-11-26/", "gs://a-b/c"],
    "model": ["default", "gs://models/ecomatch/base-v2", "gs://models/ecomatch/base-v2/"],
    "calibration": ["gs://models/ecomatch/calibration.json", "gs://cfg/{date}/t.json"],
    "state": ["gs://reports/scan/{yesterday}", "gs://reports/scan/2026-11-25"],
    "attribute_columns": ["base_colour=colour", "colour_name=colour,Type=article_type,fabric.main=material"],
    "skip_bad_files": ["true", "false"],
    "carry_columns": ["seller_id", "seller_id,product_url", "Shop.Name,x-1"],
    "image_uri_prefix": ["gs://catalogue-images/", "https://cdn.example.com/", "gs://shop-prod-catalogue/",
                         "gs://catalogue-images/ https://cdn.example.com:8443/img/", "gs://a-b/c/"],
}
BAD = {
    "input": ["", "listings/*.parquet", "/data/listings.parquet", "gs://", "gs://ab/x", "gs://Catalogue/x",
              "gs://bucket", "gs://bucket/", "s3://bucket/listings.parquet", "gs://bucket/a b.parquet"],
    "output": ["", "gs://reports", "gs://reports/", "gs://reports/scan/*", "gs://reports/scan[1]",
               "/tmp/reports", "gs://reports/scan out", "gs://-reports/scan"],
    "model": ["", "tiny", "base", "Default", "/models/base", "default ", "gs://models", "gs://models/*"],
    "calibration": ["", "calibration.json", "gs://cfg/calibration.yaml", "gs://cfg/.json.bak", "gs://cfg"],
    "state": ["", "gs://reports", "gs://reports/scan/*", "/tmp/reports/2026-11-25", "gs://reports/a b"],
    "attribute_columns": ["", "base_colour", "base_colour=", "=colour", "a=colour,", "a=colour b=pattern",
                          "a=Colour"],
    "skip_bad_files": ["", "yes", "True", "1", "true "],
    "input_format": ["", "CSV", "json", "ndjson", "tsv", "csv "],
    "image_fetch_concurrency": ["", "0", "-1", "016", "1000", "1.5", "many"],
    "carry_columns": ["", "seller_id,", ",seller_id", "seller_id,,url", "seller id", "1seller"],
    "image_uri_prefix": ["", "gs://imgs", "http://cdn.example.com/", "https://user:pw@cdn.example.com/",
                         "/etc/", "file:///", "data:", "https://cdn.example.com", "gs://imgs/ /tmp/",
                         "gs://imgs/*", "https://169.254.169.254/ x"],
}


def accepts(name: str, value: str) -> bool:
    return all(re.fullmatch(r, value) for r in PARAMS[name]["regexes"])


def scan_options() -> dict[str, object]:
    """The scan's own arguments by option string (``--input``), as argparse actions."""
    return {s: a for a in build_parser()._actions for s in a.option_strings}


def test_parameters_are_scan_arguments():
    options = scan_options()
    for name, param in PARAMS.items():
        option = launch.scan_option(name)
        action = options.get(option)
        assert action is not None, f"template parameter {name!r} is not an argument of the scan"
        assert action.dest == option[2:].replace("-", "_"), name
        assert param.get("isOptional", False) == (not action.required), name
        assert param["label"] and param["helpText"] and param["regexes"], name
    required = {s[2:] for s, a in options.items() if a.required}
    assert required <= set(PARAMS), f"required scan arguments missing from the template: {required - set(PARAMS)}"


@pytest.mark.parametrize("name", sorted(GOOD))
def test_regexes_accept_good_values(name: str):
    assert all(r.startswith("^") and r.endswith("$") for r in PARAMS[name]["regexes"])
    assert [v for v in GOOD[name] if not accepts(name, v)] == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_regexes_reject_bad_values(name: str):
    assert [v for v in BAD[name] if accepts(name, v)] == []


def test_template_defaults_pass_their_regexes():
    """What each optional parameter means when left out is a value its regex accepts (a
    default the console would refuse, like MODEL=base once, cannot be typed back in)."""
    defaults = {a.dest: a.default for a in build_parser()._actions}
    written = {"model": defaults["model"], "skip_bad_files": str(defaults["skip_bad_files"]).lower(),
               "attribute_columns": ",".join(f"{c}={k}" for c, k in DEFAULT_ATTRIBUTE_COLUMNS.items()),
               "input_format": defaults["input_format"],
               "image_fetch_concurrency": str(defaults["image_fetch_concurrency"])}
    assert written["model"] == "default" and [n for n, v in written.items() if not accepts(n, v)] == []
    for name in ("model", "input_format", "image_fetch_concurrency"):
        assert f"Default: {written[name]}." in PARAMS[name]["helpText"], name
    assert f"Default: {written['attribute_columns']};" in PARAMS["attribute_columns"]["helpText"]


def test_common_sh_defaults_pass_the_template_regexes():
    env = common_sh_env()
    assert env["MODEL"] == "default"
    assert accepts("model", env["MODEL"]) and accepts("input", env["INPUT"])
    assert accepts("output", expand_dates(env["REPORTS"] + "/{date}", DAY))


def test_launcher_writes_template_parameters_as_scan_options():
    argv = launch.template_args(["--input=gs://c/x.parquet", "--attribute_columns=colour_name=colour",
                                 "--carry_columns=seller_id,product_url", "--skip_bad_files=true",
                                 "--image_uri_prefix=gs://img/ https://cdn.example.com/",
                                 "--input_format=csv", "--image_fetch_concurrency=8", "--max_num_workers=3"])
    assert argv == ["--input=gs://c/x.parquet", "--attribute-columns=colour_name=colour",
                    "--carry-columns=seller_id,product_url", "--skip-bad-files",
                    "--image-uri-prefix=gs://img/", "--image-uri-prefix=https://cdn.example.com/",
                    "--input-format=csv", "--image-fetch-concurrency=8", "--max_num_workers=3"]
    args, rest = build_parser().parse_known_args(["--output=gs://r/x", *argv])
    assert (args.attribute_columns, args.carry_columns, args.skip_bad_files, rest) == (
        "colour_name=colour", "seller_id,product_url", True, ["--max_num_workers=3"])
    assert (args.input_format, args.image_fetch_concurrency) == ("csv", 8)
    assert args.image_uri_prefix == ["gs://img/", "https://cdn.example.com/"]
    assert "--skip-bad-files" not in launch.template_args(["--skip_bad_files=false"])
    with pytest.raises(SystemExit, match="true or false"):
        launch.template_args(["--skip_bad_files=yes"])


def test_model_regex_accepts_every_bundled_model():
    bundled = sorted(p.name for p in (ROOT / "ecomatch_model" / "models").iterdir() if (p / "config.json").is_file())
    assert bundled and [m for m in bundled if not accepts("model", m)] == []


def render(path: Path, env: dict[str, str]) -> str:
    return string.Template(path.read_text()).substitute(env)


def common_sh_env(**overrides: str) -> dict[str, str]:
    """The names infra/common.sh sets, with its defaults, for PROJECT=shop-prod."""
    names = ["PROJECT", "REGION", "BUCKET", "INPUT", "REPORTS", "MODEL", "IMAGE_URI_PREFIX", "TAG", "IMAGE", "TEMPLATE",
             "WORKER_SA", "SCHEDULER_SA", "CHECKER_SA"]
    script = "source infra/common.sh && " + " && ".join(f'printf "%s\\0" "${n}"' for n in names)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PROJECT": "shop-prod", **overrides}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return dict(zip(names, done.stdout.split("\0")))


def deploy_env() -> dict[str, str]:
    """Values for the names infra/schedule.sh exports, as infra/common.sh sets them by default."""
    env = common_sh_env()
    return {**{n: env[n] for n in ("PROJECT", "BUCKET", "INPUT", "REPORTS", "MODEL", "IMAGE_URI_PREFIX", "TEMPLATE",
                                   "WORKER_SA")},
            "NOTIFY": "projects/shop-prod/notificationChannels/123"}


def test_schedule_exports_every_placeholder():
    [exported] = re.findall(r"^export (.+)$", (INFRA / "schedule.sh").read_text(), re.M)
    assert set(exported.split()) == set(deploy_env())
    for body in ("nightly_launch.json", "alert_policy.json"):
        names = {m.group("named") or m.group("braced")
                 for m in string.Template.pattern.finditer((INFRA / body).read_text()) if not m.group("escaped")}
        assert names <= set(exported.split()), f"{body}: {names - set(exported.split())} not exported"


def test_nightly_launch_body_passes_valid_parameters():
    body = json.loads(render(INFRA / "nightly_launch.json", deploy_env()))["launchParameter"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", body["jobName"])
    assert re.fullmatch(r"gs://[^/]+/.+\.json", body["containerSpecGcsPath"])
    params = body["parameters"]
    assert {n for n, p in PARAMS.items() if not p.get("isOptional")} <= set(params) <= set(PARAMS)
    assert [n for n, v in params.items() if not accepts(n, expand_dates(v, DAY))] == []
    assert expand_dates(params["output"], DAY).endswith("/2026-11-26"), "each night needs its own prefix"
    assert expand_dates(params["state"], DAY) == expand_dates(params["output"], DAY - dt.timedelta(days=1)), (
        "each night carries the night before forward")
    assert body["environment"]["serviceAccountEmail"] == deploy_env()["WORKER_SA"]


def test_alert_policy_watches_job_and_check():
    policy = json.loads(render(INFRA / "alert_policy.json", deploy_env()))
    filters = [c["conditionThreshold"]["filter"] for c in policy["conditions"]]
    assert policy["combiner"] == "OR" and len(filters) == 2
    assert any('job_name = starts_with("ecomatch-nightly")' in f and "job/is_failed" in f for f in filters)
    assert any('job_name = "ecomatch-check"' in f and 'result = "failed"' in f for f in filters)
    launch = json.loads((INFRA / "nightly_launch.json").read_text())["launchParameter"]
    assert launch["jobName"].startswith("ecomatch-nightly")
    assert policy["notificationChannels"] == [deploy_env()["NOTIFY"]]


def test_run_script_parameters_are_template_parameters():
    [spec] = re.findall(r'--parameters "\^~\^([^"]+)"', (INFRA / "run.sh").read_text())
    names = {kv.split("=", 1)[0] for kv in spec.split("~")}
    assert {"input", "output"} <= names <= set(PARAMS)


def test_scripts_parse():
    scripts = sorted(INFRA.glob("*.sh"))
    assert len(scripts) >= 4
    for script in scripts:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script.name}: {check.stderr}"

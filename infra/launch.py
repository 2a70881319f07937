"""The flex template's entry point: build the scan for Dataflow GPU workers.

Dataflow's template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE`` in
``infra/Dockerfile``) inside the worker image, with the template's parameters
(``--input=... --output=...``, see ``infra/metadata.json``) and Beam's options (``--runner``,
``--project``, ``--region``, ``--template_location``, ...). It puts :data:`GPU_OPTIONS` (the one
place the worker shape is set) and the image's own name as ``--sdk_container_image`` in front,
expands ``{date}`` and ``{yesterday}`` in every argument (:func:`infra.nightly.expand_dates`),
writes the template parameters that are not named as the scan's options as those options
(``--skip_bad_files=true`` -> ``--skip-bad-files``, :func:`template_args`), and hands the rest to ``pipelines.scan.run``, which writes the job description and returns; the
Dataflow service then starts the job. Options given at launch come later and so win
(``--max_num_workers=32``); ``--dataflow_service_options`` adds to the list.

The same works by hand from a checkout whose Python and Beam match the image:
``ECOMATCH_IMAGE=IMAGE python -m infra.launch --input ... --output ... --runner DataflowRunner
--project ... --region ... --temp_location gs://...``.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from typing import Sequence

from apache_beam.runners.runner import PipelineResult

from infra.nightly import expand_dates, utc_today
from pipelines.scan import run

IMAGE_ENV = "ECOMATCH_IMAGE"        # set in the image at build time to the image's own name

GPU_OPTIONS = {
    "dataflow_service_options": "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    "machine_type": "g2-standard-4",        # 4 vCPUs, 16 GB; L4 GPUs come only on G2 machines
    # Dataflow starts one SDK process per vCPU, each decoding images; the model is one copy per VM,
    # shared by all of them (transforms/score.py). A second thread per process decodes the next
    # batch while the first waits for the GPU.
    "number_of_worker_harness_threads": "2",
    "max_num_workers": "8",
    "disk_size_gb": "50",                   # room for the CUDA + torch image
    "sdk_location": "container",            # Beam is in the image: stage no SDK
    # Scan option, not Beam's: the launcher has no GPU, so say the workers score on CUDA (towers in bf16,
    # batches of 512, one shared model per VM) instead of letting the launcher's CPU decide.
    "device": "cuda",
}


# Template parameters (infra/metadata.json) whose name is not the scan option's: Dataflow passes
# each as --name=value, so a flag comes as "true"/"false" and a repeatable option as one list.
RENAMED = {"attribute_columns": "--attribute-columns", "carry_columns": "--carry-columns",
           "input_format": "--input-format", "image_fetch_concurrency": "--image-fetch-concurrency"}
FLAGS = {"skip_bad_files": "--skip-bad-files"}                    # "true" -> the flag, "false" -> nothing
LISTS = {"image_uri_prefix": "--image-uri-prefix"}                # "a b" -> one option per item


def scan_option(parameter: str) -> str:
    """The scan option that the template parameter ``parameter`` becomes."""
    return RENAMED.get(parameter) or FLAGS.get(parameter) or LISTS.get(parameter) or f"--{parameter}"


def template_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with the template's ``--name=value`` parameters written as the scan's options."""
    out: list[str] = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if sep and name in RENAMED:
            out.append(f"{RENAMED[name]}={value}")
        elif sep and name in FLAGS:
            if value.strip().lower() not in ("true", "false"):
                raise SystemExit(f"infra.launch: --{name} must be true or false, got {value!r}")
            out += [FLAGS[name]] if value.strip().lower() == "true" else []
        elif sep and name in LISTS:
            out += [f"{LISTS[name]}={item.strip()}" for item in value.split() if item.strip()]
        else:
            out.append(arg)
    return out


def launch_argv(argv: Sequence[str], image: str, day: dt.date) -> list[str]:
    """The scan's arguments: the GPU worker options and ``image``, then ``argv`` with its dates
    expanded and the template's parameters written as scan options (:func:`template_args`)."""
    defaults = [f"--{name}={value}" for name, value in GPU_OPTIONS.items()]
    return [*defaults, f"--sdk_container_image={image}", *template_args([expand_dates(a, day) for a in argv])]


def main(argv: Sequence[str] | None = None, day: dt.date | None = None) -> PipelineResult:
    """Build (and, without ``--template_location``, run) the scan on Dataflow GPU workers."""
    image = os.environ.get(IMAGE_ENV, "")
    if not image:
        raise SystemExit(f"infra.launch: {IMAGE_ENV} is not set: the worker image is unknown "
                         "(it is set in images built by infra/build.sh)")
    args = launch_argv(sys.argv[1:] if argv is None else argv, image, day or utc_today())
    # The workers import the project from the image: no main session to pickle.
    return run(args, save_main_session=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    main()

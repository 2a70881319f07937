"""infra/Dockerfile against the project: the Beam SDK boot files and the installed Beam are the
version setup.py pins, the Python is the project's, torch is the version the venv gets, and the
image is both the worker (Beam's boot as entry point) and the flex template launcher. Docker
is not needed: the Dockerfile is parsed."""
from __future__ import annotations

import ast
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam
import pytest
from packaging.specifiers import SpecifierSet

from infra import launch

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    """One FROM block: its resolved base image, alias and instructions (keyword, rest of line)."""

    image: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    args: dict[str, str]            # global ARG defaults (before the first FROM)
    stages: list[Stage]

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, alias: str) -> Stage:
        [stage] = [s for s in self.stages if s.alias == alias]
        return stage


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw.strip())
        pending = ""
    df = Dockerfile({}, [])
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            image, _, alias = rest.partition(" AS ")
            df.stages.append(Stage(df.resolve(image.strip()), alias.strip() or None))
        elif keyword == "ARG" and not df.stages:
            name, _, default = rest.partition("=")
            df.args[name] = default
        else:
            df.stages[-1].instructions.append((keyword, rest))
    return df


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "infra" / "Dockerfile").read_text())


def setup_keyword(name: str) -> str:
    """A literal keyword argument of the setup() call in setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    [value] = [k.value for k in call.keywords if k.arg == name]
    return ast.literal_eval(value)


def beam_pin() -> str:
    """The Beam version pinned by ``BEAM = "apache-beam==X"`` in setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [value] = [n.value.value for n in tree.body
               if isinstance(n, ast.Assign) and [t.id for t in n.targets] == ["BEAM"]]
    name, _, version = value.partition("==")
    assert name == "apache-beam" and version
    return version


def test_beam_sdk_image_is_setup_py_pin(dockerfile: Dockerfile):
    pin = beam_pin()
    assert dockerfile.args["BEAM_VERSION"] == pin
    python = dockerfile.args["PYTHON_VERSION"]
    assert dockerfile.stage("beam_sdk").image == f"apache/beam_python{python}_sdk:{pin}"
    assert apache_beam.__version__ == pin, "the launching environment must run the Beam the workers run"


def test_worker_boots_beam_and_launches_template(dockerfile: Dockerfile):
    final = dockerfile.final.instructions
    assert ("COPY", "--from=beam_sdk /opt/apache/beam /opt/apache/beam") in final
    assert [rest for kw, rest in final if kw == "ENTRYPOINT"][-1] == '["/opt/apache/beam/boot"]'
    assert ("COPY", "--from=template_launcher /opt/google/dataflow/python_template_launcher "
                    "/opt/google/dataflow/python_template_launcher") in final
    env = dict(kv.split("=", 1) for kw, rest in final if kw == "ENV" for kv in shlex.split(rest))
    py_file = Path(env["FLEX_TEMPLATE_PYTHON_PY_FILE"])
    assert py_file.relative_to(env["PYTHONPATH"]) == Path("infra/launch.py")
    assert (ROOT / "infra" / "launch.py").is_file()
    assert env[launch.IMAGE_ENV] == "${IMAGE}" and ("ARG", "IMAGE") in final
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"


def test_python_is_the_projects(dockerfile: Dockerfile):
    python = dockerfile.args["PYTHON_VERSION"]
    assert python in SpecifierSet(setup_keyword("python_requires"))
    # Jobs are pickled by the launching interpreter and unpickled by the workers' one.
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", (
        f"the image runs Python {python}, this project runs {sys.version_info.major}.{sys.version_info.minor}")
    assert f"python{python.replace('.', '')}-template-launcher-base" in dockerfile.stage("template_launcher").image
    installs = [rest for kw, rest in dockerfile.final.instructions if kw == "RUN" and "venv" in rest]
    assert any("python${PYTHON_VERSION} -m venv /opt/venv" in r for r in installs)


def test_torch_matches_venv_and_cuda_runtime_base(dockerfile: Dockerfile):
    [venv_torch] = re.findall(r'"torch==([\d.]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    assert dockerfile.args["TORCH_VERSION"] == venv_torch
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-runtime-ubuntu\d\d\.\d\d", dockerfile.final.image), (
        "torch from PyPI for Linux is a CUDA 13.0 build: the base must be a CUDA 13.0 runtime")
    runs = [rest for kw, rest in dockerfile.final.instructions if kw == "RUN"]
    assert any("pip install torch==${TORCH_VERSION}" in r for r in runs)


def test_project_installed_then_pip_checked(dockerfile: Dockerfile):
    runs = [rest for kw, rest in dockerfile.final.instructions if kw == "RUN"]
    installs = [i for i, r in enumerate(runs) if 'pip install ".[gcp]"' in r]
    checks = [i for i, r in enumerate(runs) if re.search(r"\bpip check\b", r)]
    assert installs and checks and checks[-1] >= installs[-1]
    copied = {src for kw, rest in dockerfile.final.instructions if kw == "COPY" and "--from" not in rest
              for src in rest.split()[:-1]}
    tree = ast.parse((ROOT / "setup.py").read_text())
    [find] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "find_packages"]
    [include] = [ast.literal_eval(k.value) for k in find.keywords if k.arg == "include"]
    packages = {p.split(".")[0] for p in include}
    assert packages | {"setup.py", "README.md", "infra"} <= copied, "the image must hold what setup.py installs"


def test_every_base_image_is_pinned(dockerfile: Dockerfile):
    images = [s.image for s in dockerfile.stages]
    assert len(images) == 3
    for image in images:
        name, _, tag = image.rpartition(":") if "@sha256:" not in image else (image, "", "digest")
        assert name and tag and tag != "latest" and "$" not in image, f"{image} is not pinned"
    launcher = dockerfile.stage("template_launcher").image
    assert re.search(r":flex_templates_base_image_release_\d{8}_RC\d\d$|@sha256:[0-9a-f]{64}$", launcher), launcher

#!/usr/bin/env bash
# Create (or update) the project's virtualenv: the CPU build of torch first, so that the
# project's "torch>=2.1" is already satisfied and no CUDA build is pulled, then the project
# with its test extras. Usage: scripts/setup.sh [VENV_DIR]
set -euo pipefail
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e ".[dev]"

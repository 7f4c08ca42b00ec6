#!/usr/bin/env bash
# Create .venv and install saev-curate with its test extras. The CPU build of torch goes in first
# (constraints.txt pins it), so no command here ever resolves a multi-GB CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,offline-data]"

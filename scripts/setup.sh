#!/usr/bin/env bash
# Create .venv and install saev-curate with its test extras through scripts/install.sh (the Dockerfile's install
# path too): the CPU build of torch goes in first (constraints.txt pins it), so nothing resolves a multi-GB CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
./scripts/install.sh .venv/bin/python test,offline-data

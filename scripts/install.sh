#!/usr/bin/env bash
# The one way saev-curate is installed: scripts/setup.sh (into .venv) and the Dockerfile (into the image's python)
# both call this script, so the image installs exactly what the README's commands install.
#
#   scripts/install.sh PYTHON [EXTRAS]          e.g.  scripts/install.sh .venv/bin/python test,offline-data
#
# SAEV_TORCH=cpu (default): the CPU build of torch goes in first (constraints.txt pins the version; TORCH_INDEX_URL,
#   when set, is the index it comes from, e.g. https://download.pytorch.org/whl/cpu), so nothing ever resolves a
#   multi-GB CUDA torch.
# SAEV_TORCH=keep: keep the torch already installed (a CUDA PyTorch base image); the package only asks torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:?usage: scripts/install.sh PYTHON [EXTRAS]}"
TARGET="."
[ -n "${2:-}" ] && TARGET=".[$2]"
case "${SAEV_TORCH:-cpu}" in
  cpu)
    "$PYTHON" -m pip install -q -c constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
    "$PYTHON" -m pip install -q -c constraints.txt -e "$TARGET"
    ;;
  keep)
    "$PYTHON" -c 'import torch; print("keeping the installed torch", torch.__version__)'
    "$PYTHON" -m pip install -q -e "$TARGET"
    ;;
  *)
    echo "SAEV_TORCH must be 'cpu' or 'keep', not '${SAEV_TORCH}'" >&2
    exit 2
    ;;
esac

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
# SAEV_INSTALL=editable (default): torch, then the package editable with its dependencies (a developer's .venv).
# SAEV_INSTALL=deps: torch and the dependencies pyproject.toml lists (with EXTRAS), not the package: the image's
#   first layer, which needs only pyproject.toml, so a code edit never reinstalls torch.
# SAEV_INSTALL=package: the package itself, not editable, without dependencies (after deps: the image's second layer).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:?usage: scripts/install.sh PYTHON [EXTRAS]}"
EXTRAS="${2:-}"
TARGET="."
[ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
MODE="${SAEV_INSTALL:-editable}"
case "$MODE" in
  editable|deps|package) ;;
  *)
    echo "SAEV_INSTALL must be 'editable', 'deps' or 'package', not '${MODE}'" >&2
    exit 2
    ;;
esac
CONSTRAINTS=()
case "${SAEV_TORCH:-cpu}" in
  cpu)
    CONSTRAINTS=(-c constraints.txt)
    if [ "$MODE" != package ]; then
      "$PYTHON" -m pip install -q -c constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
    fi
    ;;
  keep)
    "$PYTHON" -c 'import torch; print("keeping the installed torch", torch.__version__)'
    ;;
  *)
    echo "SAEV_TORCH must be 'cpu' or 'keep', not '${SAEV_TORCH}'" >&2
    exit 2
    ;;
esac
case "$MODE" in
  editable)
    "$PYTHON" -m pip install -q "${CONSTRAINTS[@]}" -e "$TARGET"
    ;;
  deps)
    # the requirement lines of [project] dependencies and of each extra asked for, read with tomllib
    mapfile -t REQS < <("$PYTHON" - "$EXTRAS" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in filter(None, sys.argv[1].split(",")):
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
PY
)
    "$PYTHON" -m pip install -q "${CONSTRAINTS[@]}" "${REQS[@]}"
    ;;
  package)
    "$PYTHON" -m pip install -q --no-deps "$TARGET"
    ;;
esac

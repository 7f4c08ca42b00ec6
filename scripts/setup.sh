#!/usr/bin/env bash
# Create .venv and install saev-curate with its test extras through scripts/install.sh (the Dockerfile's install
# path too): the CPU build of torch goes in first (constraints.txt pins it), so nothing resolves a multi-GB CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
./scripts/install.sh .venv/bin/python test,offline-data
# the browser tests open the HTML pages in headless Chromium (Debian package `chromium`)
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup.sh: chromium is missing and cannot be installed here; the browser tests will fail (install chromium)" >&2
  fi
fi

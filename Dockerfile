# saev-curate for alignment CI: score datasets, run the recipes.
#
# CPU image (default):
#   docker build -t saev-curate .
# CUDA image, from a CUDA PyTorch base as TRL's own image is (its torch is kept):
#   docker build -t saev-curate:cuda --build-arg BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime \
#       --build-arg TORCH=keep .
# The package is installed by scripts/install.sh, the same script scripts/setup.sh runs (no second dependency list):
# dependencies in one layer before the source is copied, then the package (not editable); it runs as user saev.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# cpu: install the CPU build of torch first (version pinned by constraints.txt); keep: use the base image's torch
ARG TORCH=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# extras of the package to install (quantization: bitsandbytes, for QLoRA)
ARG EXTRAS=quantization

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/saev-curate
# 1. the dependencies (torch first), from pyproject.toml alone: a layer that code edits do not invalidate
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/
RUN SAEV_INSTALL=deps SAEV_TORCH="${TORCH}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" ./scripts/install.sh python "${EXTRAS}"

# 2. the package itself (not editable, no dependencies), and an unprivileged user that owns /work
COPY saev_curate/ saev_curate/
COPY recipes/ recipes/
RUN SAEV_INSTALL=package SAEV_TORCH="${TORCH}" ./scripts/install.sh python "${EXTRAS}" \
    && saev-curate --help > /dev/null \
    && groupadd --gid 10001 saev && useradd --create-home --uid 10001 --gid 10001 saev \
    && mkdir -p /work \
    && chown 10001:10001 /work

# mount the data, models and outputs here: docker run -v "$PWD:/work" ...
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["saev-curate"]
CMD ["--help"]

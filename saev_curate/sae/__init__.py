"""Sparse autoencoders: architectures (`model`, `sparse`), checkpoints (`saving`, `io`), `evaluate`, `training`.

Names load on first use (PEP 562): the CLI's `--help` reads configs without importing torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAE": "saev_curate.sae.model",
    "SAEConfig": "saev_curate.sae.model",
    "estimate_input_scale": "saev_curate.sae.model",
    "layer_from_hook_name": "saev_curate.sae.model",
    "inspect_checkpoint": "saev_curate.sae.io",
    "load_sae": "saev_curate.sae.io",
    "save_sae": "saev_curate.sae.saving",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

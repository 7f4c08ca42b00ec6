"""Training SAEs on a VLM's activations: ``config`` (the options, torch-free), ``trainer`` (the recipe, on any
activation source), ``activations`` (the stream of layer-L activations and its on-disk cache), ``pipeline`` (model +
dataset in, SAE out: what ``saev-curate train-sae`` runs). Names load on first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActivationCache": "saev_curate.sae.training.activations",
    "ActivationStream": "saev_curate.sae.training.activations",
    "StreamConfig": "saev_curate.sae.training.activations",
    "SaevTrainConfig": "saev_curate.sae.training.config",
    "TrainConfig": "saev_curate.sae.training.config",
    "train_sae": "saev_curate.sae.training.pipeline",
    "train_on_activations": "saev_curate.sae.training.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

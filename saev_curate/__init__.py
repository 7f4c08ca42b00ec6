"""saev-curate: curate multimodal alignment data with SAE-V cross-modal features.

Public names load lazily, so `import saev_curate` (and the CLI) stays cheap until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "SAE": "saev_curate.sae",
    "SAEConfig": "saev_curate.sae",
    "load_sae": "saev_curate.sae",
    "save_sae": "saev_curate.sae",
    "inspect_checkpoint": "saev_curate.sae",
    "estimate_input_scale": "saev_curate.sae",
    "SaevError": "saev_curate.errors",
    "CheckpointError": "saev_curate.errors",
    "InputError": "saev_curate.errors",
    # SAE-V training and evaluation
    "train_sae": "saev_curate.training",
    "SaevTrainConfig": "saev_curate.training",
    "TrainConfig": "saev_curate.sae.train",
    "train_on_activations": "saev_curate.sae.train",
    "ActivationStream": "saev_curate.stream",
    "ActivationCache": "saev_curate.stream",
    "StreamConfig": "saev_curate.stream",
    "evaluate_sae": "saev_curate.evaluate",
    "load_local_dataset": "saev_curate.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saev_curate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

# vlm: model loading, dataset rows -> inputs, residual-stream capture
_EXPORTS.update({
    name: "saev_curate.vlm"
    for name in (
        "load_vlm", "prepare_batch", "PreparedBatch", "batch_to_rows", "capture_activations", "Activations",
        "resolve_layer", "check_sae_fits", "build_tiny_vlm", "save_tiny_vlm",
    )
})
__all__ = sorted(_EXPORTS)

# scoring: cross-modal weights (stages 1-2), the SAE-V scorer (stage 3), selection and baselines
_EXPORTS.update({
    "CrossModalWeights": "saev_curate.crossmodal",
    "SaevScorer": "saev_curate.score",
    "score_activations": "saev_curate.score",
    "select": "saev_curate.selection",
    "selection_report": "saev_curate.selection",
    "ResponsePerplexityScorer": "saev_curate.baselines",
    "ClipScorer": "saev_curate.baselines",
})
__all__ = sorted(_EXPORTS)

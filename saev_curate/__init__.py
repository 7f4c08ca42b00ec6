"""saev-curate: curate multimodal alignment data with SAE-V cross-modal features.

Public names load lazily, so `import saev_curate` (and the CLI) stays cheap until a name is used.
Test support (tiny models) lives in `saev_curate.testing` and is not exported here.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from saev_curate.core.lazy import lazy_exports

try:
    __version__ = version("saev-curate")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# The public API, declared once: module -> names it defines.
_MODULES: dict[str, tuple[str, ...]] = {
    "saev_curate.core.errors": ("CheckpointError", "InputError", "SaevError"),
    # sparse autoencoders: architectures, checkpoints, training, evaluation
    "saev_curate.sae": ("SAE", "SAEConfig", "estimate_input_scale", "inspect_checkpoint", "load_sae", "save_sae"),
    "saev_curate.sae.training": ("ActivationCache", "ActivationStream", "SaevTrainConfig", "StreamConfig",
                                 "TrainConfig", "train_on_activations", "train_sae"),
    "saev_curate.sae.evaluate": ("evaluate_sae",),
    # vision-language models: loading, the layer rule, rows -> inputs, capture
    "saev_curate.vlm": ("Activations", "PreparedBatch", "batch_to_rows", "capture_activations", "check_sae_fits",
                        "load_vlm", "prepare_batch", "resolve_layer"),
    # curation: cross-modal weights (stages 1-2), scorers (stage 3 and baselines), selection, sharded scoring
    "saev_curate.curation.crossmodal": ("CrossModalWeights",),
    "saev_curate.curation.methods": ("METHODS", "RECOMMENDED", "Method", "default_by", "get_method"),
    "saev_curate.curation.config": ("ScoreConfig",),
    "saev_curate.curation.scorers": ("ClipScorer", "MethodScorer", "ResponsePerplexityScorer", "SaevScorer", "Scorer",
                                     "score_activations"),
    "saev_curate.curation.selection": ("select", "selection_report"),
    "saev_curate.curation.sharded": ("score_to_disk",),
    # which method works on the user's own model: planted defects, AUROC per method x kind, a page
    "saev_curate.jobs.check": ("check",),
    # look inside: one row's explanation as data (what the site's row page shows)
    "saev_curate.inspect.explain": ("RowExplanation", "explain"),
    # training integration: re-score with the policy during TRL training, a sampler the trainer obeys
    "saev_curate.integrations.trl": ("SaevRescoreCallback",),
    # data in and out
    "saev_curate.io.datasets": ("load_local_dataset", "save_dataset"),
}
# Moved to saev_curate.testing (test support, not public API); still reachable here for one release.
_DEPRECATED: dict[str, str] = {"build_tiny_vlm": "saev_curate.testing", "save_tiny_vlm": "saev_curate.testing"}

__all__, _exported = lazy_exports(__name__, _MODULES)


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        import warnings

        warnings.warn(f"saev_curate.{name} moved to {_DEPRECATED[name]}.{name} (test support, not public API)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_DEPRECATED[name]), name)
    return _exported(name)

"""Vision-language model side: loading, the layer rule, dataset rows -> inputs, residual-stream capture.

The names below load on first use (PEP 562), so that importing a light submodule (``saev_curate.vlm.rows.images``
for a default, as the CLI's ``--help`` does) does not import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("Activations", "capture_activations", "image_token_id", "special_token_ids"),
                    "saev_curate.vlm.capture"),
    **dict.fromkeys(("check_sae_fits", "decoder_layers", "resolve_layer", "resolve_sae_layer", "sae_decoder_layer",
                     "text_hidden_size"), "saev_curate.vlm.layers"),
    **dict.fromkeys(("load_processor", "load_vlm"), "saev_curate.vlm.load"),
    **dict.fromkeys(("PreparedBatch", "batch_to_rows", "load_image", "prepare_batch"), "saev_curate.vlm.rows"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saev_curate.vlm' has no attribute {name!r}")

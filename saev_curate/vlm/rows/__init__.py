"""Dataset rows -> model inputs: ``images`` (decoding), ``conversations`` (row formats, chat turns),
``batch`` (processor call, padding, truncation, per-row errors).

The names below load on first use (PEP 562): ``images`` and ``conversations`` need no torch, ``batch`` does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("PreparedBatch", "prepare_batch"), "saev_curate.vlm.rows.batch"),
    **dict.fromkeys(("MODES", "batch_to_rows", "row_to_conversation"), "saev_curate.vlm.rows.conversations"),
    **dict.fromkeys(("MAX_ASPECT_RATIO", "RowError", "load_image"), "saev_curate.vlm.rows.images"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saev_curate.vlm.rows' has no attribute {name!r}")

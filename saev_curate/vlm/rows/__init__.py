"""Dataset rows -> model inputs: ``images`` (decoding), ``conversations`` (row formats, chat turns),
``batch`` (processor call, padding, truncation, per-row errors).

Names load on first use (``saev_curate.core.lazy``): ``images`` and ``conversations`` need no torch, ``batch`` does.
"""

from saev_curate.core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "saev_curate.vlm.rows.batch": ("PreparedBatch", "prepare_batch"),
    "saev_curate.vlm.rows.conversations": ("MODES", "ROW_FORMATS", "batch_to_rows", "row_format",
                                           "row_to_conversation", "to_trl_preference", "to_trl_sft"),
    "saev_curate.vlm.rows.images": ("MAX_ASPECT_RATIO", "RowError", "load_image"),
})

"""Dataset rows -> model inputs: ``images`` (decoding), ``conversations`` (row formats, chat turns),
``batch`` (processor call, padding, truncation, per-row errors)."""

from saev_curate.vlm.rows.batch import PreparedBatch, prepare_batch
from saev_curate.vlm.rows.conversations import MODES, batch_to_rows, row_to_conversation
from saev_curate.vlm.rows.images import MAX_ASPECT_RATIO, RowError, load_image

__all__ = ["MAX_ASPECT_RATIO", "MODES", "PreparedBatch", "RowError", "batch_to_rows", "load_image", "prepare_batch",
           "row_to_conversation"]

"""Vision-language model side: loading, dataset rows -> inputs, residual-stream capture."""

from saev_curate.vlm.capture import (
    Activations,
    capture_activations,
    check_sae_fits,
    decoder_layers,
    image_token_id,
    resolve_layer,
    special_token_ids,
    text_hidden_size,
)
from saev_curate.vlm.formats import PreparedBatch, batch_to_rows, load_image, prepare_batch
from saev_curate.vlm.load import load_vlm
from saev_curate.vlm.tiny import FAMILIES as TINY_FAMILIES
from saev_curate.vlm.tiny import build_tiny_vlm, save_tiny_vlm

__all__ = [
    "Activations", "capture_activations", "check_sae_fits", "decoder_layers", "image_token_id", "resolve_layer",
    "special_token_ids", "text_hidden_size", "PreparedBatch", "batch_to_rows", "load_image", "prepare_batch",
    "load_vlm", "build_tiny_vlm", "save_tiny_vlm", "TINY_FAMILIES",
]

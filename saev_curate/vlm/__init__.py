"""Vision-language model side: loading, the layer rule, dataset rows -> inputs, residual-stream capture."""

from saev_curate.vlm.capture import Activations, capture_activations, image_token_id, special_token_ids
from saev_curate.vlm.layers import (
    check_sae_fits,
    decoder_layers,
    resolve_layer,
    resolve_sae_layer,
    sae_decoder_layer,
    text_hidden_size,
)
from saev_curate.vlm.load import load_processor, load_vlm
from saev_curate.vlm.rows import PreparedBatch, batch_to_rows, load_image, prepare_batch

__all__ = [
    "Activations", "PreparedBatch", "batch_to_rows", "capture_activations", "check_sae_fits", "decoder_layers",
    "image_token_id", "load_image", "load_processor", "load_vlm", "prepare_batch", "resolve_layer",
    "resolve_sae_layer", "sae_decoder_layer", "special_token_ids", "text_hidden_size",
]

"""Vision-language model side: loading, the layer rule, dataset rows -> inputs, residual-stream capture.

Names load on first use (``saev_curate.core.lazy``), so that importing a light submodule (``saev_curate.vlm.rows.images``
for a default, as the CLI's ``--help`` does) does not import torch and transformers.
"""

from saev_curate.core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "saev_curate.vlm.capture": ("Activations", "capture_activations", "image_token_id", "special_token_ids"),
    "saev_curate.vlm.geometry": ("PatchBox", "heatmap", "image_token_boxes", "overlay"),
    "saev_curate.vlm.layers": ("check_sae_fits", "decoder_layers", "resolve_layer", "resolve_sae_layer",
                               "sae_decoder_layer", "text_hidden_size"),
    "saev_curate.vlm.load": ("load_processor", "load_vlm"),
    "saev_curate.vlm.rows": ("PreparedBatch", "batch_to_rows", "load_image", "prepare_batch"),
})

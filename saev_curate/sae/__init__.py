"""Sparse autoencoders: architectures (`model`, `sparse`), checkpoints (`saving`, `io`), `evaluate`, `training`.

Names load on first use (`saev_curate.core.lazy`): the CLI's `--help` reads configs without importing torch."""

from saev_curate.core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "saev_curate.sae.model": ("SAE", "SAEConfig", "estimate_input_scale", "layer_from_hook_name"),
    "saev_curate.sae.io": ("inspect_checkpoint", "load_sae"),
    "saev_curate.sae.saving": ("save_sae",),
})

"""Sparse autoencoders: architectures (`model`, `sparse`), checkpoints (`saving`, `io`), `evaluate`, `training`."""

from saev_curate.sae.io import inspect_checkpoint, load_sae
from saev_curate.sae.model import SAE, SAEConfig, estimate_input_scale, layer_from_hook_name
from saev_curate.sae.saving import save_sae

__all__ = ["SAE", "SAEConfig", "estimate_input_scale", "inspect_checkpoint", "layer_from_hook_name", "load_sae",
           "save_sae"]

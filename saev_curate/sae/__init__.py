"""Sparse autoencoders: architectures (`model`) and checkpoint formats (`io`)."""

from saev_curate.sae.io import inspect_checkpoint, load_sae, save_sae
from saev_curate.sae.model import SAE, SAEConfig, estimate_input_scale, layer_from_hook_name

__all__ = ["SAE", "SAEConfig", "estimate_input_scale", "inspect_checkpoint", "layer_from_hook_name", "load_sae", "save_sae"]

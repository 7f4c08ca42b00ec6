"""Writing SAEs in the SAELens v6 layout (`cfg.json` + `sae_weights.safetensors` [+ `sparsity.safetensors`]).

Knows the file names and layout only; it never imports the SAE class (`sae.model` imports this module).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

CFG_FILE = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SAVED_FORMAT_VERSION = "6.0.0"  # the SAELens on-disk format version our files follow
# SAELens metadata keys that map onto SAEConfig fields; everything else round-trips through `extra`
META_FIELDS = ("model_name", "hook_name", "hook_layer", "context_size", "dataset_path")


def expected_tensor_names(cfg) -> list[str]:
    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    return names + ["threshold"] if cfg.architecture == "jumprelu" else names


def is_v6(version: Any) -> bool:
    match = re.match(r"^(\d+)", str(version or ""))
    return bool(match) and int(match.group(1)) >= 6


def save_sae(sae, path: str | Path, *, sparsity: torch.Tensor | None = None) -> Path:
    """Write `sae` in the SAELens v6 layout; an unfolded input scale is folded into the saved copy."""
    if sparsity is not None and tuple(sparsity.shape) != (sae.cfg.d_sae,):  # before anything is written
        raise ValueError(f"sparsity must have shape [{sae.cfg.d_sae}], got {tuple(sparsity.shape)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if sae.cfg.input_scale != 1.0:
        sae = sae.copy().fold_input_scale()
    cfg = sae.cfg
    tensors = {name: getattr(sae, name).detach().cpu().contiguous() for name in expected_tensor_names(cfg)}
    save_file(tensors, str(path / SAELENS_WEIGHTS))
    out: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    metadata = dict(cfg.extra)
    metadata.update({name: getattr(cfg, name) for name in META_FIELDS})
    if not is_v6(metadata.get("sae_lens_version")):
        metadata["sae_lens_version"] = SAVED_FORMAT_VERSION
    metadata.setdefault("sae_lens_training_version", None)
    out["metadata"] = metadata
    (path / CFG_FILE).write_text(json.dumps(out, indent=2, default=str))
    if sparsity is not None:
        save_file({"sparsity": sparsity.detach().float().cpu().contiguous()}, str(path / SPARSITY_FILE))
    else:  # an earlier save's densities belong to another SAE (and may not even fit this one's d_sae)
        (path / SPARSITY_FILE).unlink(missing_ok=True)
    return path

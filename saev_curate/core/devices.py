"""One place for dtypes and devices: parsing dtype names, a module's device, moving model inputs."""

from __future__ import annotations

from typing import Any

import torch

from saev_curate.core.errors import InputError

#: every dtype name accepted anywhere (configs, CLI flags, checkpoints); keys are lower case
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64,
}

#: input keys that never go to a forward pass
_NOT_MODEL_INPUTS = ("labels", "text_replacement_offsets")


def str_to_dtype(name: str | torch.dtype) -> torch.dtype:
    """Parse 'float32', 'bf16', 'torch.float16', ... (or pass a torch dtype through)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPES:
        raise InputError(f"dtype={name!r} is not understood; use one of float32, bfloat16, float16 "
                         f"(or {', '.join(sorted(k for k in DTYPES if k not in ('float32', 'bfloat16', 'float16')))})")
    return DTYPES[key]


def dtype_to_str(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_model_dtype(dtype, device: str | torch.device | None):
    """Model loading: ``None`` -> float32 on CPU (bf16/fp16 matmuls are slow there), the checkpoint's
    dtype ("auto") elsewhere; "auto" and torch dtypes pass through; names go through :func:`str_to_dtype`."""
    if dtype is None:
        dev = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        return torch.float32 if dev.startswith("cpu") else "auto"
    if dtype == "auto":
        return dtype
    return str_to_dtype(dtype)


def module_device(module) -> torch.device:
    """The device of a module's first parameter (``module.device`` when it has one; CPU without parameters)."""
    return module_device_dtype(module)[0]


def module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    dev = getattr(module, "device", None)
    try:
        p = next(module.parameters())
    except (AttributeError, StopIteration):
        return (dev if isinstance(dev, torch.device) else torch.device("cpu")), torch.float32
    return (dev if isinstance(dev, torch.device) else p.device), p.dtype


def to_model_inputs(inputs, model) -> dict[str, Any]:
    """Processor outputs ready for ``model(**inputs)``: tensors on the model's device, floating pixel
    tensors in its dtype, keys that are not model inputs (labels, text offsets) dropped."""
    device, dtype = module_device_dtype(model)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in _NOT_MODEL_INPUTS:
            continue
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if key.startswith("pixel_values") and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out

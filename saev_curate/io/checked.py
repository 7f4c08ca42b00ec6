"""Checked reading of the library's own files (cross-modal weights, activation caches, score shards,
training checkpoints), in the style of the SAE loader: every problem is one :class:`CheckpointError`
naming the file, what is wrong with it, and what to do."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from saev_curate.core.errors import CheckpointError

__all__ = ["check_tensors", "looks_like_pickle", "read_json_object", "read_safetensors", "strict_json"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format


def looks_like_pickle(path: Path) -> str | None:
    """'a torch.save (zip) file' / 'a pickle' when the file's first bytes say so, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(_ZIP_MAGIC):
        return "a torch.save (zip of pickles) file"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle"
    return None


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc}); the file is damaged: {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}; {fix}")
    return data


def read_safetensors(path: Path, *, fix: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a pickle under that name is named as one (and never unpickled)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {fix}")
    kind = looks_like_pickle(path)
    if kind:
        raise CheckpointError(f"{path}: looks like {kind}, not safetensors (saved with torch.save or pickle and "
                              "renamed?); pickles are never loaded: save it with safetensors.torch.save_file, or "
                              + fix)
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: one clear line
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); the file is "
                              f"truncated or damaged: {fix}") from None


def check_tensors(where: Path, tensors: dict[str, torch.Tensor], *, required: dict[str, int],
                  optional: dict[str, int] | None = None, same_first_dim: bool = False,
                  finite: tuple[str, ...] = (), fix: str) -> None:
    """Required tensors present with the given number of dimensions; optional ones, when present, too;
    with ``same_first_dim`` all share their first dimension; ``finite`` tensors hold no NaN/inf."""
    optional = optional or {}
    missing = [n for n in required if n not in tensors]
    if missing:
        raise CheckpointError(f"{where}: missing tensors {missing} (has {sorted(tensors)}); {fix}")
    first = None
    for name, ndim in {**required, **optional}.items():
        t = tensors.get(name)
        if t is None:
            continue
        if t.dim() != ndim:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {ndim} "
                                  f"dimension(s); {fix}")
        if same_first_dim:
            if first is None:
                first = (name, t.shape[0])
            elif t.shape[0] != first[1]:
                raise CheckpointError(f"{where}: tensor {name!r} has {t.shape[0]} rows but {first[0]!r} has "
                                      f"{first[1]}; {fix}")
        if name in finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name!r} holds NaN/inf values; {fix}")


def strict_json(x: Any, not_finite: Any = None) -> Any:
    """``x`` (dicts, lists, numbers) with every NaN or infinite float replaced by ``not_finite``: strict JSON has no
    NaN (lmms-eval writes ``"N/A"``; null elsewhere)."""
    if isinstance(x, dict):
        return {k: strict_json(v, not_finite) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v, not_finite) for v in x]
    return not_finite if isinstance(x, float) and not math.isfinite(x) else x

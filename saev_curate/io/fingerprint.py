"""Content fingerprints of what a result depends on (models, processors, SAEs, files), for cache keys,
resumable runs and the checks that weights were fitted with the SAE at hand."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["data_fingerprint", "model_identity", "module_fingerprint", "path_fingerprint", "processor_fingerprint", "sae_fingerprint",
           "source_fingerprint", "tensor_bytes"]


def _file_digest(path: Path, h, *, full_limit: int = 8 << 20, sample: int = 1 << 20) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            h.update(f.read())
            return
        for off in (0, size // 2, max(0, size - sample)):  # large weight files: sampled content
            f.seek(off)
            h.update(f.read(sample))


def source_fingerprint(*packages) -> str:
    """Content hash of packages' Python source (every ``*.py`` under each, by relative path; compiled files left
    out): the same on every clone of one commit, different once the code that made a cached result changes."""
    h = hashlib.sha256()
    for package in packages:
        root = Path(package.__file__).parent
        h.update(f"package:{root.name}".encode())
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def path_fingerprint(path: str | os.PathLike) -> str:
    """Content hash of a file or folder (files <= 8 MiB fully; larger ones by size and three 1 MiB
    samples: first, middle, last).  A non-local name (a hub id) hashes as its string."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        _file_digest(p, h)
    elif p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
            h.update(str(f.relative_to(p)).encode())
            _file_digest(f, h)
    else:
        h.update(f"name:{path}".encode())
    return h.hexdigest()[:32]


def module_fingerprint(module) -> str:
    """Content hash of a torch module's parameters and buffers (and its config when it has one)."""
    h = hashlib.sha256()
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        try:
            h.update(cfg.to_json_string(use_diff=False).encode())
        except TypeError:
            h.update(cfg.to_json_string().encode())
    state = module.state_dict()
    for name in sorted(state):
        h.update(name.encode())
        h.update(tensor_bytes(state[name]))
    return h.hexdigest()[:32]


def processor_fingerprint(processor) -> str:
    h = hashlib.sha256()
    tok = getattr(processor, "tokenizer", processor)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items()) if hasattr(tok, "get_vocab") else [],
                            default=str).encode())
    h.update(str(getattr(tok, "chat_template", None) or getattr(processor, "chat_template", None)).encode())
    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        if sub is not None and hasattr(sub, "to_json_string"):
            h.update(sub.to_json_string().encode())
    h.update(type(processor).__name__.encode())
    return h.hexdigest()[:32]


def sae_fingerprint(sae) -> str:
    """Content hash of an SAE's config shape and weights, taken at bfloat16 precision so that the same
    SAE loaded in float32 or cast to bfloat16 hashes alike."""
    h = hashlib.sha256()
    cfg = sae.cfg
    h.update(f"{cfg.d_in}/{cfg.d_sae}/{getattr(cfg, 'architecture', '')}/{getattr(cfg, 'k', '')}/"
             f"{getattr(cfg, 'input_scale', 1.0)}/{getattr(cfg, 'apply_b_dec_to_input', '')}".encode())
    try:
        state = sae.state_dict()
    except AttributeError:
        state = {}
    for name in sorted(state):
        t = state[name]
        if t.is_floating_point():
            t = t.to(torch.bfloat16)
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()[:32]


def tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return str(t.dtype).encode() + t.view(torch.uint8).numpy().tobytes()


def model_identity(model) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"name_or_path": getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None),
            "model_type": getattr(cfg, "model_type", None), "class": type(model).__name__}


def data_fingerprint(ds) -> str:
    """What identifies a dataset's content for resuming: its ``datasets`` fingerprint and length."""
    fp = getattr(ds, "_fingerprint", None)
    return f"{fp}:{len(ds)}"

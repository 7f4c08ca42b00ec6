"""Reading SAE checkpoints: SAELens v6, SAELens pre-6 flat configs, EleutherAI sparsify (writing: `saving`).

Only safetensors are ever read: a folder holding pickles is refused, never unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saev_curate.core.devices import dtype_to_str, str_to_dtype
from saev_curate.core.errors import CheckpointError
from saev_curate.sae.model import SAE, SAEConfig, layer_from_hook_name
from saev_curate.sae.saving import (
    CFG_FILE,
    META_FIELDS,
    SAELENS_WEIGHTS,
    SPARSITY_FILE,
    expected_tensor_names,
    is_v6,
)

SPARSIFY_WEIGHTS = "sae.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")


@dataclass
class CheckpointInfo:
    """What a checkpoint folder holds, read without loading its weights."""

    path: Path
    format: str  # "saelens-v6" | "saelens-legacy" | "sparsify"
    raw_config: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    has_sparsity: bool


# ------------------------------------------------------------------------------------------- load
def load_sae(
    path_or_repo: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    input_scale: float | None = None,
) -> SAE:
    """Load an SAE from a SAELens (v6 or pre-6) or sparsify folder, or a hub repo id already cached.

    `input_scale`: the factor the SAE expects raw activations to be multiplied by, for checkpoints
    saved with `normalize_activations="expected_average_only_in"` and the scale left unfolded.
    """
    info = inspect_checkpoint(path_or_repo)
    reader = {"saelens-v6": _cfg_saelens_v6, "saelens-legacy": _cfg_saelens_legacy, "sparsify": _cfg_sparsify}
    cfg, needs_scale, transform = reader[info.format](info)
    weights_file = info.path / (SPARSIFY_WEIGHTS if info.format == "sparsify" else SAELENS_WEIGHTS)
    tensors = transform(_read_safetensors(weights_file))

    if dtype is not None:
        cfg.dtype = dtype_to_str(str_to_dtype(dtype))
    elif info.format == "sparsify":  # sparsify stores no dtype in cfg.json: keep the weights' own
        cfg.dtype = dtype_to_str(tensors["W_enc"].dtype)
    _validate_tensors(tensors, cfg, weights_file)

    sae = SAE(cfg, device="meta")
    target = str_to_dtype(cfg.dtype)
    for name, value in tensors.items():
        setattr(sae, name, torch.nn.Parameter(value.to(dtype=target), requires_grad=True))
    sae.to(device or "cpu")

    if needs_scale and input_scale is None:
        raise CheckpointError(
            f"{info.path / CFG_FILE}: normalize_activations='expected_average_only_in' and the input scale was not "
            "folded into the weights, so the SAE cannot take raw activations as saved. Pass input_scale=<the factor "
            "used in training, sqrt(d_in) / mean activation norm> (estimate it with "
            "saev_curate.estimate_input_scale on the model's activations), or input_scale=1.0 if you know it was folded."
        )
    if input_scale is not None:
        sae.cfg.input_scale = float(input_scale)
        sae.fold_input_scale()
    if info.has_sparsity:
        sparsity = _read_safetensors(info.path / SPARSITY_FILE)
        value = sparsity.get("sparsity", next(iter(sparsity.values()), None))
        if value is None or tuple(value.shape) != (cfg.d_sae,):
            raise CheckpointError(
                f"{info.path / SPARSITY_FILE}: expected a tensor 'sparsity' of shape [{cfg.d_sae}], "
                f"found {[(k, tuple(v.shape)) for k, v in sparsity.items()]}"
            )
        bad = int((~torch.isfinite(value.float()) & ~torch.isneginf(value.float())).sum())
        if bad:
            raise CheckpointError(
                f"{info.path / SPARSITY_FILE}: holds {bad} NaN/+inf values (log10 feature densities must be finite "
                "or -inf); the file is corrupt: delete it (the SAE loads without it) or save the SAE again")
        sae.sparsity = value.float()
    return sae


def inspect_checkpoint(path_or_repo: str | Path) -> CheckpointInfo:
    """Find the folder, tell its format, and list its tensors without reading them."""
    path = _resolve_path(path_or_repo)
    cfg_file = path / CFG_FILE
    saelens, sparsify = path / SAELENS_WEIGHTS, path / SPARSIFY_WEIGHTS
    if not cfg_file.is_file():
        subdirs = sorted(p.name for p in path.iterdir() if (p / CFG_FILE).is_file()) if path.is_dir() else []
        if subdirs:
            raise CheckpointError(
                f"{path} holds several SAEs ({', '.join(subdirs[:8])}{', ...' if len(subdirs) > 8 else ''}); "
                "pass the folder of the one you want"
            )
        _refuse_pickles(path)
        raise CheckpointError(f"{cfg_file}: missing. An SAE folder needs cfg.json plus {SAELENS_WEIGHTS} (SAELens) "
                              f"or {SPARSIFY_WEIGHTS} (sparsify)")
    raw = _read_json(cfg_file)
    if saelens.is_file():
        fmt = "saelens-v6" if isinstance(raw.get("metadata"), dict) or is_v6(raw.get("sae_lens_version")) else "saelens-legacy"
        weights = saelens
    elif sparsify.is_file():
        fmt, weights = "sparsify", sparsify
    else:
        _refuse_pickles(path)
        raise CheckpointError(f"{path}: cfg.json found but no weights file; expected {SAELENS_WEIGHTS} (SAELens) "
                              f"or {SPARSIFY_WEIGHTS} (sparsify)")
    return CheckpointInfo(path, fmt, raw, _list_tensors(weights), (path / SPARSITY_FILE).is_file())


# ------------------------------------------------------------------------------------------- configs
def _cfg_saelens_v6(info: CheckpointInfo):
    raw = info.raw_config
    meta = dict(raw.get("metadata") or {})
    architecture = _require(raw, "architecture", info)
    if architecture not in ("standard", "topk", "jumprelu"):
        raise CheckpointError(f"{info.path / CFG_FILE}: architecture {architecture!r} is not supported; "
                              "saev-curate reads standard, topk and jumprelu SAEs")
    _check_reshape(raw, info)
    cfg = _make_config(
        info,
        d_in=_require(raw, "d_in", info),
        d_sae=_require(raw, "d_sae", info),
        architecture=architecture,
        k=raw.get("k") if architecture == "topk" else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        dtype=raw.get("dtype", "float32"),
        **{name: meta.pop(name, None) for name in META_FIELDS},
        extra=meta,
    )
    needs_scale = _needs_input_scale(raw.get("normalize_activations"), info)
    rescale = architecture == "topk" and bool(raw.get("rescale_acts_by_decoder_norm", False))
    return cfg, needs_scale, (lambda t: _fold_norms_into(t, cfg) if rescale else t)


def _cfg_saelens_legacy(info: CheckpointInfo):
    raw = info.raw_config
    if raw.get("hook_head_index", raw.get("hook_point_head_index")) is not None:
        raise CheckpointError(f"{info.path / CFG_FILE}: per-attention-head SAEs (hook_head_index set) are not "
                              "supported; saev-curate uses residual-stream SAEs")
    _check_reshape(raw, info)
    activation = raw.get("activation_fn_str", raw.get("activation_fn")) or "relu"
    architecture = raw.get("architecture", "standard")
    k = None
    if activation == "topk" or architecture == "topk":
        architecture = "topk"
        k = (raw.get("activation_fn_kwargs") or {}).get("k", raw.get("k"))
    elif architecture in ("standard", "jumprelu") and activation != "relu":
        raise CheckpointError(f"{info.path / CFG_FILE}: activation function {activation!r} is not supported "
                              "(expected relu or topk)")
    elif architecture not in ("standard", "jumprelu"):
        raise CheckpointError(f"{info.path / CFG_FILE}: architecture {architecture!r} is not supported; "
                              "saev-curate reads standard, topk and jumprelu SAEs")
    hook_name = raw.get("hook_name", raw.get("hook_point"))
    hook_layer = raw.get("hook_layer", raw.get("hook_point_layer"))
    consumed = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "hook_name",
                "hook_point", "hook_layer", "hook_point_layer", "model_name", "context_size", "dataset_path",
                "activation_fn_str", "activation_fn", "activation_fn_kwargs", "normalize_activations", "k"}
    cfg = _make_config(
        info,
        d_in=_require(raw, "d_in", info),
        d_sae=_require(raw, "d_sae", info),
        architecture=architecture,
        k=k,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        dtype=raw.get("dtype", "float32"),
        model_name=raw.get("model_name"),
        hook_name=hook_name,
        hook_layer=hook_layer,
        context_size=raw.get("context_size"),
        dataset_path=raw.get("dataset_path"),
        extra={key: value for key, value in raw.items() if key not in consumed},
    )
    needs_scale = _needs_input_scale(raw.get("normalize_activations"), info)
    use_ft_scale = bool(raw.get("finetuning_scaling_factor", False))

    def transform(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # SAELens 3.x scales feature activations by `finetuning_scaling_factor` before decoding:
        # the same as scaling the decoder rows, so fold it there.
        scale = tensors.pop("finetuning_scaling_factor", None)
        legacy = tensors.pop("scaling_factor", None)
        scale = scale if scale is not None else legacy
        if scale is not None and (use_ft_scale or not torch.all(scale == 1)):
            if not use_ft_scale:
                raise CheckpointError(f"{info.path / SAELENS_WEIGHTS}: holds a non-trivial scaling_factor but cfg.json "
                                      "says finetuning_scaling_factor=false; the checkpoint is inconsistent")
            tensors["W_dec"] = tensors["W_dec"] * scale.to(tensors["W_dec"].dtype)[:, None]
        if "log_threshold" in tensors and "threshold" not in tensors:
            tensors["threshold"] = tensors.pop("log_threshold").exp()
        return tensors

    return cfg, needs_scale, transform


def _cfg_sparsify(info: CheckpointInfo):
    raw = info.raw_config
    where = info.path / CFG_FILE
    if raw.get("activation", "topk") != "topk":
        raise CheckpointError(f"{where}: sparsify activation {raw.get('activation')!r} is not supported (only topk)")
    if raw.get("transcode"):
        raise CheckpointError(f"{where}: this is a sparsify transcoder (transcode=true), not an autoencoder")
    if raw.get("skip_connection"):
        raise CheckpointError(f"{where}: sparsify SAEs with a skip connection (W_skip) are not supported")
    d_in = _require(raw, "d_in", info)
    d_sae = raw.get("num_latents") or d_in * raw.get("expansion_factor", 32)
    parent_cfg = info.path.parent / "config.json"
    train_cfg = _read_json(parent_cfg) if parent_cfg.is_file() else {}
    hook_name = info.path.name
    cfg = _make_config(
        info,
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        k=raw.get("k", 32),
        apply_b_dec_to_input=True,  # sparsify subtracts b_dec before the encoder (unless transcoding)
        model_name=train_cfg.get("model"),
        hook_name=hook_name,
        hook_layer=layer_from_hook_name(hook_name),
        context_size=train_cfg.get("ctx_len"),
        dataset_path=train_cfg.get("dataset"),
        extra={"source_format": "sparsify", **{k: v for k, v in raw.items() if k not in ("d_in", "num_latents")}},
    )

    def transform(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if n not in tensors]
        if missing:
            raise CheckpointError(f"{info.path / SPARSIFY_WEIGHTS}: missing tensors {missing}; a sparsify SAE has "
                                  f"encoder.weight, encoder.bias, W_dec, b_dec (found {sorted(tensors)})")
        out = {"W_enc": tensors.pop("encoder.weight").T.contiguous(), "b_enc": tensors.pop("encoder.bias"),
               "W_dec": tensors.pop("W_dec"), "b_dec": tensors.pop("b_dec")}
        out.update(tensors)  # anything left is reported as unexpected by validation
        return out

    return cfg, False, transform


def _make_config(info: CheckpointInfo, **kwargs) -> SAEConfig:
    try:
        return SAEConfig(**kwargs)
    except (CheckpointError, ValueError) as exc:
        raise CheckpointError(f"{info.path / CFG_FILE}: {exc}") from None


def _needs_input_scale(mode: Any, info: CheckpointInfo) -> bool:
    if mode in (None, False, "none"):
        return False
    if mode in (True, "expected_average_only_in"):
        return True
    raise CheckpointError(f"{info.path / CFG_FILE}: normalize_activations={mode!r} is not supported "
                          "(saev-curate reads 'none' and 'expected_average_only_in')")


def _check_reshape(raw: dict[str, Any], info: CheckpointInfo) -> None:
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise CheckpointError(f"{info.path / CFG_FILE}: reshape_activations={raw['reshape_activations']!r} "
                              "(attention-output SAEs) is not supported")


def _fold_norms_into(tensors: dict[str, torch.Tensor], cfg: SAEConfig) -> dict[str, torch.Tensor]:
    """SAELens `rescale_acts_by_decoder_norm`: fold decoder norms so plain TopK gives the same codes."""
    norms = tensors["W_dec"].norm(dim=-1).clamp_min(1e-8)
    tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
    tensors["W_enc"] = tensors["W_enc"] * norms[None, :]
    tensors["b_enc"] = tensors["b_enc"] * norms
    cfg.extra["folded_decoder_norms"] = True
    return tensors


# ------------------------------------------------------------------------------------------- checks
def _validate_tensors(tensors: dict[str, torch.Tensor], cfg: SAEConfig, where: Path) -> None:
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in),
              "b_dec": (cfg.d_in,), "threshold": (cfg.d_sae,)}
    expected = expected_tensor_names(cfg)
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: tensors do not match a {cfg.architecture} SAE: missing {missing}, unexpected {unexpected} "
            f"(found {found}; expected {expected})"
        )
    for name in expected:
        shape = found[name]
        if shape != shapes[name]:
            hint = " (it looks transposed)" if shape[::-1] == shapes[name] else ""
            raise CheckpointError(
                f"{where}: tensor {name} has shape {list(shape)}, expected {list(shapes[name])} from cfg.json "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}){hint}"
            )
        bad = (~torch.isfinite(tensors[name].float())).sum().item()
        if bad:
            raise CheckpointError(f"{where}: tensor {name} holds {bad} NaN/inf values; the checkpoint is corrupt "
                                  "(a diverged training run?) and cannot be used")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _refuse_renamed_pickle(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _list_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    _refuse_renamed_pickle(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            out = {}
            for name in handle.keys():
                sl = handle.get_slice(name)
                out[name] = (tuple(sl.get_shape()), str(sl.get_dtype()))
            return out
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _refuse_renamed_pickle(path: Path) -> None:
    from saev_curate.io.checked import looks_like_pickle

    kind = looks_like_pickle(path)
    if kind:
        raise CheckpointError(f"{path}: looks like {kind}, not safetensors (saved with torch.save and renamed?); "
                              "pickles are never loaded: convert it with safetensors.torch.save_file(state_dict, "
                              "path) in a trusted environment")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _require(raw: dict[str, Any], key: str, info: CheckpointInfo) -> Any:
    if key not in raw:
        raise CheckpointError(f"{info.path / CFG_FILE}: missing required key {key!r}")
    return raw[key]


def _refuse_pickles(path: Path) -> None:
    candidates = [path] if path.is_file() else (sorted(path.iterdir()) if path.is_dir() else [])
    pickles = [p for p in candidates if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{pickles[0]}: a pickled checkpoint; saev-curate never unpickles files (loading a pickle can run "
            "arbitrary code). Convert it where you trust it: load it with torch.load, then save the tensors with "
            "safetensors.torch.save_file as sae_weights.safetensors next to a SAELens cfg.json"
        )


def _resolve_path(path_or_repo: str | Path) -> Path:
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES:
                _refuse_pickles(path)
            return path.parent
        return path
    text = str(path_or_repo)
    if _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        return _from_hub(text)
    raise CheckpointError(f"{path}: no such file or folder (expected an SAE folder with cfg.json)")


def _from_hub(text: str) -> Path:
    """`owner/name[/subfolder]` from the Hugging Face hub (its local cache when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download

    owner, name, *rest = text.split("/")
    sub = "/".join(rest)
    try:
        root = snapshot_download(f"{owner}/{name}", allow_patterns=[f"{sub}/*"] if sub else None)
    except Exception as exc:
        raise CheckpointError(
            f"{text}: not a local folder, and fetching it as a hub repo failed ({type(exc).__name__}: {exc}). "
            "Download it first (huggingface-cli download) or pass a local path"
        ) from None
    return Path(root) / sub if sub else Path(root)


def describe(info: CheckpointInfo, sae: SAE | None = None) -> str:
    """Human-readable summary for `saev-curate sae info`."""
    lines = [f"path:          {info.path}", f"format:        {info.format}"]
    if sae is not None:
        cfg = sae.cfg
        lines += [
            f"architecture:  {cfg.architecture}" + (f" (k={cfg.k})" if cfg.k else ""),
            f"d_in x d_sae:  {cfg.d_in} x {cfg.d_sae}  (expansion {cfg.d_sae / cfg.d_in:g}x, "
            f"{sum(p.numel() for p in sae.parameters()):,} parameters)",
            f"dtype:         {cfg.dtype}",
            f"b_dec on input: {cfg.apply_b_dec_to_input}",
            f"model:         {cfg.model_name}",
            f"hook:          {cfg.hook_name} (layer {cfg.hook_layer})",
            f"context size:  {cfg.context_size}",
            f"dataset:       {cfg.dataset_path}",
        ]
        norms = sae.W_dec.detach().float().norm(dim=-1)
        lines.append(f"decoder norms: min {norms.min():.4g}  median {norms.median():.4g}  max {norms.max():.4g}")
        if sae.sparsity is not None:
            dead = int((sae.sparsity < -10).sum())
            lines.append(f"sparsity:      log10 density median {sae.sparsity.median():.3g}; {dead} features below 1e-10")
        if cfg.extra:
            lines.append("metadata:      " + json.dumps(cfg.extra, default=str, sort_keys=True))
    lines.append("tensors:")
    for name, (shape, dtype) in info.tensors.items():
        lines.append(f"  {name:<24} {list(shape)} {dtype}")
    return "\n".join(lines)

"""The one layer rule: which decoder layer a layer argument, a hook name or an SAE's config means.

Every command and function resolves layers here: ``resolve_layer`` for an int (negative counts from the
end), ``"middle"`` (n_layers // 2, the paper's 16 of 32) or a hook name; ``sae_decoder_layer`` for the
layer an SAE's config names; ``resolve_sae_layer`` for "the layer to read for this SAE" (the SAE's own,
or an explicit one that must agree with it).
"""

from __future__ import annotations

import re

import torch

from saev_curate.core.errors import InputError

__all__ = ["check_sae_fits", "decoder_layers", "resolve_layer", "resolve_sae_layer", "sae_decoder_layer",
           "text_hidden_size"]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The language model's decoder layers (``model.get_decoder().layers``)."""
    dec = None
    if hasattr(model, "get_decoder"):
        try:
            dec = model.get_decoder()
        except Exception:
            dec = None
    layers = getattr(dec, "layers", None)
    if layers is None:
        for path in ("model.language_model", "model.text_model", "language_model", "model"):
            obj = model
            for part in path.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if obj is not None and isinstance(getattr(obj, "layers", None), torch.nn.ModuleList):
                layers = obj.layers
                break
    if layers is None:
        raise InputError(
            f"cannot find the decoder layers of {type(model).__name__}; expected model.get_decoder().layers "
            "(a Hugging Face causal or image-text-to-text model)"
        )
    return layers


def text_hidden_size(model) -> int:
    cfg = model.config
    tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else getattr(cfg, "text_config", cfg)
    d = getattr(tc, "hidden_size", None)
    if d is None:
        raise InputError(f"{type(model).__name__} config has no hidden_size for its text model")
    return int(d)


def context_length(model) -> int | None:
    """The text model's context (``max_position_embeddings``), or None when the config does not say."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else getattr(cfg, "text_config", cfg)
    n = getattr(tc, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


_LAYER_PATTERNS = [
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), -1),
    (re.compile(r"^(?:model\.)?(?:(?:language_model|text_model|decoder)\.)?(?:model\.)?layers\.(\d+)(?:\.output)?$"), 0),
    (re.compile(r"^(?:transformer\.)?h\.(\d+)$"), 0),
]


def resolve_layer(model, layer: int | str) -> int:
    """Decoder layer index for ``layer``: an int (negative counts from the end), ``"middle"``
    (n_layers // 2, the paper's 16 of 32) or a hook name.

    Hook names: TransformerLens/SAELens ``blocks.L.hook_resid_post`` (``hook_resid_pre`` is layer
    L-1's output), HF module paths ``model.layers.L``, ``model.language_model.layers.L``,
    ``model.text_model.layers.L``, ``language_model.model.layers.L`` and sparsify's ``layers.L``.
    """
    n = len(decoder_layers(model))
    orig = layer
    if isinstance(layer, str):
        s = layer.strip()
        if s == "middle":
            return n // 2
        if re.fullmatch(r"-?\d+", s):
            layer = int(s)
        else:
            for pat, shift in _LAYER_PATTERNS:
                m = pat.match(s)
                if m:
                    layer = int(m.group(1)) + shift
                    if layer < 0:
                        raise InputError(
                            f"layer={orig!r} is the residual stream before layer 0 (the embeddings), which is "
                            "not a decoder layer output; use blocks.0.hook_resid_post or later"
                        )
                    break
            else:
                raise InputError(
                    f"layer={orig!r} is not a residual-stream hook name; use an int, 'middle' or one of "
                    "'blocks.L.hook_resid_post', 'model.layers.L', 'model.language_model.layers.L', 'layers.L'"
                )
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InputError(f"layer={orig!r} must be an int or a hook name string")
    idx = layer + n if layer < 0 else layer
    if not 0 <= idx < n:
        raise InputError(
            f"layer={orig!r} is out of range: {type(model).__name__} has {n} decoder layers "
            f"(valid: 0..{n - 1} or -{n}..-1)"
        )
    return idx


def sae_decoder_layer(model, sae) -> int | None:
    """The decoder layer whose output ``sae`` reads, or None when its config names none.

    The hook name decides when there is one (it knows ``blocks.L.hook_resid_pre`` is layer L-1's
    output, while SAELens' ``hook_layer`` is L for both); ``hook_layer`` is the fallback.
    """
    cfg = getattr(sae, "cfg", None)
    name, number = getattr(cfg, "hook_name", None), getattr(cfg, "hook_layer", None)
    if name:
        try:
            return resolve_layer(model, name)
        except InputError:
            if number is None:
                raise
    return resolve_layer(model, number) if number is not None else None


def check_sae_fits(model, sae) -> None:
    """Raise :class:`InputError` unless ``sae.cfg.d_in`` equals the text model's hidden size (and the
    SAE's hook layer, if it names one, exists in the model)."""
    cfg = getattr(sae, "cfg", None)
    d_in = getattr(cfg, "d_in", None)
    if d_in is None:
        raise InputError(f"the SAE ({type(sae).__name__}) has no cfg.d_in; load it with saev_curate.load_sae")
    d = text_hidden_size(model)
    if int(d_in) != d:
        raise InputError(
            f"SAE d_in={d_in} does not match {type(model).__name__}'s text hidden size {d}; this SAE was trained "
            "on a different model — use an SAE trained on this model's residual stream (or train one)"
        )
    try:
        sae_decoder_layer(model, sae)
    except InputError as e:
        raise InputError(f"the SAE's hook ({getattr(cfg, 'hook_name', None) or getattr(cfg, 'hook_layer', None)!r}) "
                         f"does not fit this model: {e}") from None


def resolve_sae_layer(model, sae, layer: int | str | None = None, *, default: int | str | None = None) -> int:
    """The decoder layer to read for ``sae``: ``layer`` when given (it must be the SAE's own layer when
    the SAE names one), else the SAE's own hook layer, else ``default`` (e.g. "middle").

    Raises when the SAE does not fit the model, names a different layer than ``layer``, or nothing
    says which layer to read.
    """
    check_sae_fits(model, sae)
    cfg = sae.cfg
    sae_layer = sae_decoder_layer(model, sae)
    if layer is None:
        if sae_layer is not None:
            return sae_layer
        if default is not None:
            return resolve_layer(model, default)
        raise InputError("the SAE does not say which layer it reads (no hook_name/hook_layer in its config); "
                         "pass layer=")
    idx = resolve_layer(model, layer)
    if sae_layer is not None and sae_layer != idx:
        raise InputError(f"layer={layer!r} is decoder layer {idx}, but the SAE was trained on layer {sae_layer} "
                         f"({getattr(cfg, 'hook_name', None) or cfg.hook_layer}); pass layer={sae_layer} or layer=None")
    return idx

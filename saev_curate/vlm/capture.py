"""Residual stream after decoder layer L of a vision-language model, with image/text/padding masks.

The forward pass stops right after layer L: a forward hook on ``model.get_decoder().layers[L]``
stores the layer's output and raises; the exception is caught and the hook removed.  Nothing after
layer L (later layers, final norm, LM head) runs, and no KV cache is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from saev_curate.core.devices import to_model_inputs
from saev_curate.core.errors import InputError
from saev_curate.vlm.layers import decoder_layers, resolve_layer

__all__ = ["Activations", "capture_activations", "image_token_id", "special_token_ids"]


@dataclass
class Activations:
    resid: Tensor  # [B, T, d] residual stream after decoder layer L
    image_mask: Tensor  # [B, T] bool: image placeholder positions (not padding)
    text_mask: Tensor  # [B, T] bool: non-image, non-padding (optionally non-special) positions
    attention_mask: Tensor  # [B, T]
    image_index: Tensor  # [B, T] long: which image of its row each image token belongs to, -1 elsewhere
    input_ids: Tensor  # [B, T]
    layer: int = -1  # the resolved decoder layer index

    def __len__(self) -> int:
        return self.resid.shape[0]

    def image_tokens(self, row: int) -> Tensor:
        """``[n_image_tokens, d]`` activations of row ``row``'s image tokens."""
        return self.resid[row][self.image_mask[row]]

    def text_tokens(self, row: int) -> Tensor:
        """``[n_text_tokens, d]`` activations of row ``row``'s text tokens."""
        return self.resid[row][self.text_mask[row]]


class _StopForward(Exception):
    pass


def image_token_id(model) -> int:
    cfg = model.config
    for name in ("image_token_id", "image_token_index"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    raise InputError(
        f"{type(model).__name__} config has no image_token_id (nor image_token_index), so image positions "
        "cannot be found; set model.config.image_token_id to the id of the image placeholder token"
    )


def special_token_ids(model, processor=None) -> set[int]:
    """Ids of special tokens (BOS/EOS/PAD, image-boundary markers, chat-role and other added special
    tokens of ``processor``'s tokenizer), excluding the image placeholder itself."""
    ids: set[int] = set()
    cfgs = [model.config]
    tc = getattr(model.config, "text_config", None)
    if tc is not None:
        cfgs.append(tc)
    for cfg in cfgs:
        for key, v in cfg.to_dict().items() if hasattr(cfg, "to_dict") else []:
            if key in ("image_token_id", "image_token_index"):
                continue
            if (key.endswith("_token_id") or key.endswith("_token_index")) and isinstance(v, int):
                ids.add(v)
            elif key.endswith("_token_id") and isinstance(v, list):
                ids.update(x for x in v if isinstance(x, int))
    if processor is not None:
        tok = getattr(processor, "tokenizer", processor)
        ids.update(getattr(tok, "all_special_ids", []) or [])
        for tid, added in (getattr(tok, "added_tokens_decoder", {}) or {}).items():
            if getattr(added, "special", False):
                ids.add(int(tid))
    if _has_image_token(model):
        ids.discard(image_token_id(model))
    return ids


def _has_image_token(model) -> bool:
    try:
        image_token_id(model)
        return True
    except InputError:
        return False


def _first_tensor(output) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    hs = getattr(output, "hidden_states", None) or getattr(output, "last_hidden_state", None)
    if isinstance(hs, Tensor):
        return hs
    raise InputError(f"unexpected decoder layer output type {type(output).__name__}")


def _infer_counts(model, inputs, image_mask) -> list[list[int] | None]:
    """Per row, the number of image tokens of each image, inferred from the model inputs.

    Exact for Qwen2/2.5-VL (``image_grid_thw``) and for fixed-count families (LLaVA, Gemma 3,
    PaliGemma); ``None`` otherwise (then contiguous runs of image tokens are taken as images).
    """
    B = image_mask.shape[0]
    per_row = image_mask.sum(1).tolist()
    per_image: list[int] | None = None
    grid = inputs.get("image_grid_thw") if hasattr(inputs, "get") else None
    pv = inputs.get("pixel_values") if hasattr(inputs, "get") else None
    if grid is not None:
        vc = getattr(model.config, "vision_config", None)
        merge = getattr(vc, "spatial_merge_size", 2) or 2
        per_image = [int(x) for x in (grid.prod(-1) // (merge * merge)).tolist()]
    elif (
        isinstance(pv, Tensor)
        and pv.dim() == 4
        and "image_sizes" not in inputs
        and "pixel_attention_mask" not in inputs
        and pv.shape[0] > 0
    ):
        total = sum(per_row)
        if total % pv.shape[0] == 0:
            per_image = [total // pv.shape[0]] * pv.shape[0]
    if per_image is None:
        return [None] * B
    out: list[list[int] | None] = []
    it = iter(per_image)
    for n in per_row:
        row, acc = [], 0
        while acc < n:
            c = next(it, None)
            if c is None:
                return [None] * B
            row.append(c)
            acc += c
        if acc != n:
            return [None] * B
        out.append(row)
    return out


def _image_index(image_mask: Tensor, counts: list[list[int] | None]) -> Tensor:
    B, T = image_mask.shape
    idx = torch.full((B, T), -1, dtype=torch.long, device=image_mask.device)
    for b in range(B):
        pos = torch.nonzero(image_mask[b], as_tuple=False).flatten()
        if len(pos) == 0:
            continue
        c = counts[b] if b < len(counts) else None
        if c is not None and sum(c) == len(pos) and all(x > 0 for x in c):
            lab = torch.repeat_interleave(torch.arange(len(c), device=pos.device), torch.tensor(c, device=pos.device))
        else:  # contiguous runs of image tokens
            starts = torch.ones(len(pos), dtype=torch.long, device=pos.device)
            starts[1:] = (pos[1:] != pos[:-1] + 1).long()
            lab = torch.cumsum(starts, 0) - 1
        idx[b, pos] = lab
    return idx


def capture_activations(
    model,
    inputs,
    layer: int | str,
    *,
    exclude_special_tokens: bool | Iterable[int] = False,
    processor=None,
    image_token_counts: list[list[int]] | None = None,
) -> Activations:
    """Run ``model`` up to and including decoder layer ``layer`` and return its output with masks.

    ``inputs`` is a processor output (``BatchFeature``/dict) or a :class:`PreparedBatch` (then the
    per-image token counts it carries make ``image_index`` exact for every family).  Tensors are
    moved to the model's device and pixel tensors cast to its dtype.

    ``exclude_special_tokens``: ``True`` removes BOS/EOS/PAD, image-boundary markers and (with
    ``processor``) every special token of its tokenizer from ``text_mask``; or pass the ids.
    The model is put in eval mode for the call (and restored), and gradients are not tracked.
    """
    from saev_curate.vlm.rows import PreparedBatch

    if isinstance(inputs, PreparedBatch):
        if inputs.inputs is None:
            raise InputError("the PreparedBatch has no rows (every row had an error); see its row_errors")
        if image_token_counts is None:
            image_token_counts = inputs.image_token_counts
        inputs = inputs.inputs
    if not hasattr(inputs, "get") or inputs.get("input_ids") is None:
        raise InputError("capture_activations needs processor outputs with 'input_ids' (use prepare_batch)")
    L = resolve_layer(model, layer)
    img_id = image_token_id(model)
    layers = decoder_layers(model)
    fwd = to_model_inputs(inputs, model)
    input_ids = fwd["input_ids"]
    attention_mask = fwd.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)

    store: dict[str, Tensor] = {}

    def hook(_module, _args, output):
        store["resid"] = _first_tensor(output)
        raise _StopForward

    handle = layers[L].register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            try:
                model(**fwd, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
        if was_training:
            model.train()
    if "resid" not in store:
        raise InputError(
            f"decoder layer {L} of {type(model).__name__} never ran during the forward pass; the model's "
            "forward does not go through model.get_decoder().layers"
        )
    resid = store["resid"]
    am_bool = attention_mask.bool()
    image_mask = (input_ids == img_id) & am_bool
    text_mask = am_bool & ~image_mask
    if exclude_special_tokens is not False and exclude_special_tokens is not None:
        if exclude_special_tokens is True:
            special = special_token_ids(model, processor)
        else:
            special = {int(x) for x in exclude_special_tokens}
        if special:
            sp = torch.tensor(sorted(special), device=input_ids.device, dtype=input_ids.dtype)
            text_mask &= ~torch.isin(input_ids, sp)
    n_per_row = image_mask.sum(1).tolist()
    counts: list = list(image_token_counts) if image_token_counts is not None else []
    if len(counts) != len(n_per_row) or any(
        c is None or sum(c) != n for c, n in zip(counts, n_per_row)
    ):  # counts missing or not matching these inputs: infer per row from the inputs instead
        inferred = _infer_counts(model, fwd, image_mask)
        counts = [
            c if (i < len(counts) and c is not None and sum(c) == n_per_row[i]) else inferred[i]
            for i, c in enumerate(counts + [None] * (len(n_per_row) - len(counts)))
        ][: len(n_per_row)]
    return Activations(
        resid=resid,
        image_mask=image_mask,
        text_mask=text_mask,
        attention_mask=attention_mask,
        image_index=_image_index(image_mask, counts),
        input_ids=input_ids,
        layer=L,
    )

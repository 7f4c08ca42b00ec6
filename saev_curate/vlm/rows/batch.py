"""Rows -> padded processor inputs (:func:`prepare_batch`), with per-row errors and image-safe truncation.

Truncation (``max_length``) never cuts inside an image's tokens: text tokens are dropped from the
end of the sequence while every token of every image block (placeholder tokens and the markers
the processor puts around them) is kept; a row whose image blocks alone exceed ``max_length`` is
an error for that row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saev_curate.core.errors import InputError
from saev_curate.vlm.rows.conversations import MODES, batch_to_rows, render, row_to_conversation
from saev_curate.vlm.rows.images import RowError, load_image


@dataclass
class PreparedBatch:
    """Processor output for the rows that could be prepared, plus per-row bookkeeping."""

    inputs: Any  # transformers.BatchFeature | None
    row_errors: list[str | None]
    kept: list[int]
    #: for each kept row, the number of image placeholder tokens of each of its images, in order
    image_token_counts: list[list[int]] = field(default_factory=list)
    #: for each kept row, how many text tokens truncation removed (0 when none)
    truncated_tokens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kept)

    @property
    def errors(self) -> dict[int, str]:
        """``{row index: error}`` for the rows that could not be prepared."""
        return {i: e for i, e in enumerate(self.row_errors) if e is not None}


def _image_token_str(processor) -> str | None:
    tok = getattr(processor.tokenizer, "image_token", None)
    if isinstance(tok, str) and tok:
        return tok
    tok = getattr(processor, "image_token", None)
    return tok if isinstance(tok, str) else None


def _call_processor(processor, texts, images, padding_side):
    kwargs = dict(text=texts, padding=True, return_tensors="pt", return_text_replacement_offsets=True)
    if images is not None:
        kwargs["images"] = images
    tok = processor.tokenizer
    old = tok.padding_side
    if padding_side is not None:
        tok.padding_side = padding_side
    try:
        try:
            out = processor(**kwargs)
        except (TypeError, ValueError) as e:
            if "return_text_replacement_offsets" not in str(e):
                raise
            kwargs.pop("return_text_replacement_offsets")  # older/custom processors: no per-image counts
            out = processor(**kwargs)
    finally:
        tok.padding_side = old
    out.pop("labels", None)  # PaliGemma adds labels; capture/scoring never wants a loss
    return out


def prepare_batch(
    processor,
    rows: list[dict],
    *,
    mode: str = "prompt",
    max_length: int | None = None,
    on_error: str = "raise",
    padding_side: str | None = None,
    require_images: bool = True,
    max_context: int | None = None,
    max_image_pixels: int | None = None,
) -> PreparedBatch:
    """Turn dataset rows into one padded processor batch.

    ``on_error="raise"`` raises :class:`InputError` naming the first bad row; ``"record"`` puts the
    reason in ``row_errors[i]`` and keeps going with the other rows (``kept`` lists the rows
    present in ``inputs``).  ``padding_side`` overrides the tokenizer's (``"left"``/``"right"``).
    ``require_images=False`` accepts rows without any image (text-only).  ``max_context`` (the model's
    context length, see :func:`saev_curate.vlm.layers.context_length`) makes a row longer than it an
    error for that row (unless ``max_length`` truncates it to fit).  ``max_image_pixels`` overrides
    the pixel limit per image (:func:`~saev_curate.vlm.rows.images.max_image_pixels`).
    """
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    if on_error not in ("raise", "record"):
        raise InputError(f"on_error={on_error!r}; use 'raise' or 'record'")
    if padding_side not in (None, "left", "right"):
        raise InputError(f"padding_side={padding_side!r}; use 'left', 'right' or None (the tokenizer's)")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise InputError(f"max_length={max_length!r} must be a positive integer or None")
    if isinstance(rows, Mapping):  # a datasets batch (dict of columns, or datasets' LazyBatch)
        rows = batch_to_rows(rows)
    rows = list(rows)
    n = len(rows)
    errors: list[str | None] = [None] * n

    def fail(i: int, reason: str):
        if on_error == "raise":
            raise InputError(f"row {i}: {reason}")
        errors[i] = reason  # row_errors[i] already names the row

    texts: dict[int, str] = {}
    images: dict[int, list] = {}
    for i, row in enumerate(rows):
        try:
            try:
                msgs, refs, gen = row_to_conversation(row, mode)
            except RowError as e:
                if (require_images and isinstance(row, Mapping) and "messages" not in row
                        and not any(c in row for c in IMAGE_COLUMNS)):
                    raise RowError(f"{e}; and {_no_image_reason(row, name_columns=False)}") from None
                raise
            if require_images and not refs:
                raise RowError(_no_image_reason(row))
            loaded = []
            for j, ref in enumerate(refs):
                try:
                    loaded.append(load_image(ref, max_image_pixels))
                except RowError as e:
                    raise RowError(f"image {j}: {e}") from None
            texts[i] = render(processor, msgs, gen)
            images[i] = loaded
        except RowError as e:
            fail(i, str(e))

    good = [i for i in range(n) if errors[i] is None]

    def run(idx):
        any_images = any(images[i] for i in idx)
        imgs = [images[i] for i in idx] if any_images else None
        return _call_processor(processor, [texts[i] for i in idx], imgs, padding_side)

    def run_with_fallback(idx):
        """Process rows ``idx`` together; on failure find the rows the processor refuses."""
        if not idx:
            return None, idx
        try:
            return run(idx), idx
        except Exception as batch_exc:
            if len(idx) == 1:
                fail(idx[0], f"the processor rejected the row: {type(batch_exc).__name__}: {batch_exc}")
                return None, []
            bad = []
            for i in idx:
                try:
                    run([i])
                except Exception as e:
                    bad.append(i)
                    fail(i, f"the processor rejected the row: {type(e).__name__}: {e}")
            if not bad:
                raise InputError(
                    f"the processor rejected rows {idx} together although each works alone "
                    f"({type(batch_exc).__name__}: {batch_exc}); use a smaller batch size"
                ) from batch_exc
            idx = [i for i in idx if i not in bad]
            return (run(idx) if idx else None), idx

    out, good = run_with_fallback(good)
    if out is None:
        return PreparedBatch(None, errors, [], [], [])
    offsets = out.pop("text_replacement_offsets", None)
    truncated = [0] * len(good)
    if max_length is not None:
        plans = _plan_truncation(processor, out, [texts[i] for i in good], offsets, max_length)
        refused = [(i, p) for i, p in zip(good, plans) if isinstance(p, str)]
        for i, reason in refused:
            fail(i, reason)
        if refused:  # process the remaining rows again so pixel tensors match the rows
            out, good = run_with_fallback([i for i in good if errors[i] is None])
            if out is None:
                return PreparedBatch(None, errors, [], [], [])
            offsets = out.pop("text_replacement_offsets", None)
            plans = _plan_truncation(processor, out, [texts[i] for i in good], offsets, max_length)
        truncated = _apply_truncation(processor, out, plans, padding_side)

    if max_context is not None and (max_length is None or max_length > max_context):
        too_long = _over_context(out, good, max_context, max_length)
        for i, reason in too_long.items():
            fail(i, reason)
        if too_long:
            out, good = run_with_fallback([i for i in good if errors[i] is None])
            if out is None:
                return PreparedBatch(None, errors, [], [], [])
            offsets = out.pop("text_replacement_offsets", None)
            if max_length is not None:
                truncated = _apply_truncation(processor, out, _plan_truncation(
                    processor, out, [texts[i] for i in good], offsets, max_length), padding_side)
            else:
                truncated = [0] * len(good)

    img_tok = _image_token_str(processor)
    counts: list[list[int]] = []
    for k in range(len(good)):
        row_off = offsets[k] if offsets is not None else []
        counts.append([r["replacement"].count(img_tok) if img_tok else 0 for r in row_off if r["type"] == "image"])
    return PreparedBatch(out, errors, good, counts, truncated)


IMAGE_COLUMNS = ("images", "image")


def _no_image_reason(row, name_columns: bool = True) -> str:
    """Why a row has no image and how to fix it; ``name_columns=False`` where the message already names them."""
    col = next((c for c in IMAGE_COLUMNS if c in row), None)
    if col is not None:
        return (f"the image is missing (column {col!r} is {row[col]!r:.80}); fix the row or drop it "
                "(ds.filter(lambda r: r[" + repr(col) + "] is not None))")
    cols = sorted(row) if isinstance(row, Mapping) else []
    guess = next((c for c in cols if any(w in c.lower() for w in ("img", "image", "picture", "photo", "pixel"))),
                 None)
    hint = (f"; rename it: ds.rename_column({guess!r}, 'image')" if guess else "")
    return (f"the row has no image: images are read from a column 'images' (a list) or 'image', or from "
            f"image parts of 'messages'{f'; this row has columns {cols}' if name_columns else ''}{hint}")


def _over_context(out, good: list[int], max_context: int, max_length: int | None) -> dict[int, str]:
    """Rows (by dataset-batch index) whose sequence is longer than the model's context."""
    ids = out["input_ids"]
    am = out.get("attention_mask")
    lengths = (am.sum(-1) if am is not None else torch.full((ids.shape[0],), ids.shape[1])).tolist()
    return {i: (f"the row has {int(n)} tokens, more than the model's context of {max_context} "
                f"(max_position_embeddings); pass --max-length {max_context} (max_length={max_context}) to "
                "truncate its text, or drop the row")
            for i, n in zip(good, lengths) if int(n) > max_context}


def _expanded_text(original: str, row_offsets) -> str:
    out, last = [], 0
    for r in row_offsets:
        s, e = r["span"]
        out.append(original[last:s])
        out.append(r["replacement"])
        last = e
    out.append(original[last:])
    return "".join(out)


def _protected_positions(processor, ids: list[int], text_expanded: str, row_offsets) -> np.ndarray:
    """Mark the tokens of every image block (placeholders + the processor's markers around them)."""
    enc = processor.tokenizer(text_expanded, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(ids):
        raise RowError("cannot map its tokens to image blocks for truncation (the tokenizer round trip differs); "
                        "raise max_length so that no truncation is needed")
    spans = [r["new_span"] for r in row_offsets if r["type"] == "image"]
    prot = np.zeros(len(ids), dtype=bool)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(a < e and b > s for s, e in spans):
            prot[t] = True
    return prot


def _plan_truncation(processor, out, texts, offsets, max_length):
    """Per row: ``None`` (fits), a LongTensor of positions to keep, or an error string."""
    ids = out["input_ids"]
    am = out.get("attention_mask")
    am = torch.ones_like(ids) if am is None else am
    plans = []
    for k in range(ids.shape[0]):
        real = torch.nonzero(am[k], as_tuple=False).flatten()
        if len(real) <= max_length:
            plans.append(None)
            continue
        row_ids = ids[k, real].tolist()
        try:
            if offsets is None:
                raise RowError("the processor does not report where image blocks are; raise max_length")
            prot = _protected_positions(processor, row_ids, _expanded_text(texts[k], offsets[k]), offsets[k])
        except RowError as e:
            plans.append(f"{e} (it has {len(real)} tokens, max_length={max_length})")
            continue
        n_prot = int(prot.sum())
        if n_prot > max_length:
            plans.append(
                f"its image blocks alone take {n_prot} tokens, more than max_length={max_length}; truncation never "
                f"cuts an image, so raise max_length to more than {n_prot} or use fewer/smaller images"
            )
            continue
        text_pos = np.nonzero(~prot)[0]
        keep = prot.copy()
        keep[text_pos[: max_length - n_prot]] = True  # drop text tokens from the end
        plans.append(real[torch.from_numpy(np.nonzero(keep)[0])])
    return plans


def _apply_truncation(processor, out, plans, padding_side) -> list[int]:
    ids = out["input_ids"]
    B, T = ids.shape
    if all(p is None for p in plans):
        return [0] * B
    am = out.get("attention_mask")
    am = torch.ones_like(ids) if am is None else am
    keep_idx = [torch.nonzero(am[k], as_tuple=False).flatten() if p is None else p for k, p in enumerate(plans)]
    truncated = [int(am[k].sum()) - len(keep_idx[k]) for k in range(B)]
    side = padding_side or processor.tokenizer.padding_side
    newT = max(len(x) for x in keep_idx)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    for key in [k for k, v in out.items() if isinstance(v, torch.Tensor) and tuple(v.shape[:2]) == (B, T)]:
        v = out[key]
        new = torch.full((B, newT, *v.shape[2:]), pad_id if key == "input_ids" else 0, dtype=v.dtype)
        for r, idx in enumerate(keep_idx):
            L = len(idx)
            if side == "left":
                new[r, newT - L:] = v[r, idx]
            else:
                new[r, :L] = v[r, idx]
        out[key] = new
    return truncated

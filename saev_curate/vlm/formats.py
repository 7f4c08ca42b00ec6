"""Dataset rows -> processor inputs, for every row format the library accepts.

Accepted rows (no reshaping needed):

* TRL preference: ``prompt``, ``chosen``, ``rejected`` (strings or conversational messages) with
  ``images`` (list) or ``image``.
* TRL SFT: ``messages`` (conversational, ``{"type": "image"}`` parts) with ``images``; or
  ``prompt`` / ``completion``.
* Align-Anything text-image-to-text: ``question``, ``image``, ``response_1``, ``response_2``,
  ``overall_response`` (1 or 2: the preferred response).
* Interleaved documents (OBELICS style): ``texts`` and ``images`` lists of equal length, one of
  each pair null; rendered as one user turn.

Images may be PIL images, ``datasets.Image`` dicts (``bytes`` or ``path``), file paths, raw bytes or
numpy arrays; every image is converted to RGB (alpha composited on white, 16-bit scaled, EXIF
orientation applied, extreme aspect ratios padded to at most 50:1).

``mode`` chooses the text the model sees: ``"prompt"`` (image + prompt only, as in the SAE-V paper,
ending with the generation prompt), ``"chosen"`` (prompt + preferred response), ``"rejected"``
(prompt + the other response) or ``"full"`` (the whole conversation; for preference rows the
chosen one).  Interleaved documents have no responses and render the same in every mode.

Truncation (``max_length``) never cuts inside an image's tokens: text tokens are dropped from the
end of the sequence while every token of every image block (placeholder tokens and the markers
the processor puts around them) is kept; a row whose image blocks alone exceed ``max_length`` is
an error for that row.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saev_curate.errors import InputError

MODES = ("prompt", "chosen", "rejected", "full")
MAX_ASPECT_RATIO = 50.0

__all__ = ["PreparedBatch", "prepare_batch", "batch_to_rows", "load_image", "row_to_conversation", "MODES"]


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


class _RowError(Exception):
    """A problem with one row; becomes ``row_errors[i]`` or an InputError naming the row."""


def batch_to_rows(batch: dict[str, list]) -> list[dict]:
    """Turn a ``datasets`` batched dict of lists into a list of row dicts."""
    if not isinstance(batch, Mapping):
        raise InputError(f"batch_to_rows expects a dict of column lists (a datasets batch), got {type(batch).__name__}")
    if not len(batch):
        return []
    lengths = {k: len(batch[k]) for k in batch.keys()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"batch columns have different lengths {lengths}; pass a datasets batch (batched=True)")
    n = next(iter(lengths.values()))
    cols = {k: batch[k] for k in batch.keys()}
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Images


def _to_rgb(img):
    from PIL import Image, ImageOps

    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not lose the image
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w == 0 or h == 0:
        raise _RowError(f"image has zero size {w}x{h}")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        # Letterbox extreme strips (some processors refuse aspect ratios above 200).
        nw, nh = (w, int(np.ceil(w / MAX_ASPECT_RATIO))) if w > h else (int(np.ceil(h / MAX_ASPECT_RATIO)), h)
        canvas = Image.new("RGB", (nw, nh), (255, 255, 255))
        canvas.paste(img, ((nw - w) // 2, (nh - h) // 2))
        img = canvas
    return img


def load_image(obj):
    """Load one image from any accepted form and return an RGB ``PIL.Image``.

    Raises ``_RowError`` (caught by :func:`prepare_batch`) with a readable reason.
    """
    from PIL import Image, UnidentifiedImageError

    if obj is None:
        raise _RowError("image is missing (None)")
    try:
        if isinstance(obj, Image.Image):
            obj.load()
            return _to_rgb(obj)
        if isinstance(obj, dict):
            if obj.get("bytes") is not None:
                return load_image(bytes(obj["bytes"]))
            if obj.get("path"):
                return load_image(obj["path"])
            raise _RowError("image dict has neither 'bytes' nor 'path' (a missing datasets.Image value)")
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if len(obj) == 0:
                raise _RowError("image bytes are empty")
            with Image.open(io.BytesIO(bytes(obj))) as im:
                im.load()
                return _to_rgb(im)
        if isinstance(obj, (str, os.PathLike)):
            s = os.fspath(obj)
            if s.startswith(("http://", "https://")):
                from transformers.image_utils import load_image as hf_load_image

                return _to_rgb(hf_load_image(s))
            if not os.path.exists(s):
                raise _RowError(f"image file not found: {s!r}")
            with Image.open(s) as im:
                im.load()
                return _to_rgb(im)
        if isinstance(obj, np.ndarray):
            arr = obj
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.dtype != np.uint8:
                arr = arr.astype(np.float64)
                if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
                    arr = arr * 255.0
                arr = np.clip(arr, 0, 255).round().astype(np.uint8)
            return _to_rgb(Image.fromarray(arr))
    except _RowError:
        raise
    except UnidentifiedImageError:
        raise _RowError("image data is not a readable image (corrupt or unsupported format)") from None
    except (OSError, ValueError, SyntaxError, TypeError) as e:
        raise _RowError(f"image could not be decoded ({type(e).__name__}: {e}); the file may be truncated or corrupt") from None
    raise _RowError(
        f"unsupported image type {type(obj).__name__}; pass a PIL image, a datasets.Image dict, a file path, "
        "bytes or a numpy array"
    )


# ----------------------------------------------------------------------------------------------
# Rows -> conversations


def _placeholders(processor) -> list[str]:
    out = []
    for name in ("image_token", "boi_token"):
        tok = getattr(processor, name, None)
        if isinstance(tok, str) and tok:
            out.append(tok)
    return out or ["<image>"]


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _norm_content(content, where: str) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, (list, tuple)):
        raise _RowError(f"{where}: message content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for p in content:
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
            continue
        if not isinstance(p, dict) or "type" not in p:
            raise _RowError(f"{where}: content part {p!r:.80} has no 'type'")
        if p["type"] == "text":
            parts.append({"type": "text", "text": p.get("text") or ""})
        elif p["type"] in ("image", "image_url"):
            part = {"type": "image"}
            inline = p.get("image", p.get("url", p.get("path")))
            if p["type"] == "image_url" and inline is None:
                url = p.get("image_url")
                inline = url.get("url") if isinstance(url, dict) else url
            if inline is not None:
                part["_inline"] = inline
            parts.append(part)
        else:
            # datasets stores missing struct fields as None: {"type": "text", "text": None, "image": None}
            raise _RowError(f"{where}: unsupported content part type {p['type']!r} (only text and image)")
    return parts


def _norm_messages(msgs, where: str) -> list[dict]:
    if isinstance(msgs, dict):
        msgs = [msgs]
    if not isinstance(msgs, (list, tuple)):
        raise _RowError(f"{where}: expected a list of messages, got {type(msgs).__name__}")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m:
            raise _RowError(f"{where}[{j}]: a message must be a dict with 'role' and 'content'")
        out.append({"role": m["role"], "content": _norm_content(m.get("content"), f"{where}[{j}]")})
    return out


def _is_conversational(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], dict) and "role" in x[0]


def _text_of(msgs: list[dict]) -> str:
    return "".join(p.get("text", "") for m in msgs for p in m["content"] if p["type"] == "text")


def _turn(role: str, x, where: str) -> list[dict]:
    """A string or conversational value as a list of messages (strings become one ``role`` turn)."""
    if x is None:
        raise _RowError(f"{where} is missing (None)")
    if isinstance(x, str):
        return [{"role": role, "content": [{"type": "text", "text": x}]}]
    if _is_conversational(x):
        return _norm_messages(x, where)
    raise _RowError(f"{where} must be a string or a list of messages, got {type(x).__name__}")


def row_to_conversation(row: dict, mode: str = "prompt") -> tuple[list[dict], list, bool]:
    """Normalise one row to ``(messages, images, add_generation_prompt)``.

    Messages use ``{"type": "image"}`` parts at the image positions (inserted at the start of the
    first user turn when the row's text has none, as TRL does); ``images`` are the raw image
    references in order.  Raises ``_RowError`` with the reason.
    """
    if not isinstance(row, dict):
        raise _RowError(f"a row must be a dict, got {type(row).__name__}")
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    images = _as_list(row["images"]) if "images" in row else _as_list(row.get("image"))
    gen_prompt = False

    if "texts" in row and "images" in row:  # interleaved document
        texts, imgs = _as_list(row["texts"]), _as_list(row["images"])
        if len(texts) != len(imgs):
            raise _RowError(f"interleaved document has {len(texts)} texts but {len(imgs)} images; the lists must pair up")
        parts, images = [], []
        for j, (t, im) in enumerate(zip(texts, imgs)):
            if t is not None and im is not None:
                raise _RowError(f"interleaved document position {j} has both a text and an image; one must be null")
            if im is not None:
                parts.append({"type": "image"})
                images.append(im)
            elif t is not None:
                parts.append({"type": "text", "text": t})
        msgs = [{"role": "user", "content": parts}]
        if not _text_of(msgs).strip():
            raise _RowError("interleaved document has no text")
        return msgs, images, False

    if "messages" in row:  # TRL SFT conversational
        msgs = _norm_messages(row["messages"], "messages")
        if mode == "rejected":
            raise _RowError("mode='rejected' needs a preference row; this SFT row has no rejected response")
        if mode == "prompt":
            last_asst = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last_asst is not None:
                msgs = msgs[:last_asst]
            gen_prompt = True
        prompt_msgs = [m for m in msgs if m["role"] != "assistant"]
        if not _text_of(prompt_msgs).strip():
            raise _RowError("the prompt (non-assistant messages) is empty")
    elif "question" in row and ("response_1" in row or "response_2" in row):  # Align-Anything TI2T
        q = row["question"]
        if not isinstance(q, str) or not q.strip():
            raise _RowError("'question' is empty")
        msgs = _turn("user", q, "question")
        raw_pref = row.get("overall_response")
        try:
            pref = int(raw_pref)
        except (TypeError, ValueError):
            pref = None
        if pref not in (1, 2) and (raw_pref is not None or mode != "prompt"):
            raise _RowError(f"'overall_response' must be 1 or 2 (the preferred response), got {raw_pref!r}")
        if mode == "prompt":
            gen_prompt = True
        else:
            which = pref if mode in ("chosen", "full") else 3 - pref
            msgs = msgs + _turn("assistant", row.get(f"response_{which}"), f"response_{which}")
    elif "prompt" in row:  # TRL preference / SFT prompt-completion / prompt only
        p = row["prompt"]
        msgs = _turn("user", p, "prompt")
        if not _text_of(msgs).strip():
            raise _RowError("'prompt' is empty")
        if mode == "prompt":
            gen_prompt = True
        else:
            if "chosen" in row or "rejected" in row:
                key = "rejected" if mode == "rejected" else "chosen"
                if key not in row:
                    raise _RowError(f"mode={mode!r} needs a {key!r} column")
            elif "completion" in row:
                if mode == "rejected":
                    raise _RowError("mode='rejected' needs a preference row; this row has prompt/completion")
                key = "completion"
            else:
                raise _RowError(f"mode={mode!r} needs a response column (chosen/rejected/completion); use mode='prompt'")
            msgs = msgs + _turn("assistant", row[key], key)
    else:
        raise _RowError(
            f"unrecognised row format (columns: {sorted(row)}); expected prompt/chosen/rejected, messages, "
            "prompt/completion, question/response_1/response_2 or texts/images"
        )

    # Images carried inside message parts come first-class; otherwise use the row's image column.
    inline = [p["_inline"] for m in msgs for p in m["content"] if p["type"] == "image" and "_inline" in p]
    n_parts = sum(p["type"] == "image" for m in msgs for p in m["content"])
    if inline:
        if len(inline) != n_parts:
            raise _RowError("some image parts carry an image and some do not; use one style per row")
        images = inline
    elif n_parts == 0 and images:
        first_user = next((m for m in msgs if m["role"] == "user"), msgs[0])
        first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
    elif n_parts != len(images):
        raise _RowError(f"the messages have {n_parts} image part(s) but the row has {len(images)} image(s)")
    for m in msgs:
        for p in m["content"]:
            p.pop("_inline", None)
    return msgs, images, gen_prompt


def _render(processor, msgs: list[dict], gen_prompt: bool) -> str:
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if template:
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)
    # No chat template (base models): plain text with the processor's image placeholder.
    ph = _placeholders(processor)[-1] if hasattr(processor, "boi_token") else _placeholders(processor)[0]
    chunks = []
    for m in msgs:
        for p in m["content"]:
            chunks.append(ph if p["type"] == "image" else p["text"])
    return "\n".join(chunks)


# ----------------------------------------------------------------------------------------------
# Batch preparation


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
) -> PreparedBatch:
    """Turn dataset rows into one padded processor batch.

    ``on_error="raise"`` raises :class:`InputError` naming the first bad row; ``"record"`` puts the
    reason in ``row_errors[i]`` and keeps going with the other rows (``kept`` lists the rows
    present in ``inputs``).  ``padding_side`` overrides the tokenizer's (``"left"``/``"right"``).
    ``require_images=False`` accepts rows without any image (text-only).
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
            msgs, refs, gen = row_to_conversation(row, mode)
            if require_images and not refs:
                col = next((c for c in ("images", "image") if c in row), None)
                what = f"the image is missing (column {col!r} is {row[col]!r})" if col else "the row has no image"
                raise _RowError(f"{what}; fix the row, drop it, or pass require_images=False to accept text-only rows")
            loaded = []
            for j, ref in enumerate(refs):
                try:
                    loaded.append(load_image(ref))
                except _RowError as e:
                    raise _RowError(f"image {j}: {e}") from None
            texts[i] = _render(processor, msgs, gen)
            images[i] = loaded
        except _RowError as e:
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

    img_tok = _image_token_str(processor)
    counts: list[list[int]] = []
    for k in range(len(good)):
        row_off = offsets[k] if offsets is not None else []
        counts.append([r["replacement"].count(img_tok) if img_tok else 0 for r in row_off if r["type"] == "image"])
    return PreparedBatch(out, errors, good, counts, truncated)


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
        raise _RowError("cannot map its tokens to image blocks for truncation (the tokenizer round trip differs); "
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
                raise _RowError("the processor does not report where image blocks are; raise max_length")
            prot = _protected_positions(processor, row_ids, _expanded_text(texts[k], offsets[k]), offsets[k])
        except _RowError as e:
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

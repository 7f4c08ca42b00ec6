"""Images of dataset rows -> RGB ``PIL.Image``: PIL images, ``datasets.Image`` dicts (``bytes`` or
``path``), file paths, raw bytes or numpy arrays (alpha composited on white, 16-bit scaled, EXIF
orientation applied, extreme aspect ratios padded to at most 50:1)."""

from __future__ import annotations

import io
import os

import numpy as np

MAX_ASPECT_RATIO = 50.0


class RowError(Exception):
    """A problem with one row; :func:`~saev_curate.vlm.rows.batch.prepare_batch` turns it into
    ``row_errors[i]`` or an InputError naming the row."""


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
        raise RowError(f"image has zero size {w}x{h}")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        # Letterbox extreme strips (some processors refuse aspect ratios above 200).
        nw, nh = (w, int(np.ceil(w / MAX_ASPECT_RATIO))) if w > h else (int(np.ceil(h / MAX_ASPECT_RATIO)), h)
        canvas = Image.new("RGB", (nw, nh), (255, 255, 255))
        canvas.paste(img, ((nw - w) // 2, (nh - h) // 2))
        img = canvas
    return img


def load_image(obj):
    """Load one image from any accepted form and return an RGB ``PIL.Image``.

    Raises ``RowError`` (caught by :func:`prepare_batch`) with a readable reason.
    """
    from PIL import Image, UnidentifiedImageError

    if obj is None:
        raise RowError("image is missing (None)")
    try:
        if isinstance(obj, Image.Image):
            obj.load()
            return _to_rgb(obj)
        if isinstance(obj, dict):
            if obj.get("bytes") is not None:
                return load_image(bytes(obj["bytes"]))
            if obj.get("path"):
                return load_image(obj["path"])
            raise RowError("image dict has neither 'bytes' nor 'path' (a missing datasets.Image value)")
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if len(obj) == 0:
                raise RowError("image bytes are empty")
            with Image.open(io.BytesIO(bytes(obj))) as im:
                im.load()
                return _to_rgb(im)
        if isinstance(obj, (str, os.PathLike)):
            s = os.fspath(obj)
            if s.startswith(("http://", "https://")):
                from transformers.image_utils import load_image as hf_load_image

                return _to_rgb(hf_load_image(s))
            if not os.path.exists(s):
                raise RowError(f"image file not found: {s!r}")
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
    except RowError:
        raise
    except UnidentifiedImageError:
        raise RowError("image data is not a readable image (corrupt or unsupported format)") from None
    except (OSError, ValueError, SyntaxError, TypeError) as e:
        raise RowError(f"image could not be decoded ({type(e).__name__}: {e}); the file may be truncated or corrupt") from None
    raise RowError(
        f"unsupported image type {type(obj).__name__}; pass a PIL image, a datasets.Image dict, a file path, "
        "bytes or a numpy array"
    )



"""Images of dataset rows -> RGB ``PIL.Image``: PIL images, ``datasets.Image`` dicts (``bytes`` or
``path``), file paths, raw bytes or numpy arrays (alpha composited on white, 16-bit scaled, EXIF
orientation applied, extreme aspect ratios padded to at most 50:1).

Images are decoded here, one row at a time, whatever held them (``datasets.Image`` columns are read
undecoded, see :func:`saev_curate.io.datasets.raw_rows`), so one bad image is one row's error. An
image with more pixels than the limit (:func:`max_image_pixels`: ``SAEV_CURATE_MAX_IMAGE_PIXELS``,
:func:`set_max_image_pixels`, or ``--max-image-pixels`` on the command line) is a row error too,
found from the header before any pixel is decoded (decompression bombs)."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np

MAX_ASPECT_RATIO = 50.0
#: default pixel limit per image (PIL's own default warning limit: about 9459 x 9459)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_ENV_MAX_PIXELS = "SAEV_CURATE_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit per image: ``SAEV_CURATE_MAX_IMAGE_PIXELS`` when set, else the default."""
    raw = os.environ.get(_ENV_MAX_PIXELS)
    if raw:
        try:
            value = int(float(raw))
        except ValueError:
            value = 0
        if value > 0:
            return value
    return DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(n: int | None) -> None:
    """Set the pixel limit per image for this process and the workers it starts (None: the default)."""
    if n is None:
        os.environ.pop(_ENV_MAX_PIXELS, None)
        return
    if int(n) <= 0:
        from saev_curate.core.errors import InputError

        raise InputError(f"max_image_pixels must be a positive number of pixels, got {n}")
    os.environ[_ENV_MAX_PIXELS] = str(int(n))


@contextlib.contextmanager
def max_image_pixels_set(n: int | None):
    """:func:`set_max_image_pixels` for the ``with`` block only (through the environment: workers see it too); the
    previous limit comes back after it (a process may run several commands)."""
    before = os.environ.get(_ENV_MAX_PIXELS)
    if n is not None:
        set_max_image_pixels(n)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_ENV_MAX_PIXELS, None)
        else:
            os.environ[_ENV_MAX_PIXELS] = before


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


def _check_pixels(im, limit: int) -> None:
    w, h = im.size
    if w * h > limit:
        raise RowError(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} (a possible decompression "
                       "bomb); downscale it, drop the row, or raise the limit (--max-image-pixels, "
                       "SAEV_CURATE_MAX_IMAGE_PIXELS)")


def _open(fp, limit: int):
    """Open, check the size from the header, then decode: a bomb never reaches ``load()``."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit applies (PIL's would raise past 2x its default)
        try:
            with Image.open(fp) as im:
                _check_pixels(im, limit)
                im.load()
                return _to_rgb(im)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def load_image(obj, max_pixels: int | None = None):
    """Load one image from any accepted form and return an RGB ``PIL.Image``.

    Raises ``RowError`` (caught by :func:`prepare_batch`) with a readable reason; an image over
    ``max_pixels`` (default :func:`max_image_pixels`) is refused before it is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels or max_image_pixels()
    if obj is None:
        raise RowError("image is missing (None)")
    try:
        if isinstance(obj, Image.Image):
            _check_pixels(obj, limit)
            obj.load()
            return _to_rgb(obj)
        if isinstance(obj, dict):
            if obj.get("bytes") is not None:
                return load_image(bytes(obj["bytes"]), limit)
            if obj.get("path"):
                return load_image(obj["path"], limit)
            raise RowError("image dict has neither 'bytes' nor 'path' (a missing datasets.Image value)")
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if len(obj) == 0:
                raise RowError("image bytes are empty")
            return _open(io.BytesIO(bytes(obj)), limit)
        if isinstance(obj, (str, os.PathLike)):
            s = os.fspath(obj)
            if s.startswith(("http://", "https://")):
                from transformers.image_utils import load_image as hf_load_image

                return _to_rgb(hf_load_image(s))
            if not os.path.exists(s):
                raise RowError(f"image file not found: {s!r}")
            return _open(s, limit)
        if isinstance(obj, np.ndarray):
            arr = obj
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
            if arr.ndim >= 2 and arr.shape[0] * arr.shape[1] > limit:
                raise RowError(f"image array {arr.shape[1]}x{arr.shape[0]} is over the limit of {limit:,} pixels; "
                               "downscale it or raise --max-image-pixels")
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
    except Image.DecompressionBombError as e:
        raise RowError(f"image refused as a decompression bomb ({e}); raise --max-image-pixels if it is real") from None
    except UnidentifiedImageError:
        raise RowError("image data is not a readable image (corrupt or unsupported format)") from None
    except (OSError, ValueError, SyntaxError, TypeError) as e:
        raise RowError(f"image could not be decoded ({type(e).__name__}: {e}); the file may be truncated or corrupt") from None
    raise RowError(
        f"unsupported image type {type(obj).__name__}; pass a PIL image, a datasets.Image dict, a file path, "
        "bytes or a numpy array"
    )



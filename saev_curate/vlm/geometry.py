"""Image-token geometry: every image-placeholder token of a processed row back to its pixel region of the
ORIGINAL image, so that any per-token value (an SAE feature, L0, a score contribution) becomes a heat map.

One function per layout, each replaying the image processor's own steps (resize, pad, crop, tiles) with the
processor's and the model config's settings, then inverting them:

- LLaVA / the testbed: optional pad-to-square, resize, centre crop; a square grid of patches (the CLS
  token of ``vision_feature_select_strategy="full"`` encodes no region).
- LLaVA-NeXT: the base image (the whole image squashed to the tile size) and then the anyres tiles; the
  tile features are un-padded exactly as HF's ``unpad_image`` does, one newline token per feature row.
- Qwen2-VL / Qwen2.5-VL: ``smart_resize``; ``image_grid_thw`` gives the resized grid, tokens are merged
  ``spatial_merge_size`` x ``spatial_merge_size`` patch blocks in row-major order.
- Idefics3: resize to the longest edge, resize to multiples of the tile size, tiles in row-major order,
  then the global image (the whole image squashed to one tile); tokens are pixel-shuffled
  ``scale_factor`` x ``scale_factor`` patch blocks.  The row/column markers are text, not image tokens.
- Gemma 3: a square resize, patches average-pooled to ``mm_tokens_per_image`` tokens (no pan-and-scan).
- PaliGemma: a square resize, a square grid of patches.

A box is ``(left, top, right, bottom)`` in the original image's pixel coordinates (pixel edges: the image
spans ``(0, 0, width, height)``), clipped to the image; a token whose region lies wholly in padding maps
to ``None``, as do tokens that encode no region at all (LLaVA-NeXT's row newlines, a CLS token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from saev_curate.core.errors import InputError

__all__ = ["FAMILIES", "PatchBox", "heatmap", "image_token_boxes", "overlay"]

#: model types (``model.config.model_type``) whose image tokens can be mapped to pixels
FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "paligemma")


@dataclass(frozen=True)
class PatchBox:
    """The pixel region one image token encodes."""

    image: int  # index of the image within its row
    box: tuple[float, float, float, float]  # (left, top, right, bottom) in the original image's pixels


# ------------------------------------------------------------------------------------------------
# Axis-aligned maps between the original image and one view (the pixel array the vision tower sees)


@dataclass(frozen=True)
class _View:
    """``view = original * scale + offset`` on each axis: how the processor placed the original image in one
    view (a resized, padded, cropped or tiled pixel array)."""

    sx: float = 1.0
    sy: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def then_resize(self, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> "_View":
        ry, rx = new_hw[0] / old_hw[0], new_hw[1] / old_hw[1]
        return _View(self.sx * rx, self.sy * ry, self.tx * rx, self.ty * ry)

    def then_shift(self, dx: float, dy: float) -> "_View":
        return _View(self.sx, self.sy, self.tx + dx, self.ty + dy)

    def then(self, other: "_View") -> "_View":
        """This map followed by ``other``."""
        return _View(self.sx * other.sx, self.sy * other.sy, self.tx * other.sx + other.tx,
                     self.ty * other.sy + other.ty)

    def to_original(self, rect, image_wh: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """A rectangle in view pixels -> the original image's pixels, clipped; ``None`` if nothing is left."""
        left, top, right, bottom = rect
        w, h = image_wh
        x0, x1 = (left - self.tx) / self.sx, (right - self.tx) / self.sx
        y0, y1 = (top - self.ty) / self.sy, (bottom - self.ty) / self.sy
        x0, x1, y0, y1 = max(0.0, x0), min(float(w), x1), max(0.0, y0), min(float(h), y1)
        if x1 - x0 <= 1e-9 or y1 - y0 <= 1e-9:
            return None
        return (x0, y0, x1, y1)


def _grid(view: _View, image_wh, *, rows: int, cols: int, cell_h: float, cell_w: float, image: int,
          origin: tuple[float, float] = (0.0, 0.0)) -> list[PatchBox | None]:
    """Row-major cells of a ``rows`` x ``cols`` grid of ``cell_h`` x ``cell_w`` view pixels starting at ``origin``."""
    out: list[PatchBox | None] = []
    ox, oy = origin
    for r in range(rows):
        for c in range(cols):
            box = view.to_original((ox + c * cell_w, oy + r * cell_h, ox + (c + 1) * cell_w, oy + (r + 1) * cell_h),
                                   image_wh)
            out.append(None if box is None else PatchBox(image, box))
    return out


def _size_get(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _dummy(h: int, w: int) -> np.ndarray:
    """A zero-memory channels-first array of shape (3, h, w): the transformers size helpers read only shapes."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), (3, h, w))


def _resized_hw(size, h: int, w: int) -> tuple[int, int]:
    """The output (height, width) of ``BaseImageProcessor.resize(image, size)`` (PIL and torchvision backends)."""
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

    short, long_ = _size_get(size, "shortest_edge"), _size_get(size, "longest_edge")
    if short and long_:
        return tuple(get_size_with_aspect_ratio((h, w), short, long_))
    if short:
        return tuple(get_resize_output_image_size(_dummy(h, w), size=short, default_to_square=False,
                                                  input_data_format=ChannelDimension.FIRST))
    if _size_get(size, "max_height") and _size_get(size, "max_width"):
        return tuple(get_image_size_for_max_height_width((h, w), _size_get(size, "max_height"),
                                                         _size_get(size, "max_width")))
    if _size_get(size, "height") and _size_get(size, "width"):
        return int(_size_get(size, "height")), int(_size_get(size, "width"))
    raise InputError(f"cannot read the image processor's resize size {size!r}; expected shortest_edge, "
                     "longest_edge, max_height/max_width or height/width")


def _resize_crop(ip, view: _View, hw: tuple[int, int]) -> tuple[_View, tuple[int, int]]:
    """Replay the standard ``do_resize`` then ``do_center_crop`` steps on a view of size ``hw``."""
    h, w = hw
    if getattr(ip, "do_resize", False):
        nh, nw = _resized_hw(ip.size, h, w)
        view, (h, w) = view.then_resize((h, w), (nh, nw)), (nh, nw)
    if getattr(ip, "do_center_crop", False):
        ch, cw = int(_size_get(ip.crop_size, "height")), int(_size_get(ip.crop_size, "width"))
        # transformers' center_crop: top = (h - ch) // 2 (and pads symmetrically when the crop is larger)
        view, (h, w) = view.then_shift(-((w - cw) // 2), -((h - ch) // 2)), (ch, cw)
    return view, (h, w)


# ------------------------------------------------------------------------------------------------
# Per-family layouts: the boxes of one image's tokens, in sequence order


def _vision_patch(model) -> tuple[int, int]:
    vc = model.config.vision_config
    return int(vc.image_size), int(vc.patch_size)


def _llava(model, processor, image_wh, image: int) -> list[PatchBox | None]:
    ip = processor.image_processor
    w, h = image_wh
    view = _View()
    if getattr(ip, "do_pad", False) and type(ip).__name__.startswith("Llava"):  # pad_to_square before resizing
        m = max(h, w)
        view, (h, w) = view.then_shift((m - w) // 2 if w < h else 0, (m - h) // 2 if h < w else 0), (m, m)
    view, (h, w) = _resize_crop(ip, view, (h, w))
    size, patch = _vision_patch(model)
    n_extra = getattr(processor, "num_additional_image_tokens", 1) or 0
    strategy = getattr(model.config, "vision_feature_select_strategy", "default")
    lead = n_extra - (1 if strategy == "default" else 0)
    g = size // patch
    return [None] * max(lead, 0) + _grid(view, image_wh, rows=g, cols=g, cell_h=patch * h / size,
                                         cell_w=patch * w / size, image=image)


def _unpad_bounds(current_hw: tuple[int, int], original_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the tile-feature grid that HF's ``unpad_image`` keeps
    (transformers ``models/llava_next/modeling_llava_next.py``, replicated line for line)."""
    oh, ow = original_hw
    ch, cw = current_hw
    if ow / oh > cw / ch:
        new_h = int(round(oh * (cw / ow), 7))
        pad = (ch - new_h) // 2
        return pad, ch - pad, 0, cw
    new_w = int(round(ow * (ch / oh), 7))
    pad = (cw - new_w) // 2
    return 0, ch, pad, cw - pad


def _llava_next(model, processor, image_wh, image: int) -> list[PatchBox | None]:
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    ip = processor.image_processor
    w, h = image_wh
    if getattr(model.config, "vision_feature_select_strategy", "default") != "default":
        raise InputError("LLaVA-NeXT with vision_feature_select_strategy='full' cannot be mapped to pixels (its "
                         "tile features then include a CLS token per tile); use 'default'")
    size, patch = _vision_patch(model)
    g = size // patch
    # the processor's own tile size and base size (image_processing_llava_next._preprocess)
    if _size_get(ip.size, "height") and _size_get(ip.size, "width"):
        base_hw = (int(_size_get(ip.size, "height")), int(_size_get(ip.size, "width")))
    else:
        base_hw = (int(_size_get(ip.size, "shortest_edge")),) * 2
    tile = int(_size_get(ip.crop_size, "height") or _size_get(ip.size, "height") or _size_get(ip.size, "shortest_edge"))

    # 1. the base image: the whole image resized to base_hw, then the per-view resize and crop
    base, bhw = _resize_crop(ip, _View().then_resize((h, w), base_hw), base_hw)
    out = _grid(base, image_wh, rows=g, cols=g, cell_h=patch * bhw[0] / size, cell_w=patch * bhw[1] / size,
                image=image)

    # 2. the anyres canvas: resized to fit the best pinpoint resolution, centred with zero padding
    best_h, best_w = select_best_resolution((h, w), ip.image_grid_pinpoints)
    nh, nw = get_patch_output_size(_dummy(h, w), (best_h, best_w), input_data_format=ChannelDimension.FIRST)
    canvas = _View().then_resize((h, w), (nh, nw)).then_shift((best_w - nw) // 2, (best_h - nh) // 2)
    # the model's view of the same grid (config.image_grid_pinpoints with the vision tower's image size)
    mh, mw = select_best_resolution((h, w), model.config.image_grid_pinpoints)
    nph, npw = mh // size, mw // size
    if (best_h // tile, best_w // tile) != (nph, npw):
        raise InputError(f"LLaVA-NeXT: the image processor tiles {best_h}x{best_w} by {tile} but the model expects "
                         f"a {nph}x{npw} tile grid; the processor and config pinpoints/sizes disagree")
    # each tile goes through the per-view resize/crop; the feature grid is g x g cells of the resulting view
    tile_view, (vh, vw) = _resize_crop(ip, _View(), (tile, tile))
    cell_h, cell_w = patch * vh / size, patch * vw / size
    r0, r1, c0, c1 = _unpad_bounds((nph * g, npw * g), (h, w))
    for r in range(r0, r1):
        for c in range(c0, c1):
            v = canvas.then_shift(-(c // g) * tile, -(r // g) * tile).then(tile_view)
            rr, cc = r % g, c % g
            box = v.to_original((cc * cell_w, rr * cell_h, (cc + 1) * cell_w, (rr + 1) * cell_h), image_wh)
            out.append(None if box is None else PatchBox(image, box))
        out.append(None)  # the row's image_newline token
    return out


def _qwen(model, processor, image_wh, image: int, grid_thw) -> list[PatchBox | None]:
    t, gh, gw = (int(x) for x in grid_thw)
    ip = processor.image_processor
    patch = int(getattr(ip, "patch_size", None) or model.config.vision_config.patch_size)
    merge = int(getattr(model.config.vision_config, "spatial_merge_size", None) or getattr(ip, "merge_size", 2))
    w, h = image_wh
    view = _View().then_resize((h, w), (gh * patch, gw * patch))  # smart_resize's output size, from the grid
    cells = _grid(view, image_wh, rows=gh // merge, cols=gw // merge, cell_h=patch * merge, cell_w=patch * merge,
                  image=image)
    return cells * t  # an image has t == 1 (its frame is repeated temporal_patch_size times inside one patch)


def _idefics3(model, processor, image_wh, image: int) -> list[PatchBox | None]:
    from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size

    ip = processor.image_processor
    w, h = image_wh
    tile = int(_size_get(ip.max_image_size, "longest_edge"))
    patch = int(model.config.vision_config.patch_size)
    scale = int(model.config.scale_factor)
    n = (tile // patch) // scale  # tokens per side of one frame after the pixel shuffle
    seq = getattr(processor, "image_seq_len", n * n)
    if n * n != seq:
        raise InputError(f"Idefics3: the processor's image_seq_len={seq} but tile {tile} / patch {patch} / "
                         f"scale_factor {scale} gives {n * n} tokens per frame; they must agree")
    view, (ch, cw) = _View(), (h, w)
    if getattr(ip, "do_resize", False):
        longest = _size_get(ip.size, "longest_edge")
        nhw = (tuple(get_resize_output_image_size(_dummy(ch, cw), resolution_max_side=longest)) if longest
               else (int(_size_get(ip.size, "height")), int(_size_get(ip.size, "width"))))
        view, (ch, cw) = view.then_resize((ch, cw), nhw), nhw
    cell = scale * patch
    if not getattr(ip, "do_image_splitting", False):
        v = view.then_resize((ch, cw), (tile, tile))
        return _grid(v, image_wh, rows=n, cols=n, cell_h=cell, cell_w=cell, image=image)
    # resize_for_vision_encoder (image_processing_idefics3), replicated: both sides to multiples of the tile
    aspect = cw / ch
    if cw >= ch:
        nw = math.ceil(cw / tile) * tile
        nh = math.ceil(int(nw / aspect) / tile) * tile
    else:
        nh = math.ceil(ch / tile) * tile
        nw = math.ceil(int(nh * aspect) / tile) * tile
    view, (ch, cw) = view.then_resize((ch, cw), (nh, nw)), (nh, nw)
    if ch <= tile and cw <= tile:  # one frame, no global image
        return _grid(view, image_wh, rows=n, cols=n, cell_h=cell, cell_w=cell, image=image)
    out: list[PatchBox | None] = []
    for r in range((ch - tile) // tile + 1):
        for c in range((cw - tile) // tile + 1):
            out += _grid(view, image_wh, rows=n, cols=n, cell_h=cell, cell_w=cell, image=image,
                         origin=(c * tile, r * tile))
    glob = view.then_resize((ch, cw), (tile, tile))
    return out + _grid(glob, image_wh, rows=n, cols=n, cell_h=cell, cell_w=cell, image=image)


def _gemma3(model, processor, image_wh, image: int) -> list[PatchBox | None]:
    ip = processor.image_processor
    if getattr(ip, "do_pan_and_scan", False):
        raise InputError("Gemma 3 with do_pan_and_scan=True (extra crops per image) cannot be mapped to pixels; "
                         "process the images with do_pan_and_scan=False")
    w, h = image_wh
    view, (vh, vw) = _resize_crop(ip, _View(), (h, w))
    size, patch = _vision_patch(model)
    per_side = int(round(model.config.mm_tokens_per_image ** 0.5))
    kernel = (size // patch) // per_side
    return _grid(view, image_wh, rows=per_side, cols=per_side, cell_h=kernel * patch * vh / size,
                 cell_w=kernel * patch * vw / size, image=image)


def _paligemma(model, processor, image_wh, image: int) -> list[PatchBox | None]:
    ip = processor.image_processor
    w, h = image_wh
    view, (vh, vw) = _resize_crop(ip, _View(), (h, w))
    size, patch = _vision_patch(model)
    g = size // patch
    return _grid(view, image_wh, rows=g, cols=g, cell_h=patch * vh / size, cell_w=patch * vw / size, image=image)


# ------------------------------------------------------------------------------------------------


def _family(model) -> str:
    mt = getattr(model.config, "model_type", None)
    if mt not in FAMILIES:
        raise InputError(f"image-token geometry does not support model type {mt!r} ({type(model).__name__}); "
                         f"supported: {', '.join(FAMILIES)}")
    return mt


def _row_image_tokens(model, inputs, row: int) -> int:
    from saev_curate.vlm.capture import image_token_id

    ids = inputs["input_ids"]
    if not 0 <= row < ids.shape[0]:
        raise InputError(f"row={row} is out of range for a batch of {ids.shape[0]} rows")
    mask = ids[row] == image_token_id(model)
    am = inputs.get("attention_mask") if hasattr(inputs, "get") else None
    if am is not None:
        mask = mask & am[row].bool()
    return int(mask.sum())


def _qwen_row_grids(model, inputs, row: int, n_images: int) -> list:
    """The ``image_grid_thw`` rows of batch row ``row``'s images (the grids are listed for the whole batch)."""
    grid = inputs.get("image_grid_thw")
    if grid is None:
        raise InputError("Qwen2-VL inputs have no image_grid_thw; pass the processor's full output")
    merge = int(getattr(model.config.vision_config, "spatial_merge_size", 2) or 2)
    per_image = [int(x) for x in (grid.prod(-1) // (merge * merge)).tolist()]
    k = 0
    for r in range(row):
        n, acc = _row_image_tokens(model, inputs, r), 0
        while acc < n and k < len(per_image):
            acc, k = acc + per_image[k], k + 1
        if acc != n:
            raise InputError(f"Qwen2-VL: row {r}'s image tokens ({n}) do not add up to whole images of image_grid_thw")
    if k + n_images > len(grid):
        raise InputError(f"Qwen2-VL: row {row} needs {n_images} image(s) but image_grid_thw has only "
                         f"{len(grid) - k} left after the earlier rows")
    return [grid[k + j].tolist() for j in range(n_images)]


def image_token_boxes(model, processor, inputs, row: int, image_sizes: Sequence[tuple[int, int]]
                      ) -> list[PatchBox | None]:
    """One entry per image-placeholder token of batch row ``row`` of ``inputs`` (the processor's output or a
    :class:`~saev_curate.vlm.rows.batch.PreparedBatch`), in
    sequence order (the same order as ``Activations.image_tokens(row)``); ``image_sizes`` are the row's original
    images' ``(width, height)``; ``None`` for a token that encodes no region (LLaVA-NeXT's row newlines, a
    CLS token, a patch wholly in padding).

    Raises :class:`InputError` for an unsupported family, or when the layout's token count differs from the
    row's image tokens (the processor ran with other settings than it now has, or ``image_sizes`` are wrong).
    """
    from saev_curate.vlm.rows.batch import PreparedBatch

    if isinstance(inputs, PreparedBatch):  # its kept rows, as capture_activations reads them
        inputs = inputs.inputs
    fam = _family(model)
    sizes = [(int(w), int(h)) for w, h in image_sizes]
    if any(w <= 0 or h <= 0 for w, h in sizes):
        raise InputError(f"image_sizes must be positive (width, height) pairs; got {list(image_sizes)}")
    boxes: list[PatchBox | None] = []
    if fam in ("qwen2_vl", "qwen2_5_vl"):
        for j, (wh, g) in enumerate(zip(sizes, _qwen_row_grids(model, inputs, row, len(sizes)))):
            boxes += _qwen(model, processor, wh, j, g)
    else:
        layout = {"llava": _llava, "llava_next": _llava_next, "idefics3": _idefics3, "gemma3": _gemma3,
                  "paligemma": _paligemma}[fam]
        for j, wh in enumerate(sizes):
            boxes += layout(model, processor, wh, j)
    n = _row_image_tokens(model, inputs, row)
    if len(boxes) != n:
        raise InputError(f"{fam}: row {row} has {n} image tokens but its {len(sizes)} image(s) of sizes {sizes} "
                         f"(width, height) lay out {len(boxes)}; pass the row's original image sizes, and a "
                         "processor with the settings that made these inputs")
    return boxes


# ------------------------------------------------------------------------------------------------
# Per-token values -> pixels


def heatmap(values, boxes: Sequence[PatchBox | None], image_size: tuple[int, int], *, image: int = 0,
            reduce: str = "max") -> np.ndarray:
    """``[height, width]`` float32 map over the original image: each pixel the max (or mean) of the values of
    the tokens whose box covers it; NaN where none does.

    A pixel is covered by a box when its centre lies inside it (so a grid of abutting boxes covers each
    pixel once).  ``values`` has one entry per box (``None`` boxes are skipped); ``image_size`` is the
    image's ``(width, height)``; ``image`` picks which of the row's images to draw.
    """
    if reduce not in ("max", "mean"):
        raise InputError(f"reduce={reduce!r}; use 'max' or 'mean'")
    vals = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if len(vals) != len(boxes):
        raise InputError(f"heatmap: {len(vals)} values for {len(boxes)} boxes; give one value per image token")
    w, h = int(image_size[0]), int(image_size[1])
    if w <= 0 or h <= 0:
        raise InputError(f"image_size must be a positive (width, height); got {image_size}")
    acc = np.full((h, w), np.nan)
    cnt = np.zeros((h, w))
    for v, b in zip(vals, boxes):
        if b is None or b.image != image:
            continue
        left, top, right, bottom = b.box
        x0, x1 = max(0, math.ceil(left - 0.5)), min(w, math.ceil(right - 0.5))
        y0, y1 = max(0, math.ceil(top - 0.5)), min(h, math.ceil(bottom - 0.5))
        if x1 <= x0 or y1 <= y0:
            continue
        sl = acc[y0:y1, x0:x1]
        if reduce == "max":
            acc[y0:y1, x0:x1] = np.fmax(sl, v)
        else:
            acc[y0:y1, x0:x1] = np.where(np.isnan(sl), 0.0, sl) + v
            cnt[y0:y1, x0:x1] += 1
    if reduce == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    return acc.astype(np.float32)


# A perceptually ordered colour scale (dark blue -> teal -> yellow), sampled from viridis' anchors.
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def _colour(t: np.ndarray) -> np.ndarray:
    pos = np.clip(t, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    f = (pos - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


def overlay(image, heat: np.ndarray, *, vmin: float, vmax: float, alpha: float = 0.5):
    """The image with the heat map drawn over it on a FIXED colour scale ``[vmin, vmax]`` (so a grid of examples
    shares one scale): values at or below ``vmin`` draw the scale's dark end, at or above ``vmax`` its bright
    end; NaN pixels (no token covers them) keep the image as it is.  Returns a new RGB ``PIL.Image``."""
    from PIL import Image

    heat = np.asarray(heat, dtype=np.float64)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise InputError(f"overlay: the heat map is {heat.shape[1]}x{heat.shape[0]} (width x height) but the image "
                         f"is {rgb.shape[1]}x{rgb.shape[0]}; make the heat map with heatmap(..., image.size)")
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmax > vmin):
        raise InputError(f"overlay needs finite vmin < vmax; got vmin={vmin}, vmax={vmax}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha} must be within [0, 1]")
    known = ~np.isnan(heat)
    col = _colour((np.where(known, heat, vmin) - vmin) / (vmax - vmin))
    out = np.where(known[..., None], (1 - alpha) * rgb + alpha * col, rgb)
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))

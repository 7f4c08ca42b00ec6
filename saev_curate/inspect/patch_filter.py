"""The patch filter: keep the top p% of an image's patches by a feature set's activation, blank the rest.

SAE-V's reference code (``crop_image_by_activation``) keeps the image patches the SAE finds most active and
re-runs the task, to show that those patches carry what the model needs.  Here:

* ``by="l0"``: the SAE's L0 per image token (how many features fire on it);
* ``by="cross_modal"``: the summed activation of the cross-modal features (a fitted
  :class:`~saev_curate.curation.crossmodal.weights.CrossModalWeights`' ``cross_modal`` class);
* ``by=<int>``: one feature's activation;
* ``by="random"``: a seeded random order (the control).

Each image keeps ``round(keep_percent / 100 * n)`` of its ``n`` patches (image tokens with a pixel region, from
:mod:`saev_curate.vlm.geometry`; at least one), highest first, ties broken by a seeded random order.  A pixel of
the ORIGINAL image stays when a kept token's box covers it (a pixel is covered when its centre lies in the box,
as in :func:`~saev_curate.vlm.geometry.heatmap`); other pixels that tokens cover are filled with the image's
mean colour (``fill="mean"``) or the processor's ``image_mean`` (``fill="processor"``); pixels no token sees
(cropped away by the processor) are left as they are.  Families whose tokens overlap (LLaVA-NeXT's base image
and tiles, Idefics3's global image) keep a pixel when any kept token covers it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from saev_curate.core.errors import InputError

__all__ = ["BY", "ERROR_COLUMN", "FILLS", "PatchFilterResult", "blank", "check_keep_percent", "filter_dataset",
           "filter_rows", "kept_pixels", "parse_by", "token_values"]

#: the named feature sets (or an int: one feature)
BY = ("l0", "cross_modal", "random")
FILLS = ("mean", "processor")
#: the column holding why a row could not be filtered (None when it was)
ERROR_COLUMN = "patch_filter_error"


def parse_by(value) -> str | int:
    """``"l0"``, ``"cross_modal"``, ``"random"``, a feature index (int, ``"123"`` or ``"feature:123"``) -> the
    value :func:`filter_rows` takes; anything else is an :class:`InputError`."""
    if isinstance(value, bool):
        raise InputError(f"by={value!r} is not a feature set; use one of {', '.join(BY)} or a feature index")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise InputError(f"by={value}: a feature index must be >= 0")
        return int(value)
    text = str(value).strip()
    if text in BY:
        return text
    num = text.split(":", 1)[1] if text.startswith("feature:") else text
    if num.isdigit():
        return int(num)
    raise InputError(f"unknown feature set {value!r}; use one of {', '.join(BY)}, or one feature as an index "
                     "(e.g. 123 or feature:123)")


def check_keep_percent(keep_percent) -> float:
    """``keep_percent`` as a float in (0, 100], or an :class:`InputError` naming the fix."""
    try:
        p = float(keep_percent)
    except (TypeError, ValueError):
        raise InputError(f"keep_percent={keep_percent!r} must be a number in (0, 100], e.g. 25") from None
    if not (0 < p <= 100) or math.isnan(p):
        raise InputError(f"keep_percent={keep_percent!r} must be in (0, 100] (the share of patches kept, in "
                         "percent: 25 keeps a quarter)")
    return p


def _check_by(by, sae, weights):
    by = parse_by(by)
    if isinstance(by, int) and by >= sae.cfg.d_sae:
        raise InputError(f"feature {by} does not exist: the SAE has {sae.cfg.d_sae} features (0..{sae.cfg.d_sae - 1})")
    if by == "cross_modal":
        from saev_curate.curation.crossmodal.fitter import CROSS_MODAL

        if weights is None:
            raise InputError("by='cross_modal' needs the cross-modal weights fitted for this SAE (weights=, --weights)")
        weights.check_sae(sae)
        if not bool((weights.classes == CROSS_MODAL).any()):
            raise InputError("the weights classify no feature as cross-modal, so by='cross_modal' ranks nothing; "
                             "use by='l0' or refit the weights on more reference rows")
    return by


def token_values(sae, image_resid, by, weights=None):
    """``[n_tokens]`` values of a row's image tokens (``image_resid``: ``[n_tokens, d_in]``, the residual stream
    the SAE reads) for the feature set ``by`` (``"l0"``, ``"cross_modal"`` or a feature index; ``"random"`` has no
    values: :func:`kept_pixels` draws its order)."""
    import torch

    by = parse_by(by)
    if by == "random":
        raise InputError("by='random' has no activation values; kept_pixels draws the random order itself")
    with torch.no_grad():
        acts = sae.encode(image_resid.to(sae.device))
    if by == "l0":
        return (acts > 0).sum(-1).float().cpu()
    if by == "cross_modal":
        from saev_curate.curation.crossmodal.fitter import CROSS_MODAL

        mask = (weights.classes == CROSS_MODAL).to(acts.device)
        return acts[:, mask].sum(-1).float().cpu()
    return acts[:, by].float().cpu()


def kept_pixels(values, boxes: Sequence, image_sizes: Sequence[tuple[int, int]], keep_percent: float, *,
                seed: int | Sequence[int] = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of the row, ``(keep, seen)``: ``[height, width]`` bool maps of the pixels kept and of the pixels
    any token covers.  ``values`` has one entry per box (``None`` for ``by="random"``: a seeded random order);
    ``boxes`` come from :func:`~saev_curate.vlm.geometry.image_token_boxes`; ties break in a seeded random order."""
    from saev_curate.vlm.geometry import heatmap

    p = check_keep_percent(keep_percent)
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(len(boxes))
    vals = tiebreak if values is None else np.asarray(
        values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if len(vals) != len(boxes):
        raise InputError(f"kept_pixels: {len(vals)} values for {len(boxes)} boxes; give one value per image token")
    out = []
    for j, (w, h) in enumerate(image_sizes):
        idx = [i for i, b in enumerate(boxes) if b is not None and b.image == j]
        if not idx:
            raise InputError(f"image {j} has no image tokens with a pixel region")
        n_keep = max(1, int(round(len(idx) * p / 100)))
        order = sorted(idx, key=lambda i: (-vals[i], tiebreak[i]))
        keep = np.zeros(len(boxes))
        keep[order[:n_keep]] = 1.0
        seen = heatmap(np.ones(len(boxes)), boxes, (w, h), image=j)
        kept = heatmap(keep, boxes, (w, h), image=j)
        out.append((kept == 1.0, ~np.isnan(seen)))
    return out


def blank(image, keep: np.ndarray, seen: np.ndarray, fill) -> "PIL.Image.Image":  # noqa: F821
    """``image`` with the pixels that are ``seen`` but not ``keep`` set to ``fill`` (an RGB triple in 0..255)."""
    from PIL import Image

    arr = np.asarray(image.convert("RGB")).copy()
    drop = seen & ~keep
    arr[drop] = np.clip(np.round(np.asarray(fill, dtype=np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _fill_colour(fill: str, image, processor) -> tuple[float, float, float]:
    if fill == "mean":
        return tuple(np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0))
    mean = getattr(processor.image_processor, "image_mean", None)
    if mean is None:
        raise InputError("fill='processor' needs the image processor's image_mean, and it has none; use fill='mean'")
    mean = list(mean) if isinstance(mean, (list, tuple)) else [float(mean)] * 3
    return tuple(255.0 * float(m) for m in mean)


@dataclass
class PatchFilterResult:
    """Per input row: its filtered images (``None`` where the row could not be filtered) and why not."""

    images: list[list | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    kept_share: list[float | None] = field(default_factory=list)  # the share of seen pixels kept, per row


def _row_images(row) -> list:
    from saev_curate.vlm.rows.batch import IMAGE_COLUMNS
    from saev_curate.vlm.rows.images import RowError

    col = next((c for c in IMAGE_COLUMNS if c in row and row[c] is not None), None)
    if col is None:
        raise RowError("the row has no image to filter (no 'images' or 'image' column)")
    refs = row[col] if isinstance(row[col], list) else [row[col]]
    return [r for r in refs if r is not None]


def filter_rows(model, processor, sae, rows: Sequence[dict], *, keep_percent: float, by="l0", weights=None,
                layer=None, fill: str = "mean", seed: int = 0, batch_size: int = 8, mode: str = "prompt",
                row_ids: Sequence[int] | None = None, progress: bool = False) -> PatchFilterResult:
    """Filter the images of ``rows`` (any row format :func:`~saev_curate.vlm.rows.batch.prepare_batch` reads):
    the image tokens' residual stream at the SAE's layer (the ``mode`` text, default the prompt), the feature
    set's value per token, the top ``keep_percent``% of each image's patches kept, the rest blanked.

    A row that cannot be processed (a broken image, a family the geometry cannot map) gets ``None`` images
    and its reason in ``errors``, in its place.  ``row_ids`` (default ``0..n-1``) seed the random order per row,
    so a row's result does not depend on its batch.
    """
    from tqdm.auto import tqdm

    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.geometry import image_token_boxes
    from saev_curate.vlm.layers import resolve_sae_layer
    from saev_curate.vlm.rows.batch import prepare_batch
    from saev_curate.vlm.rows.images import RowError, load_image

    p = check_keep_percent(keep_percent)
    if fill not in FILLS:
        raise InputError(f"fill={fill!r}; use one of {', '.join(FILLS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be a positive integer")
    by = _check_by(by, sae, weights)
    L = resolve_sae_layer(model, sae, layer)
    rows = list(rows)
    ids = list(range(len(rows))) if row_ids is None else [int(i) for i in row_ids]
    if len(ids) != len(rows):
        raise InputError(f"row_ids has {len(ids)} entries for {len(rows)} rows")
    res = PatchFilterResult([None] * len(rows), [None] * len(rows), [None] * len(rows))
    bar = tqdm(total=len(rows), desc=f"patch filter ({by}, keep {p:g}%)", disable=not progress)
    for s in range(0, len(rows), batch_size):
        chunk = list(range(s, min(s + batch_size, len(rows))))
        images: dict[int, list] = {}
        for i in chunk:
            try:
                images[i] = [load_image(r) for r in _row_images(rows[i])]
            except RowError as e:
                res.errors[i] = str(e)
        good = [i for i in chunk if res.errors[i] is None]
        if good:
            pb = prepare_batch(processor, [rows[i] for i in good], mode=mode, on_error="record")
            for i, e in zip(good, pb.row_errors):
                if e is not None:
                    res.errors[i] = e
            acts = capture_activations(model, pb, L) if pb.kept else None
            for b, k in enumerate(pb.kept):
                i = good[k]
                imgs = images[i]
                try:
                    boxes = image_token_boxes(model, processor, pb.inputs, b, [im.size for im in imgs])
                    vals = None if by == "random" else token_values(sae, acts.image_tokens(b), by, weights)
                    masks = kept_pixels(vals, boxes, [im.size for im in imgs], p, seed=[seed, ids[i]])
                except InputError as e:
                    res.errors[i] = str(e)
                    continue
                res.images[i] = [blank(im, keep, seen, _fill_colour(fill, im, processor))
                                 for im, (keep, seen) in zip(imgs, masks)]
                n_seen = sum(int(seen.sum()) for _, seen in masks)
                res.kept_share[i] = sum(int((keep & seen).sum()) for keep, seen in masks) / max(n_seen, 1)
        bar.update(len(chunk))
    bar.close()
    return res


def filter_dataset(model, processor, sae, ds, *, keep_percent: float, by="l0", weights=None, layer=None,
                   fill: str = "mean", seed: int = 0, batch_size: int = 8, mode: str = "prompt"):
    """A ``datasets.Dataset`` like ``ds`` with its image column (``images`` or ``image``) filtered by
    :func:`filter_rows`, and a ``patch_filter_error`` column (None, or why the row kept its original images)."""
    import io

    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    from saev_curate.vlm.rows.batch import IMAGE_COLUMNS
    from saev_curate.vlm.rows.conversations import batch_to_rows

    check_keep_percent(keep_percent)
    col = next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)
    if col is None:
        raise InputError(f"the dataset has no image column to filter (looked for {', '.join(IMAGE_COLUMNS)}; it has "
                         f"{ds.column_names}); rename yours: ds.rename_column('<name>', 'image')")
    _check_by(by, sae, weights)
    feature = ds.features[col]
    listed = isinstance(feature, list) or hasattr(feature, "feature")
    # read the images undecoded (the filter decodes each itself, so a broken one is that row's error)
    src = ds.cast_column(col, datasets.List(datasets.Image(decode=False)) if listed else datasets.Image(decode=False)) \
        if isinstance(getattr(feature, "feature", feature), datasets.Image) else ds
    features = ds.features.copy()
    features[col] = datasets.List(datasets.Image()) if listed else datasets.Image()
    features[ERROR_COLUMN] = datasets.Value("string")

    def encode(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    def fn(batch, indices):
        rows = batch_to_rows(batch)
        r = filter_rows(model, processor, sae, rows, keep_percent=keep_percent, by=by, weights=weights, layer=layer,
                        fill=fill, seed=seed, batch_size=batch_size, mode=mode, row_ids=indices)
        new_col = []
        for row, imgs in zip(rows, r.images):
            orig = row[col]
            if imgs is None:
                new_col.append(orig)
            elif listed:
                it = iter(imgs)
                new_col.append([None if v is None else encode(next(it)) for v in orig])
            else:
                new_col.append(encode(imgs[0]))
        return {col: new_col, ERROR_COLUMN: r.errors}

    return src.map(fn, batched=True, batch_size=max(batch_size, 32), with_indices=True, features=features,
                   load_from_cache_file=False, new_fingerprint=generate_random_fingerprint(),
                   desc=f"patch filter ({by}, keep {keep_percent:g}%)")

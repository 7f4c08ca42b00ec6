"""Rows -> captured layer-L activations, for fitting and scoring: row iteration over any dataset type,
the seeded reference subset, and a re-iterable stream of captured batches."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from saev_curate.core.errors import InputError

__all__ = ["CapturedBatches", "capture_rows", "iter_rows", "reference_indices"]


def reference_indices(dataset, n: int | None, seed: int) -> list[int]:
    """Row ids of the reference subset: ``n`` rows sampled without replacement with ``seed``, in dataset order."""
    try:
        total = len(dataset)
    except TypeError:
        if n is None:
            raise InputError("fitting on a streaming dataset needs n_reference (the first n rows are used)")
        return list(range(n))
    if n is None or n >= total:
        return list(range(total))
    if n <= 0:
        raise InputError(f"n_reference must be positive, got {n}")
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=gen)[:n].tolist())


def iter_rows(dataset, indices: Sequence[int] | None = None) -> Iterator[tuple[int, dict]]:
    """(row id, row dict) for a Dataset, a list of dicts, or an iterable dataset."""
    if indices is None:
        if hasattr(dataset, "select") and hasattr(dataset, "__len__") and not isinstance(dataset, (list, tuple)):
            yield from iter_rows(dataset, range(len(dataset)))
            return
        if hasattr(dataset, "decode") and hasattr(dataset, "features") and dataset.features is not None:
            from saev_curate.io.datasets import has_image_feature

            if any(has_image_feature(f) for f in dataset.features.values()):
                dataset = dataset.decode(False)  # streaming: images decoded per row by the library
        for i, row in enumerate(dataset):
            yield i, row
        return
    if hasattr(dataset, "select") and hasattr(dataset, "__len__") and not isinstance(dataset, (list, tuple)):
        from saev_curate.io.datasets import raw_rows

        for a in range(0, len(indices), 64):  # images undecoded: decoded per row, a bad one is that row's error
            chunk = list(indices[a:a + 64])
            yield from zip(chunk, raw_rows(dataset, chunk))
        return
    if isinstance(dataset, (list, tuple)):
        for i in indices:
            yield i, dataset[i]
        return
    wanted = set(indices)
    last = max(indices) if indices else -1
    for i, row in enumerate(dataset):
        if i > last:
            break
        if i in wanted:
            yield i, row


class CapturedBatches:
    """Re-iterable stream of captured batches over fixed rows; on the second and later iterations,
    batches holding no row of ``only_rows`` are not run through the model (their row count is kept)."""

    def __init__(self, model, processor, dataset, indices: list[int], layer: int, *, batch_size: int,
                 max_length: int | None, exclude_special_tokens: bool, progress: bool, mode: str = "prompt"):
        self.model, self.processor, self.dataset = model, processor, dataset
        self.indices, self.layer, self.batch_size = indices, layer, batch_size
        self.max_length, self.exclude_special_tokens = max_length, exclude_special_tokens
        self.progress, self.mode = progress, mode
        self.n_passes = 0
        self.n_skipped = 0
        self.skipped_examples: list[str] = []
        self.errors: list[str] = []  # every row error of the first pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_rows_subset(None)

    def iter_rows_subset(self, only_rows: set[int] | None) -> Iterator[dict[str, Any]]:
        """Captured batches; with ``only_rows``, batches holding none of them are skipped unrun.
        Batches are always formed from the same consecutive rows, so residuals are reproduced exactly."""
        self.n_passes += 1
        first = self.n_passes == 1
        chunk: list[tuple[int, dict]] = []
        rows_iter = iter_rows(self.dataset, self.indices)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(self.indices), desc=f"cross-modal fit, pass {self.n_passes}", unit="row")
        try:
            for item in rows_iter:
                chunk.append(item)
                if len(chunk) == self.batch_size:
                    yield from self._run(chunk, first, only_rows)
                    if bar is not None:
                        bar.update(len(chunk))
                    chunk = []
            if chunk:
                yield from self._run(chunk, first, only_rows)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def _run(self, chunk: list[tuple[int, dict]], first: bool, only_rows: set[int] | None = None
             ) -> Iterator[dict[str, Any]]:
        ids = [i for i, _ in chunk]
        if only_rows is not None and not any(i in only_rows for i in ids):
            return
        rows = [r for _, r in chunk]
        acts, kept, errors = capture_rows(self.model, self.processor, rows, self.layer, mode=self.mode,
                                          max_length=self.max_length,
                                          exclude_special_tokens=self.exclude_special_tokens)
        if first:
            for i, e in zip(ids, errors):
                if e is not None:
                    self.n_skipped += 1
                    self.errors.append(e)
                    if len(self.skipped_examples) < 5:
                        self.skipped_examples.append(f"row {i}: {e}")
        if acts is None:
            return
        yield {"resid": acts.resid, "image_mask": acts.image_mask, "text_mask": acts.text_mask,
               "attention_mask": acts.attention_mask, "input_ids": acts.input_ids, "row_ids": [ids[k] for k in kept]}


def capture_rows(model, processor, rows: list[dict], layer: int | str, *, mode: str = "prompt",
                 max_length: int | None = None, exclude_special_tokens: bool = False,
                 max_image_pixels: int | None = None):
    """prepare_batch + capture_activations for a list of rows (a row beyond the model's context, or with an
    image over ``max_image_pixels``, is that row's error).

    Returns ``(activations or None, kept row indices, per-row error or None)``.
    """
    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.layers import context_length
    from saev_curate.vlm.rows import prepare_batch

    prep = prepare_batch(processor, rows, mode=mode, max_length=max_length, on_error="record",
                         max_context=context_length(model), max_image_pixels=max_image_pixels)
    errors = list(prep.row_errors)
    if prep.inputs is None or not prep.kept:
        return None, [], errors
    with torch.no_grad():
        acts = capture_activations(model, prep, layer, exclude_special_tokens=exclude_special_tokens,
                                   processor=processor)
    return acts, list(prep.kept), errors

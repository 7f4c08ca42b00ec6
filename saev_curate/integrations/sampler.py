"""A training sampler whose selection can change while an epoch is being drawn.

Why not a ``RandomSampler`` subclass: accelerate replaces any ``RandomSampler`` with its own
``SeedableRandomSampler`` (``use_seedable_sampler``).  Why not ``WeightedRandomSampler``: it draws
every index when the epoch starts, so changing its weights mid-epoch does nothing.
:class:`SelectionSampler.__iter__` is a generator that reads the current selection at each draw.

Determinism (what makes resume and several processes work):

* every draw is a pure function of ``(seed, epoch, position, segments)``; a *segment* is a selection
  with the position from which it applies.  A selection set at draw position ``p`` applies from the
  next multiple of ``group_size`` (= per-device batch size x number of processes), so that every
  rank, whose position differs by less than one group, switches at the same draw;
* inside a segment, a ``"top"`` selection is drawn as consecutive random permutations of the
  selected rows (each row once per cycle); a weighted selection by sampling with replacement;
* the first segment of an epoch that has never been re-selected draws ``torch.randperm(n)`` with a
  generator seeded ``seed + epoch``: exactly what accelerate's ``SeedableRandomSampler`` draws, so a
  run whose selection never changes draws the rows a run without this sampler draws.

The length never changes (a ``DataLoader`` reads it once): a selection changes *which* rows are
drawn, never how many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["SelectionSampler", "Segment"]


@dataclass
class Segment:
    """A selection and the draw position (within the epoch) from which it applies."""

    start: int
    version: int
    rows: np.ndarray | None = None  # sorted row indices (None = every row)
    weights: np.ndarray | None = None  # per-row sampling weights over all rows (None = uniform over `rows`)


def _segment_seed(seed: int, epoch: int, version: int) -> int:
    if version == 0:
        return int(seed) + int(epoch)  # SeedableRandomSampler's seed: the untouched run draws the same rows
    return int(np.random.SeedSequence([abs(int(seed)), int(epoch), int(version)]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class _SegmentDraws:
    """The infinite, deterministic draw sequence of one segment."""

    def __init__(self, seg: Segment, n_rows: int, seed: int, epoch: int):
        self.gen = torch.Generator().manual_seed(_segment_seed(seed, epoch, seg.version))
        self.rows = seg.rows
        self.weights = None if seg.weights is None else torch.as_tensor(seg.weights, dtype=torch.float64)
        self.n = n_rows if seg.rows is None else len(seg.rows)
        self.buf: list[int] = []

    def next(self) -> int:
        if not self.buf:
            if self.weights is not None:
                self.buf = torch.multinomial(self.weights, 1024, replacement=True, generator=self.gen).tolist()
            else:
                perm = torch.randperm(self.n, generator=self.gen).tolist()
                self.buf = perm if self.rows is None else self.rows[perm].tolist()
            self.buf.reverse()
        return int(self.buf.pop())


class SelectionSampler(Sampler[int]):
    """Draws ``num_samples`` row indices per epoch from a selection that may change at any draw.

    ``n_rows``: rows in the dataset; ``num_samples``: draws per epoch (default ``n_rows``);
    ``seed``: use ``args.data_seed or args.seed`` under a ``Trainer``; ``group_size``: the number of
    draws all processes consume per batch (per-device batch size x world size).  Call
    :meth:`set_selection` to change the rows drawn; :meth:`set_epoch` is called by the Trainer.
    ``record``: set to a list to append ``(epoch, position, row)`` for every draw (for tests).
    """

    def __init__(self, n_rows: int, *, seed: int = 0, num_samples: int | None = None, group_size: int = 1):
        if n_rows < 1:
            raise ValueError(f"SelectionSampler needs at least one row (n_rows={n_rows})")
        self.n_rows = int(n_rows)
        self.num_samples = int(num_samples) if num_samples is not None else self.n_rows
        if self.num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be positive")
        self.seed = int(seed)
        self.group_size = max(1, int(group_size))
        self.epoch = 0
        self.version = 0
        self.position = 0  # draws made so far in the epoch being iterated
        self.segments: list[Segment] = [Segment(0, 0)]
        self.segments_epoch = 0
        self.record: list | None = None

    # -------------------------------------------------------------- selection
    @property
    def selection(self) -> Segment:
        """The latest selection (it applies from ``selection.start`` in the current epoch)."""
        return self.segments[-1]

    def set_selection(self, rows: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> int:
        """Draw only ``rows`` (or every row when None), or by ``weights`` (one per dataset row, >= 0).

        Returns the draw position of the current epoch from which the new selection applies.
        """
        if rows is not None and weights is not None:
            raise ValueError("give rows or weights, not both")
        r = w = None
        if rows is not None:
            r = np.unique(np.asarray(rows, dtype=np.int64))
            if r.size == 0:
                raise ValueError("an empty selection cannot be drawn from")
            if r[0] < 0 or r[-1] >= self.n_rows:
                raise ValueError(f"selected rows must lie in [0, {self.n_rows})")
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (self.n_rows,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be {self.n_rows} finite values >= 0 with a positive sum")
        self.version += 1
        anchor = int(math.ceil(self.position / self.group_size)) * self.group_size
        self.segments = [s for s in self.segments if s.start < anchor] + [Segment(anchor, self.version, r, w)]
        return anchor

    # -------------------------------------------------------------- sampler protocol
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.segments_epoch != self.epoch:  # a new epoch starts from the latest selection
            last = self.segments[-1]
            self.segments = [Segment(0, last.version, last.rows, last.weights)]
            self.segments_epoch = self.epoch
        epoch = self.epoch
        self.position = 0
        current: tuple[int, int, _SegmentDraws] | None = None  # (segment start, version, draws)
        for i in range(self.num_samples):
            seg = next(s for s in reversed(self.segments) if s.start <= i)  # read at every draw
            if current is None or current[0] != seg.start or current[1] != seg.version:
                current = (seg.start, seg.version, _SegmentDraws(seg, self.n_rows, self.seed, epoch))
            row = current[2].next()
            self.position = i + 1
            if self.record is not None:
                self.record.append((epoch, i, row))
            yield row
        self.set_epoch(epoch + 1)

    # -------------------------------------------------------------- state
    def state_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(json-able metadata, arrays)`` that :meth:`load_state_arrays` restores."""
        meta = {"n_rows": self.n_rows, "num_samples": self.num_samples, "seed": self.seed,
                "group_size": self.group_size, "epoch": self.epoch, "version": self.version,
                "segments_epoch": self.segments_epoch,
                "segments": [{"start": s.start, "version": s.version, "rows": s.rows is not None,
                              "weights": s.weights is not None} for s in self.segments]}
        arrays = {}
        for k, s in enumerate(self.segments):
            if s.rows is not None:
                arrays[f"segment{k}_rows"] = s.rows
            if s.weights is not None:
                arrays[f"segment{k}_weights"] = s.weights
        return meta, arrays

    def load_state_arrays(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if int(meta["n_rows"]) != self.n_rows:
            raise ValueError(f"the saved selection is over {meta['n_rows']} rows, this dataset has {self.n_rows}")
        self.epoch = int(meta["epoch"])
        self.version = int(meta["version"])
        self.segments_epoch = int(meta["segments_epoch"])
        self.segments = [
            Segment(int(s["start"]), int(s["version"]),
                    np.asarray(arrays[f"segment{k}_rows"], dtype=np.int64) if s["rows"] else None,
                    np.asarray(arrays[f"segment{k}_weights"], dtype=np.float64) if s["weights"] else None)
            for k, s in enumerate(meta["segments"])]
        self.position = 0

"""Counting int64 keys over a stream in bounded memory: the tables behind the feature pairs and the read-outs.

Keys wait in a buffer of at most ``max(merge_every, half the table)`` entries (a merge re-sorts the table, so
the buffer grows with it: each key is sorted O(1) times amortised), then join a sorted table of
``(distinct key, count)``, so memory is the distinct keys kept plus the buffer, never everything observed.  Without a ``capacity`` the
counts are exact.  With one, the table is a *lossy count* (Manku & Motwani's lossy counting, with the pruning
floor raised on demand instead of per fixed bucket): when a merge leaves more than ``capacity`` distinct keys,
the floor ``F`` rises until at most half of them stay, and every key whose count could not exceed ``F`` is
dropped.  A key that joins the table later carries the floor at that moment as its possible loss.  What it costs
in exactness, for the final floor :attr:`KeyCounter.max_undercount` (0 while the cap was never reached):

* a kept key's count is low by at most ``F`` (``count <= true <= count + F``);
* a dropped (absent) key occurred at most ``F`` times; every key that occurred more than ``F`` times is kept.

A caller that knows an upper bound on any key's count (:attr:`KeyCounter.max_count`: the pair and read-out tables
see a key at most once per row, so the rows so far) tightens both: a key's possible loss never exceeds that bound
minus its count, and ``F`` never exceeds the bound (without it, ``F`` rises by one per prune, which at real shapes
happens several times within one row).

Memory: ``capacity`` x 16 bytes for the table, a buffer of at most half that many keys (8 bytes each) and the
merge's sort (about 3x table plus buffer, briefly): ~1.6 GB at the default capacity.

When every key lies in a small range ``[0, n_keys)`` (the feature pairs of an SAE with d_sae^2 <= 4 x capacity),
:class:`DenseCounter` keeps one int32 count per possible key instead: exact, no sorting (a row of 16M pairs costs a
scatter, not a merge of the whole table), in at most the memory the capped table would take.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saev_curate.core.errors import InputError
from saev_curate.curation.config import DEFAULT_CAPACITY

__all__ = ["DEFAULT_CAPACITY", "DenseCounter", "KeyCounter", "key_counter"]



class KeyCounter:
    """How often each int64 key occurred, merged as it goes; exact, or lossy beyond ``capacity`` distinct keys."""

    def __init__(self, *, capacity: int | None = DEFAULT_CAPACITY, merge_every: int = 1 << 22):
        if capacity is not None and (not isinstance(capacity, int) or capacity < 2):
            raise InputError(f"capacity must be None (exact counts) or an integer >= 2, got {capacity!r}")
        if not isinstance(merge_every, int) or merge_every < 1:
            raise InputError(f"merge_every must be a positive integer, got {merge_every!r}")
        self.capacity, self.merge_every = capacity, merge_every
        self.keys = torch.zeros(0, dtype=torch.long)  # distinct keys so far, sorted
        self.counts = torch.zeros(0, dtype=torch.int32)
        self.slack = torch.zeros(0, dtype=torch.int32)  # per key: how many occurrences it may have lost
        self.floor = 0  # F
        #: an upper bound on any key's true count, when the caller knows one (None: unknown)
        self.max_count: int | None = None
        self._pending: list[Tensor] = []
        self._n_pending = 0

    @property
    def max_undercount(self) -> int:
        """The most a kept key's count may be low by, and the most times a missing key may have occurred."""
        return self.floor if self.max_count is None else min(self.floor, self.max_count)

    @property
    def held(self) -> int:
        """Keys held in memory now: the distinct keys of the table plus the buffer."""
        return len(self.keys) + self._n_pending

    @property
    def buffer_size(self) -> int:
        """Keys the buffer holds before the next merge: ``max(merge_every, half the table)``."""
        return max(self.merge_every, len(self.keys) // 2)

    def add(self, keys: Tensor) -> None:
        """Count one occurrence of each entry of ``keys`` (int64, on any device; moved to the CPU)."""
        keys = keys.detach().to("cpu", torch.long).reshape(-1)
        step = self.buffer_size
        for s in range(0, len(keys), step):
            part = keys[s:s + step]
            if self._n_pending + len(part) > self.buffer_size:
                self.merge()
            self._pending.append(part)
            self._n_pending += len(part)

    def merge(self) -> None:
        """Join the buffer into the table (then prune it, when it holds more than ``capacity`` keys)."""
        if not self._pending:
            return
        pending = torch.cat(self._pending)
        self._pending, self._n_pending = [], 0
        n_old = len(self.keys)
        keys, inverse = torch.unique(torch.cat([self.keys, pending]), return_inverse=True)
        counts = torch.zeros(len(keys), dtype=torch.int32).scatter_add_(
            0, inverse, torch.cat([self.counts, torch.ones(len(pending), dtype=torch.int32)]))
        slack = torch.full((len(keys),), self.floor, dtype=torch.int32)
        if self.max_count is not None:  # a key's loss is at most the bound minus what it has
            slack = torch.minimum(slack, (self.max_count - counts).clamp_min(0))
        slack.scatter_(0, inverse[:n_old], self.slack)
        del inverse, pending
        self.keys, self.counts, self.slack = keys, counts, slack
        if self.capacity is not None and len(keys) > self.capacity:
            self._prune()

    def _prune(self) -> None:
        upper = self.counts.long() + self.slack
        target = self.capacity // 2
        floor = int(torch.kthvalue(upper, len(upper) - target).values)
        self.floor = max(self.floor, floor)
        if self.max_count is not None:
            self.floor = min(self.floor, self.max_count)
        keep = upper > self.floor
        self.keys, self.counts, self.slack = self.keys[keep], self.counts[keep], self.slack[keep]

    def result(self) -> tuple[Tensor, Tensor]:
        """``(keys, counts)``: the distinct keys kept, sorted, and their counts (int64; lower bounds when lossy)."""
        self.merge()
        return self.keys, self.counts.long()


class DenseCounter:
    """:class:`KeyCounter`'s interface over a small key range ``[0, n_keys)``: one int32 count per possible key,
    always exact (:attr:`max_undercount` 0), memory ``4 x n_keys`` bytes whatever the stream."""

    def __init__(self, n_keys: int):
        self.counts = torch.zeros(int(n_keys), dtype=torch.int32)
        self.max_count: int | None = None  # KeyCounter's interface: an exact count needs no bound
        self.max_undercount = 0
        self.buffer_size = 1 << 22  # keys a caller hands over at once (bounds its own temporaries)

    @property
    def held(self) -> int:
        """Counts held in memory: one per possible key."""
        return len(self.counts)

    def add(self, keys: Tensor) -> None:
        """Count one occurrence of each entry of ``keys`` (int64 in ``[0, n_keys)``, on any device)."""
        keys = keys.detach().to("cpu", torch.long).reshape(-1)
        self.counts.put_(keys, torch.ones(len(keys), dtype=torch.int32), accumulate=True)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(keys, counts)``: every key seen, sorted, and its count (int64), as :meth:`KeyCounter.result`."""
        keys = self.counts.nonzero().flatten()
        return keys, self.counts[keys].long()


def key_counter(n_keys: int, *, capacity: int | None = DEFAULT_CAPACITY, merge_every: int = 1 << 22
                ) -> "DenseCounter | KeyCounter":
    """The counter for keys in ``[0, n_keys)``: :class:`DenseCounter` (exact) when its ``4 x n_keys`` bytes are no
    more than the capped table's ``16 x capacity`` (without a cap: than the default cap's), else :class:`KeyCounter`
    with ``capacity``."""
    if n_keys <= 4 * (DEFAULT_CAPACITY if capacity is None else capacity):
        return DenseCounter(n_keys)
    return KeyCounter(capacity=capacity, merge_every=merge_every)

"""Cross-modal feature *pairs* (beyond the paper): which image features a text feature usually comes with.

The paper's ω rewards a feature that fires on both image and text tokens.  When image and text tokens
live in different parts of the residual stream (small or briefly trained models, early layers), few
features do (tens out of thousands), and a row's score is decided by those few.  Pairs generalise ω
from the diagonal to every (text feature a, image feature b): over the reference rows, a fires on the
row's content tokens (text after the image that the chat template did not write; see
:mod:`saev_curate.curation.agreement`) and b on its image tokens.  Their normalised pointwise mutual
information ``npmi(a, b) = log(p_ab / (p_a p_b)) / -log(p_ab)`` lies in [-1, 1]: 1 = they always come
together, 0 = independent, -1 = never together.  Like ω, it needs no labels: defective rows are a
minority of the reference rows, so the pairs they form stay rare.

A row's ``pair_agreement`` is the mean npmi over its (text feature, image feature) pairs, counting
only features seen on at least ``min_count`` reference rows (an unseen pair of two known features
counts as -1): "do the things this text says usually come with things like this image?".

Counting is bounded (:mod:`saev_curate.curation.counting`): an SAE with d_sae^2 <= 4 x ``capacity`` is counted
exactly in a dense d_sae x d_sae table; a wider one in a merged table, exact while at most ``capacity`` distinct
pairs occur, beyond that a lossy count whose worst undercount ``FeaturePairs.max_undercount`` says what it cost: a
kept pair's count is low by at most that many rows, and a pair seen on at most that many rows may be missing (it
then reads as never seen, -1).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saev_curate.curation.counting import DEFAULT_CAPACITY, DenseCounter, KeyCounter, key_counter

__all__ = ["FeaturePairs", "PairCounter"]


@dataclass
class FeaturePairs:
    """npmi of co-occurring (text feature, image feature) pairs, from reference-row counts."""

    keys: Tensor  # int64 [P], sorted: a * d_sae + b for every pair seen together at least once
    npmi: Tensor  # float32 [P]
    n_text: Tensor  # float32 [d_sae]: reference rows where the feature fired on content tokens
    n_image: Tensor  # float32 [d_sae]: reference rows where it fired on image tokens
    n_rows: int
    delta: float  # "fires" = activation > delta
    min_count: int
    max_undercount: int = 0  # 0: exact counts; else a lossy count's worst undercount (see the module doc)

    @property
    def d_sae(self) -> int:
        return int(self.n_text.shape[0])

    def matrix(self, text: Tensor, image: Tensor) -> Tensor:
        """``[len(text), len(image)]`` npmi of the given feature indices (-1 for pairs never seen together)."""
        q = (text[:, None].long() * self.d_sae + image[None, :].long()).reshape(-1)
        pos = torch.searchsorted(self.keys, q).clamp_max(max(len(self.keys) - 1, 0))
        found = (self.keys[pos] == q) if len(self.keys) else torch.zeros_like(q, dtype=torch.bool)
        vals = torch.where(found, self.npmi[pos] if len(self.keys) else torch.zeros(q.shape), torch.full(q.shape, -1.0))
        return vals.reshape(len(text), len(image))

    def _rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """The table by text feature (built once): ``offsets [d_sae + 1]`` (feature a's pairs are entries
        ``offsets[a]:offsets[a + 1]``), each entry's image feature, and its npmi + 1 (float64)."""
        if getattr(self, "_by_text", None) is None:
            starts = torch.arange(self.d_sae + 1, dtype=torch.long) * self.d_sae
            self._by_text = (torch.searchsorted(self.keys, starts), self.keys % self.d_sae, self.npmi.double() + 1.0)
        return self._by_text

    def lifted_sums(self, text: Tensor, image: Tensor, *, budget: int = 1 << 22) -> Tensor:
        """``[len(text)]`` float64: for each text feature a, the sum of ``npmi(a, b) + 1`` over the image features b
        of ``image [d_sae]`` (a bool mask) it was seen with; unseen pairs add 0, so the mean npmi over a's pairs with
        B is ``sums[a] / |B| - 1``.  Costs one pass over the given features' own table entries (gathered ``budget``
        at a time) or, when they are more than a sixteenth of the table, one sparse product with the whole table
        (~15x cheaper per entry): never |text| x |B| look-ups."""
        offsets, image_of, lifted = self._rows()
        text = text.long()
        lo, n = offsets[text], offsets[text + 1] - offsets[text]
        if 16 * int(n.sum()) > len(self.keys):
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                table = torch.sparse_csr_tensor(offsets, image_of, lifted, (self.d_sae, self.d_sae))
                return (table @ image.double())[text]
        out = torch.zeros(len(text), dtype=torch.float64)
        ends = torch.cumsum(n, 0)
        first = 0
        while first < len(text):  # the next text features whose entries fit the budget (at least one)
            last = max(first + 1, int(torch.searchsorted(ends, ends[first] - n[first] + budget, right=True)))
            m = n[first:last]
            if int(m.sum()):
                owner = torch.repeat_interleave(torch.arange(first, last), m)
                idx = lo[owner] + torch.arange(int(m.sum())) - (torch.cumsum(m, 0) - m)[owner - first]
                hit = image[image_of[idx]]
                out.index_add_(0, owner[hit], lifted[idx[hit]])
            first = last
        return out

    def _known(self, text_max: Tensor, image_max: Tensor) -> tuple[Tensor, Tensor]:
        a = (text_max.cpu() > self.delta) & (self.n_text >= self.min_count)
        b = (image_max.cpu() > self.delta) & (self.n_image >= self.min_count)
        return a, b

    def agreement(self, text_max: Tensor, image_max: Tensor) -> float | None:
        """Mean npmi over the row's known (text, image) feature pairs; None when it has none."""
        a, b = self._known(text_max, image_max)
        n_a, n_b = int(a.sum()), int(b.sum())
        if not n_a or not n_b:
            return None
        return float(self.lifted_sums(a.nonzero().flatten(), b).sum() / (n_a * n_b) - 1.0)

    def agreement_each(self, text_max: Tensor, image_max: Tensor) -> list[float | None]:
        """:meth:`agreement` of every row of ``text_max [N, d_sae]`` with the one ``image_max [d_sae]``, with one
        pass over the table for all N (a response's tokens against its answer slot)."""
        a, b = self._known(text_max, image_max[None, :])
        n_b = int(b.sum())
        if not n_b or not bool(a.any()):
            return [None] * int(text_max.shape[0])
        used = a.any(0).nonzero().flatten()
        sums = a[:, used].double() @ self.lifted_sums(used, b[0])
        n_a = a.sum(1).tolist()
        return [None if n == 0 else float(s / (n * n_b) - 1.0) for s, n in zip(sums.tolist(), n_a)]

    def summary(self) -> dict:
        out = {"n_rows": self.n_rows, "n_pairs": int(len(self.keys)), "delta": self.delta, "min_count": self.min_count,
               "text_features": int((self.n_text >= self.min_count).sum()),
               "image_features": int((self.n_image >= self.min_count).sum())}
        if self.max_undercount:  # only when lossy: exact tables keep their old summaries (and fingerprints)
            out["max_undercount"] = self.max_undercount
        return out


class PairCounter:
    """Accumulates per-row feature sets over reference rows; :meth:`result` turns counts into npmi.

    Counts merge as they go (:class:`~saev_curate.curation.counting.KeyCounter`): a row's pairs wait in a buffer of
    at most ``max(merge_every, half the table)`` keys (a row with more is cut into slices of its text features), then
    join the running
    ``(distinct pair, count)`` table, so memory is the distinct pairs kept plus the buffer, not rows x pairs per
    row.  ``capacity`` caps the distinct pairs kept (None: no cap, exact at any size; the default is exact for
    every SAE with d_sae^2 <= capacity, see the module doc for what a reached cap costs).  An SAE with d_sae^2 <=
    4 x capacity (d_sae <= 11,585 at the default) is counted in a dense d_sae x d_sae int32 table instead
    (:func:`~saev_curate.curation.counting.key_counter`): exact, and no larger than the capped table;
    ``dense`` True / False forces one or the other (None: chosen by size)."""

    def __init__(self, d_sae: int, *, delta: float = 0.0, min_count: int = 5, merge_every: int = 1 << 22,
                 capacity: int | None = DEFAULT_CAPACITY, dense: bool | None = None):
        self.d_sae, self.delta, self.min_count = d_sae, float(delta), int(min_count)
        self.merge_every = int(merge_every)
        self.n_text = torch.zeros(d_sae, dtype=torch.float64)
        self.n_image = torch.zeros(d_sae, dtype=torch.float64)
        self.n_rows = 0
        if dense is None:
            self._table = key_counter(d_sae * d_sae, capacity=capacity, merge_every=self.merge_every)
        else:
            self._table = (DenseCounter(d_sae * d_sae) if dense
                           else KeyCounter(capacity=capacity, merge_every=self.merge_every))

    @property
    def held_keys(self) -> int:
        """Pair keys held in memory now: the distinct pairs merged so far plus the buffer."""
        return self._table.held

    @property
    def max_undercount(self) -> int:
        """0 while the counts are exact; else the most any kept count may be low by (the lossy floor)."""
        return self._table.max_undercount

    def observe(self, text_max: Tensor, image_max: Tensor) -> None:
        """One row: the maximum activation of every feature over its content tokens / image tokens."""
        a = (text_max.cpu() > self.delta).nonzero().flatten()
        b = (image_max.cpu() > self.delta).nonzero().flatten()
        self.n_rows += 1
        self._table.max_count = self.n_rows  # a pair occurs at most once per row
        self.n_text[a] += 1
        self.n_image[b] += 1
        if len(a) and len(b):
            step = max(1, self._table.buffer_size // len(b))  # never materialise more than one buffer of a row's pairs
            for s in range(0, len(a), step):
                self._table.add((a[s:s + step, None] * self.d_sae + b[None, :]).reshape(-1))

    def result(self) -> FeaturePairs:
        keys, counts = self._table.result()
        n = max(self.n_rows, 1)
        p_ab = counts.double() / n
        p_a = self.n_text[keys // self.d_sae] / n
        p_b = self.n_image[keys % self.d_sae] / n
        npmi = torch.log(p_ab / (p_a * p_b)) / (-torch.log(p_ab))
        npmi = torch.where(p_ab >= 1.0, torch.ones_like(npmi), npmi)  # always together: log 1 / -log 1
        npmi = torch.nan_to_num(npmi, nan=1.0).clamp(-1.0, 1.0)
        return FeaturePairs(keys=keys, npmi=npmi.float(), n_text=self.n_text.float(), n_image=self.n_image.float(),
                            n_rows=self.n_rows, delta=self.delta, min_count=self.min_count,
                            max_undercount=self._table.max_undercount)

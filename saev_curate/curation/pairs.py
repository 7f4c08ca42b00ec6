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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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

    def agreement(self, text_max: Tensor, image_max: Tensor) -> float | None:
        """Mean npmi over the row's known (text, image) feature pairs; None when it has none."""
        a = ((text_max.cpu() > self.delta) & (self.n_text >= self.min_count)).nonzero().flatten()
        b = ((image_max.cpu() > self.delta) & (self.n_image >= self.min_count)).nonzero().flatten()
        if not len(a) or not len(b):
            return None
        return float(self.matrix(a, b).double().mean())

    def summary(self) -> dict:
        return {"n_rows": self.n_rows, "n_pairs": int(len(self.keys)), "delta": self.delta, "min_count": self.min_count,
                "text_features": int((self.n_text >= self.min_count).sum()),
                "image_features": int((self.n_image >= self.min_count).sum())}


class PairCounter:
    """Accumulates per-row feature sets over reference rows; :meth:`result` turns counts into npmi.

    Counts merge as they go: a row's pairs wait in a buffer of at most ``merge_every`` keys, then join the running
    ``(distinct pair, count)`` table, so memory is the distinct pairs seen plus the buffer, not rows x pairs per row
    (exact: the same counts as counting everything at the end)."""

    def __init__(self, d_sae: int, *, delta: float = 0.0, min_count: int = 5, merge_every: int = 1 << 22):
        self.d_sae, self.delta, self.min_count = d_sae, float(delta), int(min_count)
        self.merge_every = int(merge_every)
        self.n_text = torch.zeros(d_sae, dtype=torch.float64)
        self.n_image = torch.zeros(d_sae, dtype=torch.float64)
        self.n_rows = 0
        self._keys = torch.zeros(0, dtype=torch.long)  # distinct pairs so far, sorted
        self._counts = torch.zeros(0, dtype=torch.long)
        self._pending: list[Tensor] = []
        self._n_pending = 0

    @property
    def held_keys(self) -> int:
        """Pair keys held in memory now: the distinct pairs merged so far plus the buffer."""
        return len(self._keys) + self._n_pending

    def observe(self, text_max: Tensor, image_max: Tensor) -> None:
        """One row: the maximum activation of every feature over its content tokens / image tokens."""
        a = (text_max.cpu() > self.delta).nonzero().flatten()
        b = (image_max.cpu() > self.delta).nonzero().flatten()
        self.n_rows += 1
        self.n_text[a] += 1
        self.n_image[b] += 1
        if len(a) and len(b):
            keys = (a[:, None] * self.d_sae + b[None, :]).reshape(-1)
            if self._n_pending + len(keys) > self.merge_every:
                self._merge()
            self._pending.append(keys)
            self._n_pending += len(keys)

    def _merge(self) -> None:
        if not self._pending:
            return
        pending = torch.cat(self._pending)
        keys, inverse = torch.unique(torch.cat([self._keys, pending]), return_inverse=True)
        weights = torch.cat([self._counts, torch.ones(len(pending), dtype=torch.long)])
        self._keys, self._counts = keys, torch.zeros(len(keys), dtype=torch.long).scatter_add_(0, inverse, weights)
        self._pending, self._n_pending = [], 0

    def result(self) -> FeaturePairs:
        self._merge()
        keys, counts = self._keys, self._counts
        n = max(self.n_rows, 1)
        p_ab = counts.double() / n
        p_a = self.n_text[keys // self.d_sae] / n
        p_b = self.n_image[keys % self.d_sae] / n
        npmi = torch.log(p_ab / (p_a * p_b)) / (-torch.log(p_ab))
        npmi = torch.where(p_ab >= 1.0, torch.ones_like(npmi), npmi)  # always together: log 1 / -log 1
        npmi = torch.nan_to_num(npmi, nan=1.0).clamp(-1.0, 1.0)
        return FeaturePairs(keys=keys, npmi=npmi.float(), n_text=self.n_text.float(), n_image=self.n_image.float(),
                            n_rows=self.n_rows, delta=self.delta, min_count=self.min_count)

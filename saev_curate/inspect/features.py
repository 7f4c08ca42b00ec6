"""Streaming per-feature statistics of an SAE over a dataset, in memory bounded by the features, not the rows.

What a feature page needs, accumulated batch by batch (:class:`FeatureStats`), never holding all activations:

* how often each feature fires (tokens and rows), its mean activation over the tokens it fires on, on image and
  on text tokens;
* an activation histogram per feature (:class:`RunningHistogram`: fixed bins over a range that doubles when a
  larger value arrives, merging bin pairs, so the counts are exact for the final bins);
* the top-k rows by the feature's maximum activation in the row, each with the feature's value at every token
  (a streaming top-k: the kept rows and the batch's rows compete, the k best stay);
* a uniform sample of the rows the feature fires on (priority sampling: every firing row draws a random key, the
  ``sample`` smallest keys stay), split into activation quantile bands when the page is written;
* how often two features fire in the same row (co-occurrence counts, ``d_sae`` x ``d_sae``, up to
  ``max_cooccur_features`` features);
* per feature, in how many firing rows each concept label holds (a row's labels, e.g. the testbed's
  ``digit=7``), for concept precision (:mod:`saev_curate.inspect.labels`).

Memory: ``d_sae x (top_k + sample) x longest sequence`` for the examples, ``d_sae x bins`` for the histograms,
``d_sae^2`` for co-occurrence, ``d_sae x concepts`` for the labels; nothing grows with the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Examples", "FeatureStats", "RunningHistogram"]


class RunningHistogram:
    """Per-feature histogram of positive values with ``n_bins`` equal bins over ``[0, range)``.

    Each feature's range starts at the power of two above its first value and doubles (adjacent bin pairs merge)
    whenever a larger value arrives, so at the end ``counts[f, i]`` is exactly the number of values of feature
    ``f`` in ``[i, i + 1) * range[f] / n_bins``."""

    def __init__(self, d_sae: int, n_bins: int = 32):
        if n_bins < 2 or n_bins & (n_bins - 1):
            raise ValueError(f"n_bins={n_bins}: use a power of two (bins merge in pairs when the range doubles)")
        self.n_bins = n_bins
        self.counts = torch.zeros(d_sae, n_bins, dtype=torch.int64)
        self.range = torch.zeros(d_sae, dtype=torch.float64)  # 0 = no value yet

    def add(self, features: Tensor, values: Tensor) -> None:
        """Count ``values[i] > 0`` of feature ``features[i]``."""
        keep = values > 0
        features, values = features[keep].long(), values[keep].double()
        if not len(values):
            return
        top = torch.zeros_like(self.range).scatter_reduce_(0, features, values, "amax")
        need = (top >= self.range) & (top > 0)
        if bool(need.any()):
            fresh = need & (self.range == 0)
            # the power of two strictly above the value: a value equal to the range falls in the last bin's right
            self.range[fresh] = torch.exp2(torch.floor(torch.log2(top[fresh])) + 1)
            while True:
                grow = ((top >= self.range) & (top > 0)).nonzero().flatten()
                if not len(grow):
                    break
                c = self.counts[grow]
                merged = c.view(len(grow), self.n_bins // 2, 2).sum(-1)
                self.counts[grow] = torch.cat([merged, torch.zeros_like(merged)], 1)
                self.range[grow] *= 2
        idx = torch.clamp((values / self.range[features] * self.n_bins).long(), max=self.n_bins - 1)
        flat = features * self.n_bins + idx
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def edges(self, feature: int) -> list[float]:
        """The ``n_bins + 1`` bin edges of ``feature`` (all zero when it never fired)."""
        r = float(self.range[feature])
        return [r * i / self.n_bins for i in range(self.n_bins + 1)]


@dataclass
class Examples:
    """Kept rows per feature: ``value [F, K]`` (-inf = empty slot), ``row [F, K]`` (-1 = empty), and per kept row
    the feature's activation at each token ``tokens [F, K, T]``, the token ids ``ids [F, K, T]`` (-1 = padding)
    and which tokens are image tokens ``is_image [F, K, T]``."""

    value: Tensor
    row: Tensor
    tokens: Tensor
    ids: Tensor
    is_image: Tensor

    @classmethod
    def empty(cls, d_sae: int, k: int, t: int = 1) -> "Examples":
        return cls(torch.full((d_sae, k), -torch.inf), torch.full((d_sae, k), -1, dtype=torch.long),
                   torch.zeros(d_sae, k, t), torch.full((d_sae, k, t), -1, dtype=torch.int32),
                   torch.zeros(d_sae, k, t, dtype=torch.bool))

    def width(self, t: int) -> None:
        """Pad the token axis to at least ``t`` positions."""
        have = self.tokens.shape[2]
        if t > have:
            pad = t - have
            self.tokens = torch.nn.functional.pad(self.tokens, (0, pad))
            self.ids = torch.nn.functional.pad(self.ids, (0, pad), value=-1)
            self.is_image = torch.nn.functional.pad(self.is_image, (0, pad))

    def keep(self, own_key: Tensor, cand_key: Tensor, value: Tensor, row: Tensor, tokens: Tensor, ids: Tensor,
             is_image: Tensor, *, largest: bool) -> Tensor:
        """Merge a batch's candidates (``cand_key [F, B]``, ``value [F, B]``, ``row [B]``, ``tokens [F, B, T]``,
        ``ids``/``is_image [B, T]``) with the kept slots whose keys are ``own_key [F, K]``: the ``K`` best keys stay
        (largest or smallest).  Returns the kept keys."""
        F, K = self.value.shape
        B, T = ids.shape
        self.width(T)
        T = self.tokens.shape[2]
        keys = torch.cat([own_key, cand_key], 1)
        best = keys.topk(K, dim=1, largest=largest).indices  # [F, K] into [0, K + B)
        pad = T - tokens.shape[2]
        tokens = torch.nn.functional.pad(tokens, (0, pad))
        ids = torch.nn.functional.pad(ids.to(torch.int32), (0, pad), value=-1)
        is_image = torch.nn.functional.pad(is_image, (0, pad))
        idx3 = best[:, :, None].expand(F, K, T)
        self.tokens = torch.cat([self.tokens, tokens], 1).gather(1, idx3)
        self.value = torch.cat([self.value, value], 1).gather(1, best)
        self.row = torch.cat([self.row, row[None, :].expand(F, B)], 1).gather(1, best)
        from_batch = best - K  # >= 0: the batch row it came from
        src = from_batch.clamp_min(0)
        ids_b, img_b = ids[src], is_image[src]  # [F, K, T]
        old = from_batch < 0
        self.ids = torch.where(old[:, :, None], self.ids.gather(1, idx3.clamp_max(K - 1)), ids_b)
        self.is_image = torch.where(old[:, :, None], self.is_image.gather(1, idx3.clamp_max(K - 1)), img_b)
        return keys.gather(1, best)


class FeatureStats:
    """Accumulates what the feature pages show over batches of SAE codes (see the module docstring)."""

    def __init__(self, d_sae: int, *, top_k: int = 20, sample: int = 20, n_bins: int = 32,
                 max_cooccur_features: int = 8192, seed: int = 0):
        self.d_sae, self.top_k, self.sample_size = d_sae, top_k, sample
        self.n_rows = 0
        self.n_tokens = 0
        self.n_image_tokens = 0
        self.rows_firing = torch.zeros(d_sae, dtype=torch.int64)
        self.tokens_firing = torch.zeros(d_sae, dtype=torch.int64)
        self.image_tokens_firing = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_max = torch.zeros(d_sae, dtype=torch.float64)
        self.histogram = RunningHistogram(d_sae, n_bins)
        self.top = Examples.empty(d_sae, top_k)
        self.sample = Examples.empty(d_sae, sample)
        self._sample_key = torch.full((d_sae, sample), torch.inf)
        self.cooccur = torch.zeros(d_sae, d_sae, dtype=torch.float32) if d_sae <= max_cooccur_features else None
        self.concepts: dict[str, int] = {}
        self.concept_rows = torch.zeros(0, dtype=torch.int64)
        self.concept_counts = torch.zeros(d_sae, 0, dtype=torch.int64)
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def observe(self, z: Tensor, valid: Tensor, is_image: Tensor, input_ids: Tensor, row_ids: list[int],
                concepts: list[list[str]] | None = None) -> None:
        """One batch: SAE codes ``z [B, T, F]`` (dense), ``valid [B, T]`` (tokens that count: not padding),
        ``is_image [B, T]``, ``input_ids [B, T]``, the dataset row of each batch row, and optionally each row's
        concept labels."""
        z = z.float().cpu()
        valid, is_image = valid.cpu().bool(), is_image.cpu().bool()
        z = z * valid[:, :, None]
        B = z.shape[0]
        self.n_rows += B
        self.n_tokens += int(valid.sum())
        self.n_image_tokens += int((valid & is_image).sum())
        fires = z > 0  # [B, T, F]
        self.tokens_firing += fires.sum((0, 1))
        self.image_tokens_firing += (fires & is_image[:, :, None]).sum((0, 1))
        self.act_sum += z.double().sum((0, 1))
        row_max = z.amax(1)  # [B, F]
        self.act_max = torch.maximum(self.act_max, row_max.amax(0).double())
        fired = row_max > 0
        self.rows_firing += fired.sum(0)
        nz = fires.nonzero()
        self.histogram.add(nz[:, 2], z[fires])
        rows = torch.tensor(row_ids, dtype=torch.long)
        zt = z.permute(2, 0, 1)  # [F, B, T]
        ids = input_ids.cpu().masked_fill(~valid, -1)
        cand = row_max.T.masked_fill(~fired.T, -torch.inf)  # [F, B]
        self.top.keep(self.top.value, cand, cand, rows, zt, ids, is_image, largest=True)
        self.top.row.masked_fill_(torch.isinf(self.top.value), -1)
        keys = torch.rand(self.d_sae, B, generator=self._gen).masked_fill(~fired.T, torch.inf)
        self._sample_key = self.sample.keep(self._sample_key, keys, row_max.T, rows, zt, ids, is_image,
                                            largest=False)
        self.sample.value.masked_fill_(torch.isinf(self._sample_key), -torch.inf)
        self.sample.row.masked_fill_(torch.isinf(self._sample_key), -1)
        f = fired.float()
        if self.cooccur is not None:
            self.cooccur += f.T @ f
        if concepts is not None:
            self._observe_concepts(fired, concepts)

    def _observe_concepts(self, fired: Tensor, concepts: list[list[str]]) -> None:
        for labels in concepts:
            for c in labels:
                if c not in self.concepts:
                    self.concepts[c] = len(self.concepts)
        C = len(self.concepts)
        if C > self.concept_counts.shape[1]:
            grow = C - self.concept_counts.shape[1]
            self.concept_counts = torch.nn.functional.pad(self.concept_counts, (0, grow))
            self.concept_rows = torch.nn.functional.pad(self.concept_rows, (0, grow))
        onehot = torch.zeros(len(concepts), C)
        for b, labels in enumerate(concepts):
            for c in labels:
                onehot[b, self.concepts[c]] = 1
        self.concept_rows += onehot.sum(0).long()
        self.concept_counts += (fired.float().T @ onehot).round().long()

    # ------------------------------------------------------------------ views
    @property
    def live(self) -> Tensor:
        """Indices of the features that fired at least once."""
        return (self.rows_firing > 0).nonzero().flatten()

    def frequency(self) -> Tensor:
        """Share of counted tokens on which each feature fires (Neuronpedia's ``frac_nonzero``)."""
        return self.tokens_firing.double() / max(self.n_tokens, 1)

    def mean_activation(self) -> Tensor:
        """Each feature's mean activation over the tokens it fires on (0 when it never fires)."""
        return self.act_sum / self.tokens_firing.clamp_min(1).double()

    def image_share(self) -> Tensor:
        """Share of each feature's firing tokens that are image tokens."""
        return self.image_tokens_firing.double() / self.tokens_firing.clamp_min(1).double()

    def cooccurring(self, feature: int, top: int = 8) -> list[dict]:
        """The features firing in the same rows as ``feature`` most often, by Jaccard index of their row sets."""
        if self.cooccur is None or self.rows_firing[feature] == 0:
            return []
        both = self.cooccur[feature].double()
        union = self.rows_firing.double() + float(self.rows_firing[feature]) - both
        jac = torch.where(union > 0, both / union.clamp_min(1), torch.zeros_like(both))
        jac[feature] = -1
        vals, idx = jac.topk(min(top, self.d_sae - 1))
        return [{"feature": int(i), "jaccard": float(v), "rows_together": int(both[i])}
                for v, i in zip(vals.tolist(), idx.tolist()) if v > 0]

    def quantile_bands(self, feature: int, n_bands: int = 4) -> list[dict]:
        """The sampled firing rows of ``feature`` split into ``n_bands`` bands by activation quantile (highest
        first): each band's ``bin_min``/``bin_max`` activation, its share of the sample and the slots it holds."""
        ok = (self.sample.row[feature] >= 0).nonzero().flatten()
        if not len(ok):
            return []
        vals = self.sample.value[feature, ok]
        order = ok[vals.argsort(descending=True)]
        chunks = [c for c in torch.tensor_split(order, min(n_bands, len(order))) if len(c)]
        return [{"slots": c.tolist(), "bin_min": float(self.sample.value[feature, c].min()),
                 "bin_max": float(self.sample.value[feature, c].max()), "bin_contains": len(c) / len(order)}
                for c in chunks]

"""Cross-modal feature weights ω (stages 1-2 of SAE-V, method doc section 4).

For every SAE feature k, over a reference set fed as image + prompt:

1. every token keeps its top-``top_features_per_token`` (50) features by activation;
2. feature k keeps its global top-``top_tokens_per_feature`` (30) tokens among those records;
3. among them, the first ``tokens_per_modality`` (5) text and 5 image tokens (activation order);
   with fewer than 5 of either, ω_k is undefined (NaN);
4. ω_k = mean of the 5x5 cosines of the *raw residual vectors* h of those tokens
   = dot(mean unit text vector, mean unit image vector).

Streaming, exact, bounded memory.  Pass 1 keeps only scalars per feature (the top-30 activations and
the token keys); pass 2 re-runs the *same* batches (only those holding a selected token) and adds the
unit vectors of the selected tokens into two running sums per cross-modal feature.  Memory is
O(d_sae x 30) scalars + O(n_cross_modal x d_in); it never holds residual vectors per feature.

Deterministic tie rules (the brute-force reference in the tests uses the same ones):

* per token, among equal activations the lower feature index ranks first;
* per feature, among equal activations the earlier token ranks first, where tokens are ordered by
  (reference row in iteration order, position in the row's unpadded sequence).

Deliberate deviation from the reference code: only strictly positive activations are recorded
(``min_activation=0``).  The reference code's ``topk(50)`` also records zero activations, which lets a
feature that never fires get a "top token" list (and even an ω) from arbitrary tokens.

Feature classes: ``dead`` (never recorded), ``text`` / ``image`` (all recorded top tokens of one
modality), ``mixed`` (both, but fewer than 5 of one: ω undefined), ``cross_modal`` (ω defined).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saev_curate.core.errors import InputError, SaevError

__all__ = ["CLASS_NAMES", "CrossModalFitter", "TokenBatch", "flatten_tokens", "token_keys", "token_top_features"]

CLASS_NAMES: tuple[str, ...] = ("dead", "text", "image", "mixed", "cross_modal")
DEAD, TEXT, IMAGE, MIXED, CROSS_MODAL = range(5)

_POS_BITS = 32  # token key = row_ordinal << 32 | position


def token_keys(row_ordinal: Tensor, position: Tensor) -> Tensor:
    """Sortable int64 key of a token: (row in iteration order, position in its unpadded row)."""
    return (row_ordinal.to(torch.int64) << _POS_BITS) | position.to(torch.int64)


# ---------------------------------------------------------------------------------------------
# Flattening captured activations into the token stream


@dataclass
class TokenBatch:
    """The valid (non-padding, image or text) tokens of one captured batch, in stream order."""

    resid: Tensor  # [N, d_in]
    is_image: Tensor  # [N] bool
    row: Tensor  # [N] long, index of the row inside the batch
    position: Tensor  # [N] long, position within the row's unpadded sequence


def flatten_tokens(resid: Tensor, image_mask: Tensor, text_mask: Tensor, attention_mask: Tensor | None = None
                   ) -> TokenBatch:
    """Select the image and text positions of a `[B, T, d]` batch, row-major (row, then position)."""
    valid = image_mask.bool() | text_mask.bool()
    if attention_mask is None:
        attention_mask = valid
    nonpad = attention_mask.bool()
    # position of each slot inside its row's unpadded sequence (padding removed, left or right)
    pos_in_row = nonpad.long().cumsum(-1) - 1
    rows, cols = valid.nonzero(as_tuple=True)
    return TokenBatch(
        resid=resid[rows, cols],
        is_image=image_mask.bool()[rows, cols],
        row=rows,
        position=pos_in_row[rows, cols],
    )


def token_top_features(z: Tensor, k: int, min_activation: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Each token's top-k features (ties: lower feature index first), keeping activations > min_activation.

    Returns ``(token_index, feature_index, activation)`` 1-D tensors, ordered by token then feature.
    """
    n, d = z.shape
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=z.device)
        return empty, empty, z.new_zeros(0)
    k = min(k, d)
    kth = z.topk(k, dim=-1, sorted=True).values[:, -1:]  # the k-th largest value (a multiset property)
    selected = z > kth
    equal = z == kth
    need = k - selected.sum(-1, keepdim=True)
    tie_rows = (equal.sum(-1, keepdim=True) > need) & (kth > min_activation)
    if bool(tie_rows.any()):
        rank = equal.long().cumsum(-1)
        selected |= equal & ((rank <= need) | ~tie_rows)
    else:
        selected |= equal
    selected &= z > min_activation
    tok, feat = selected.nonzero(as_tuple=True)
    return tok, feat, z[tok, feat]


def _sort_feature_act_key(feat: Tensor, act: Tensor, key: Tensor) -> Tensor:
    """Permutation ordering entries by (feature asc, activation desc, token key asc)."""
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(act[order], descending=True, stable=True).indices]
    order = order[torch.sort(feat[order], stable=True).indices]
    return order


# ---------------------------------------------------------------------------------------------
# The streaming fitter (pure: works on tensors, knows nothing about models or datasets)


class CrossModalFitter:
    """Exact streaming computation of ω.  Pass 1: :meth:`observe`; then :meth:`select`;
    pass 2: :meth:`accumulate` on the same tokens (batches without selected tokens may be skipped);
    then :meth:`result`.
    """

    def __init__(self, d_sae: int, *, top_features_per_token: int = 50, top_tokens_per_feature: int = 30,
                 tokens_per_modality: int = 5, min_activation: float = 0.0, device: str | torch.device = "cpu"):
        for name, v in (("top_features_per_token", top_features_per_token),
                        ("top_tokens_per_feature", top_tokens_per_feature),
                        ("tokens_per_modality", tokens_per_modality)):
            if not isinstance(v, int) or v <= 0:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if tokens_per_modality > top_tokens_per_feature:
            raise InputError(
                f"tokens_per_modality={tokens_per_modality} cannot exceed top_tokens_per_feature="
                f"{top_tokens_per_feature}: at most that many tokens are kept per feature")
        self.d_sae = d_sae
        self.k_token = top_features_per_token
        self.k_feat = top_tokens_per_feature
        self.m = tokens_per_modality
        self.min_activation = float(min_activation)
        self.device = torch.device(device)
        K = self.k_feat
        self.top_act = torch.full((d_sae, K), -math.inf, dtype=torch.float32, device=self.device)
        self.top_key = torch.full((d_sae, K), -1, dtype=torch.int64, device=self.device)
        self.top_row = torch.full((d_sae, K), -1, dtype=torch.int64, device=self.device)  # dataset row id
        self.top_image = torch.zeros((d_sae, K), dtype=torch.bool, device=self.device)
        self.n_tokens = 0
        self.n_image_tokens = 0
        self._selected: dict[str, Tensor] | None = None
        self._sum_text: Tensor | None = None
        self._sum_image: Tensor | None = None

    # -------------------------------------------------------------- pass 1
    @torch.no_grad()
    def observe(self, z: Tensor, is_image: Tensor, keys: Tensor, row_ids: Tensor) -> None:
        """Record one chunk of tokens: codes ``z [N, d_sae]``, ``is_image [N]``, token ``keys [N]``
        (strictly increasing across calls), ``row_ids [N]`` (dataset row, for reports)."""
        if self._selected is not None:
            raise RuntimeError("observe() after select(): pass 1 is over")
        if z.shape[0] == 0:
            return
        dev = self.device
        z = z.to(dev, torch.float32)
        is_image, keys, row_ids = is_image.to(dev), keys.to(dev), row_ids.to(dev)
        self.n_tokens += int(z.shape[0])
        self.n_image_tokens += int(is_image.sum())
        tok, feat, act = token_top_features(z, self.k_token, self.min_activation)
        # entries that cannot enter a full list: ties lose to older entries (smaller keys)
        enter = act > self.top_act[feat, -1]
        if not bool(enter.any()):
            return
        tok, feat, act = tok[enter], feat[enter], act[enter]
        touched = torch.unique(feat)
        old_valid = self.top_key[touched] >= 0
        old_feat = touched[:, None].expand(-1, self.k_feat)[old_valid]
        all_feat = torch.cat([old_feat, feat])
        all_act = torch.cat([self.top_act[touched][old_valid], act])
        all_key = torch.cat([self.top_key[touched][old_valid], keys[tok]])
        all_row = torch.cat([self.top_row[touched][old_valid], row_ids[tok]])
        all_img = torch.cat([self.top_image[touched][old_valid], is_image[tok]])
        order = _sort_feature_act_key(all_feat, all_act, all_key)
        f_s = all_feat[order]
        rank = torch.arange(f_s.numel(), device=dev) - torch.searchsorted(f_s, f_s)
        keep = rank < self.k_feat
        order, f_s, rank = order[keep], f_s[keep], rank[keep]
        self.top_act[touched] = -math.inf
        self.top_key[touched] = -1
        self.top_row[touched] = -1
        self.top_image[touched] = False
        self.top_act[f_s, rank] = all_act[order]
        self.top_key[f_s, rank] = all_key[order]
        self.top_row[f_s, rank] = all_row[order]
        self.top_image[f_s, rank] = all_img[order]

    # -------------------------------------------------------------- selection
    @torch.no_grad()
    def select(self) -> dict[str, Tensor]:
        """End pass 1: classes and the selected (first m text, first m image) tokens per feature."""
        if self._selected is not None:
            return self._selected
        valid = self.top_key >= 0
        img = self.top_image & valid
        txt = ~self.top_image & valid
        n_img, n_txt = img.sum(1), txt.sum(1)
        classes = torch.full((self.d_sae,), MIXED, dtype=torch.int8, device=self.device)
        classes[(n_img == 0) & (n_txt > 0)] = TEXT
        classes[(n_txt == 0) & (n_img > 0)] = IMAGE
        classes[(n_txt == 0) & (n_img == 0)] = DEAD
        cross = (n_txt >= self.m) & (n_img >= self.m)
        classes[cross] = CROSS_MODAL
        features = cross.nonzero(as_tuple=True)[0]
        sel_txt = txt & (txt.long().cumsum(1) <= self.m)
        sel_img = img & (img.long().cumsum(1) <= self.m)
        sel_txt[~cross] = False
        sel_img[~cross] = False
        compact = torch.full((self.d_sae,), -1, dtype=torch.long, device=self.device)
        compact[features] = torch.arange(features.numel(), device=self.device)
        f_t, _ = sel_txt.nonzero(as_tuple=True)
        f_i, _ = sel_img.nonzero(as_tuple=True)
        e_feat = torch.cat([compact[f_t], compact[f_i]])
        e_key = torch.cat([self.top_key[sel_txt], self.top_key[sel_img]])
        e_img = torch.cat([torch.zeros_like(f_t, dtype=torch.bool), torch.ones_like(f_i, dtype=torch.bool)])
        e_row = torch.cat([self.top_row[sel_txt], self.top_row[sel_img]])
        order = torch.sort(e_key, stable=True).indices
        self._selected = {
            "classes": classes, "features": features, "sel_text": sel_txt, "sel_image": sel_img,
            "entry_feature": e_feat[order], "entry_key": e_key[order], "entry_image": e_img[order],
            "entry_row": e_row[order],
        }
        n = features.numel()
        self._sum_text = torch.zeros((n, 0), dtype=torch.float64, device=self.device)
        self._sum_image = torch.zeros((n, 0), dtype=torch.float64, device=self.device)
        self._found = torch.zeros(e_key.numel(), dtype=torch.bool, device=self.device)
        return self._selected

    @property
    def needed_rows(self) -> set[int]:
        """Dataset row ids that hold at least one selected token (pass 2 may skip the others)."""
        sel = self.select()
        return set(sel["entry_row"].tolist())

    # -------------------------------------------------------------- pass 2
    @torch.no_grad()
    def accumulate(self, resid: Tensor, keys: Tensor) -> None:
        """Add the unit residual vectors of selected tokens among ``resid [N, d_in]`` / ``keys [N]``."""
        sel = self.select()
        e_key = sel["entry_key"]
        if e_key.numel() == 0 or resid.shape[0] == 0:
            return
        keys = keys.to(self.device)
        if self._sum_text.shape[1] == 0:
            n, d = sel["features"].numel(), resid.shape[-1]
            self._sum_text = torch.zeros((n, d), dtype=torch.float64, device=self.device)
            self._sum_image = torch.zeros((n, d), dtype=torch.float64, device=self.device)
        sorted_keys, perm = torch.sort(keys)
        idx = torch.searchsorted(sorted_keys, e_key).clamp_max(sorted_keys.numel() - 1)
        hit = sorted_keys[idx] == e_key
        if not bool(hit.any()):
            return
        local = perm[idx[hit]]
        unit = F.normalize(resid[local.to(resid.device)].to(self.device, torch.float64), dim=-1)
        feats, is_img = sel["entry_feature"][hit], sel["entry_image"][hit]
        self._sum_text.index_add_(0, feats[~is_img], unit[~is_img])
        self._sum_image.index_add_(0, feats[is_img], unit[is_img])
        self._found |= torch.zeros_like(self._found).index_fill_(0, hit.nonzero(as_tuple=True)[0], True)

    # -------------------------------------------------------------- result
    @torch.no_grad()
    def result(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """End pass 2: the fields of a :class:`~saev_curate.curation.crossmodal.weights.CrossModalWeights`."""
        sel = self.select()
        if sel["entry_key"].numel() and not bool(self._found.all()):
            missing = int((~self._found).sum())
            raise SaevError(
                f"pass 2 of the cross-modal fit did not see {missing} selected token(s): the second "
                "pass must run over exactly the same rows and batches as the first")
        omega = torch.full((self.d_sae,), math.nan, dtype=torch.float32)
        if sel["features"].numel():
            w = (self._sum_text * self._sum_image).sum(-1) / (self.m * self.m)
            omega[sel["features"].cpu()] = w.float().cpu()
        key = self.top_key.cpu()
        return dict(
            omega=omega,
            classes=sel["classes"].cpu(),
            top_activation=self.top_act.cpu(),
            top_row=self.top_row.cpu(),
            top_position=torch.where(key >= 0, key & ((1 << _POS_BITS) - 1), torch.full_like(key, -1)),
            top_is_image=self.top_image.cpu(),
            meta={
                "top_features_per_token": self.k_token,
                "top_tokens_per_feature": self.k_feat,
                "tokens_per_modality": self.m,
                "min_activation": self.min_activation,
                "n_tokens": self.n_tokens,
                "n_image_tokens": self.n_image_tokens,
                **(meta or {}),
            },
        )

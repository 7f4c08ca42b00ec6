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

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from saev_curate.errors import InputError, SaevError

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
    def result(self, meta: dict[str, Any] | None = None) -> "CrossModalWeights":
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
        return CrossModalWeights(
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


# ---------------------------------------------------------------------------------------------
# The result


@dataclass
class CrossModalWeights:
    """ω per feature (NaN = undefined), feature classes, and each feature's top-token record."""

    omega: Tensor  # [d_sae] float32, NaN where undefined
    classes: Tensor  # [d_sae] int8, index into CLASS_NAMES
    top_activation: Tensor | None = None  # [d_sae, K] float32 (-inf = empty)
    top_row: Tensor | None = None  # [d_sae, K] long: reference dataset row (-1 = empty)
    top_position: Tensor | None = None  # [d_sae, K] long: position in the row's unpadded sequence
    top_is_image: Tensor | None = None  # [d_sae, K] bool
    meta: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------- views
    @property
    def d_sae(self) -> int:
        return int(self.omega.shape[0])

    @property
    def defined(self) -> Tensor:
        return ~torch.isnan(self.omega)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.classes.long(), minlength=len(CLASS_NAMES)).tolist()
        return dict(zip(CLASS_NAMES, counts))

    def class_of(self, feature: int) -> str:
        return CLASS_NAMES[int(self.classes[feature])]

    def top_tokens(self, feature: int) -> list[dict[str, Any]]:
        """Feature ``feature``'s recorded top tokens, best first: reference row, position in the
        unpadded row, activation, modality."""
        if self.top_row is None:
            return []
        out = []
        for r, p, a, im in zip(self.top_row[feature].tolist(), self.top_position[feature].tolist(),
                               self.top_activation[feature].tolist(), self.top_is_image[feature].tolist()):
            if r >= 0:
                out.append({"row": r, "position": p, "activation": a, "modality": "image" if im else "text"})
        return out

    def summary(self) -> dict[str, Any]:
        w = self.omega[self.defined]
        out: dict[str, Any] = {"d_sae": self.d_sae, "classes": self.class_counts(), "n_defined": int(w.numel())}
        if w.numel():
            out.update(omega_min=float(w.min()), omega_mean=float(w.mean()), omega_max=float(w.max()))
        return out

    def fingerprint(self) -> str:
        """Content hash of ω, the classes and the fit parameters (stable across save/load)."""
        h = hashlib.sha256()
        h.update(self.omega.float().contiguous().numpy().tobytes())
        h.update(self.classes.to(torch.int8).contiguous().numpy().tobytes())
        h.update(json.dumps(self.meta, sort_keys=True, default=str).encode())
        return h.hexdigest()[:32]

    def __repr__(self) -> str:
        return f"CrossModalWeights({self.summary()})"

    # -------------------------------------------------------------- io
    def save(self, path: str | Path) -> Path:
        """Write ``crossmodal_weights.safetensors`` + ``crossmodal_weights.json`` into folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"omega": self.omega.float().contiguous(), "classes": self.classes.to(torch.int8).contiguous()}
        for name in ("top_activation", "top_row", "top_position", "top_is_image"):
            t = getattr(self, name)
            if t is not None:
                tensors[name] = t.contiguous()
        if "top_is_image" in tensors:
            tensors["top_is_image"] = tensors["top_is_image"].to(torch.uint8)
        save_file(tensors, str(path / "crossmodal_weights.safetensors"))
        doc = {"format": "saev-curate/crossmodal-weights", "version": 1, "class_names": list(CLASS_NAMES),
               "summary": self.summary(), "meta": self.meta}
        (path / "crossmodal_weights.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CrossModalWeights":
        from safetensors.torch import load_file

        path = Path(path)
        st, js = path / "crossmodal_weights.safetensors", path / "crossmodal_weights.json"
        if not st.is_file() or not js.is_file():
            raise InputError(
                f"{path} is not a cross-modal weights folder: expected crossmodal_weights.safetensors and "
                "crossmodal_weights.json (written by CrossModalWeights.save)")
        t = load_file(str(st))
        doc = json.loads(js.read_text())
        if list(doc.get("class_names", CLASS_NAMES)) != list(CLASS_NAMES):
            raise InputError(f"{js}: unknown feature class names {doc.get('class_names')}")
        top_img = t.get("top_is_image")
        return cls(omega=t["omega"], classes=t["classes"], top_activation=t.get("top_activation"),
                   top_row=t.get("top_row"), top_position=t.get("top_position"),
                   top_is_image=None if top_img is None else top_img.bool(), meta=doc.get("meta", {}))

    # -------------------------------------------------------------- checks
    def check_sae(self, sae) -> None:
        """Raise if these weights were not fitted for an SAE of this shape (or, when known, this SAE)."""
        d_sae = int(sae.cfg.d_sae)
        if d_sae != self.d_sae:
            raise InputError(f"cross-modal weights have {self.d_sae} features but the SAE has d_sae={d_sae}: "
                             "fit the weights with this SAE")
        fitted = self.meta.get("sae_fingerprint")
        if fitted and fitted != sae_fingerprint(sae):
            raise InputError("these cross-modal weights were fitted with a different SAE (weights differ); "
                             "refit them with CrossModalWeights.fit for this SAE")

    # -------------------------------------------------------------- fitting on a model
    @classmethod
    def fit_activations(cls, batches: Iterable[dict[str, Any]], sae, *, top_features_per_token: int = 50,
                        top_tokens_per_feature: int = 30, tokens_per_modality: int = 5,
                        min_activation: float = 0.0, meta: dict | None = None) -> "CrossModalWeights":
        """Fit from a re-iterable of captured batches (pure; used by the tests and by :meth:`fit`).

        Each batch is a dict with ``resid [B,T,d]``, ``image_mask``, ``text_mask``, ``attention_mask``
        and ``row_ids`` (list of B dataset row ids, strictly increasing over the stream: tokens are
        ordered by (row id, position) for ties).  ``batches`` is iterated twice; when it has
        ``iter_rows_subset(rows)``, pass 2 uses that to run only batches holding a selected token.
        """
        fitter = CrossModalFitter(int(sae.cfg.d_sae), top_features_per_token=top_features_per_token,
                                  top_tokens_per_feature=top_tokens_per_feature,
                                  tokens_per_modality=tokens_per_modality, min_activation=min_activation,
                                  device=_sae_device(sae))
        last_row = -1
        for b in batches:
            ids = list(b["row_ids"])
            if ids and (min(ids) <= last_row or ids != sorted(ids)):
                raise InputError("fit_activations: row_ids must increase strictly across batches "
                                 "(they order tokens for the deterministic tie rule)")
            last_row = max(ids, default=last_row)
            _observe_batch(fitter, sae, b)
        needed = fitter.needed_rows
        second = batches.iter_rows_subset(needed) if hasattr(batches, "iter_rows_subset") else batches
        for b in second:
            _accumulate_batch(fitter, b)
        return fitter.result({"sae_fingerprint": sae_fingerprint(sae), **(meta or {})})

    @classmethod
    def fit(cls, model, processor, sae, dataset, layer: int | str | None = None, *, n_reference: int | None = 1000,
            seed: int = 42, batch_size: int = 8, top_features_per_token: int = 50,
            top_tokens_per_feature: int = 30, tokens_per_modality: int = 5, min_activation: float = 0.0,
            max_length: int | None = None, exclude_special_tokens: bool = False, progress: bool = False,
            ) -> "CrossModalWeights":
        """Fit ω on ``n_reference`` rows of ``dataset`` sampled with ``seed`` (all rows if None or more).

        Rows are fed as image + prompt only (``prepare_batch(mode="prompt")``).  Rows the processor
        cannot prepare are skipped and counted in ``meta["n_rows_skipped"]``.  Two passes over the
        sampled rows (the second only over rows holding a selected token).
        """
        layer_index = resolve_sae_layer(model, sae, layer)
        indices = reference_indices(dataset, n_reference, seed)
        source = _CapturedBatches(model, processor, dataset, indices, layer_index, batch_size=batch_size,
                                  max_length=max_length, exclude_special_tokens=exclude_special_tokens,
                                  progress=progress)
        meta = {
            "layer": layer_index,
            "model": _model_identity(model),
            "sae": {"d_in": int(sae.cfg.d_in), "d_sae": int(sae.cfg.d_sae),
                    "hook_name": getattr(sae.cfg, "hook_name", None),
                    "model_name": getattr(sae.cfg, "model_name", None)},
            "n_reference_requested": n_reference, "seed": seed, "n_rows_sampled": len(indices),
            "batch_size": batch_size, "max_length": max_length, "exclude_special_tokens": exclude_special_tokens,
        }
        out = cls.fit_activations(source, sae, top_features_per_token=top_features_per_token,
                                  top_tokens_per_feature=top_tokens_per_feature,
                                  tokens_per_modality=tokens_per_modality, min_activation=min_activation,
                                  meta=meta)
        out.meta["n_rows_skipped"] = source.n_skipped
        out.meta["skipped_examples"] = source.skipped_examples
        return out


# ---------------------------------------------------------------------------------------------
# Plumbing shared with the scorer


def _sae_device(sae) -> torch.device:
    dev = getattr(sae, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(sae.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def sae_fingerprint(sae) -> str:
    """Content hash of an SAE's config shape and weights, taken at bfloat16 precision so that the same
    SAE loaded in float32 or cast to bfloat16 hashes alike."""
    h = hashlib.sha256()
    cfg = sae.cfg
    h.update(f"{cfg.d_in}/{cfg.d_sae}/{getattr(cfg, 'architecture', '')}/{getattr(cfg, 'k', '')}/"
             f"{getattr(cfg, 'input_scale', 1.0)}/{getattr(cfg, 'apply_b_dec_to_input', '')}".encode())
    try:
        state = sae.state_dict()
    except AttributeError:
        state = {}
    for name in sorted(state):
        t = state[name]
        if t.is_floating_point():
            t = t.to(torch.bfloat16)
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()[:32]


def tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return str(t.dtype).encode() + t.view(torch.uint8).numpy().tobytes()


def _model_identity(model) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"name_or_path": getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None),
            "model_type": getattr(cfg, "model_type", None), "class": type(model).__name__}


def resolve_sae_layer(model, sae, layer: int | str | None) -> int:
    """The decoder layer to read: ``layer``, or the SAE's own hook layer when ``layer`` is None.

    Raises when the SAE does not fit the model or names a different layer than ``layer``.
    """
    from saev_curate.vlm.capture import check_sae_fits, resolve_layer, sae_decoder_layer

    check_sae_fits(model, sae)
    cfg = sae.cfg
    sae_layer = sae_decoder_layer(model, sae)
    if layer is None:
        if sae_layer is None:
            raise InputError("the SAE does not say which layer it reads (no hook_name/hook_layer in its config); "
                             "pass layer=")
        return sae_layer
    idx = resolve_layer(model, layer)
    if sae_layer is not None and sae_layer != idx:
        raise InputError(f"layer={layer!r} is decoder layer {idx}, but the SAE was trained on layer {sae_layer} "
                         f"({getattr(cfg, 'hook_name', None) or cfg.hook_layer}); pass layer={sae_layer} or layer=None")
    return idx


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
        for i, row in enumerate(dataset):
            yield i, row
        return
    if hasattr(dataset, "select") and hasattr(dataset, "__len__") and not isinstance(dataset, (list, tuple)):
        sub = dataset.select(indices)
        for i, row in zip(indices, sub):
            yield i, row
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


def _encode_chunks(sae, resid: Tensor, chunk: int = 4096) -> Iterator[tuple[int, Tensor]]:
    dev = _sae_device(sae)
    for s in range(0, resid.shape[0], chunk):
        with torch.no_grad():
            yield s, sae.encode(resid[s:s + chunk].to(dev))


def _batch_tokens(b: dict[str, Any]) -> tuple[TokenBatch, Tensor, Tensor]:
    tb = flatten_tokens(b["resid"], b["image_mask"], b["text_mask"], b.get("attention_mask"))
    row_ids = torch.as_tensor(list(b["row_ids"]), dtype=torch.long)[tb.row.cpu()]
    keys = token_keys(row_ids, tb.position.cpu())
    return tb, keys, row_ids


def _observe_batch(fitter: CrossModalFitter, sae, b: dict[str, Any]) -> None:
    tb, keys, row_ids = _batch_tokens(b)
    for s, z in _encode_chunks(sae, tb.resid):
        n = z.shape[0]
        fitter.observe(z, tb.is_image[s:s + n], keys[s:s + n], row_ids[s:s + n])


def _accumulate_batch(fitter: CrossModalFitter, b: dict[str, Any]) -> None:
    tb, keys, _ = _batch_tokens(b)
    fitter.accumulate(tb.resid, keys)


class _CapturedBatches:
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
                    if len(self.skipped_examples) < 5:
                        self.skipped_examples.append(f"row {i}: {e}")
        if acts is None:
            return
        yield {"resid": acts.resid, "image_mask": acts.image_mask, "text_mask": acts.text_mask,
               "attention_mask": acts.attention_mask, "row_ids": [ids[k] for k in kept]}


def capture_rows(model, processor, rows: list[dict], layer: int | str, *, mode: str = "prompt",
                 max_length: int | None = None, exclude_special_tokens: bool = False):
    """prepare_batch + capture_activations for a list of rows.

    Returns ``(activations or None, kept row indices, per-row error or None)``.
    """
    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.formats import prepare_batch

    prep = prepare_batch(processor, rows, mode=mode, max_length=max_length, on_error="record")
    errors = list(prep.row_errors)
    if prep.inputs is None or not prep.kept:
        return None, [], errors
    with torch.no_grad():
        acts = capture_activations(model, prep, layer, exclude_special_tokens=exclude_special_tokens,
                                   processor=processor)
    return acts, list(prep.kept), errors

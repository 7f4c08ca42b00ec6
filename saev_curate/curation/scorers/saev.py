"""Stage 3 of SAE-V (method doc section 5): score each sample with the cross-modal weights ω.

For a sample fed as image + prompt: z = SAE.encode(h) at every position; image positions hold the
image placeholder token, text positions are the rest minus padding.

* ``F = {k : max_text z_k > δ} ∩ {k : max_image z_k > δ}`` (co-occurring features, δ = 1);
* ``saev_score = Σ_{k ∈ F, ω_k defined} ω_k`` (the reference code's unnormalised sum, the default);
* ``saev_score_mean = Σ ω_k x_k / Σ x_k`` over the same features, x_k = the feature's maximum
  activation over the sample's tokens (the activation-weighted mean of the paper's figure; 0 when
  no weighted feature co-occurs);
* ``feature_set="any"``: F = features whose maximum over *all* tokens exceeds δ (Algorithm 1's
  "active on any token"; use ``delta=0`` for "active" in the strict sense);
* ``saev_cooccur_l0 = |F_cooccur|``; ``saev_l0`` / ``_image`` / ``_text``: mean number of active
  (z > 0) features per token over all / image / text tokens.

Beyond the paper (:mod:`saev_curate.curation.agreement` has the definitions and why):

* ``saev_score_content``: the paper's sum over *content* tokens only (text after the image that
  the chat template did not write), so blind system-prompt / template tokens cannot co-occur;
* ``saev_grounding``: the share of the content tokens' cross-modal feature mass the image carries;
* ``saev_grounding_chosen`` / ``_rejected`` / ``_margin``: the same share on the response's own
  tokens (prompt + response shown), and chosen minus rejected: does the preferred answer agree
  with the image better than the rejected one;
* ``control_prompt="..."``: ``saev_score_control`` / ``saev_grounding_control``, the row's image
  with that fixed text instead of its own (what the image alone scores: typicality, not agreement),
  and ``saev_grounding_vs_control`` = grounding minus its control;
* ``saev_pair_agreement`` (+ ``_chosen`` / ``_rejected`` / ``_margin`` on the response's tokens): the
  mean npmi of the row's (content-token feature, image feature) pairs, fitted with the weights
  (:mod:`saev_curate.curation.pairs`; null when the weights carry no pairs);
* ``saev_answer_agreement_chosen`` / ``_rejected`` / ``_margin``: the mean npmi of (response-token
  feature, answer-slot feature) pairs, the answer slot being the prompt's last token (what the model read
  from image + question), fitted on the reference rows' chosen responses: does the response carry what
  responses after such an answer slot usually carry (null when the weights were fitted on rows without
  responses);
* ``saev_answer_readout_chosen`` / ``_rejected`` / ``_margin``: the mean log-posterior of the response's
  tokens given the answer slot's firing features (a naive-Bayes read-out of the SAE features fitted on the
  reference rows' chosen responses, :mod:`saev_curate.curation.readout`): is the given answer the one the
  model's features point to (null when the weights were fitted on rows without responses);
* ``saev_token_readout_min_chosen`` / ``_rejected`` / ``_margin``: the read-out per response token, each token
  read from the features at the position before it (where the model decides what to say next), its minimum
  over the response: a long answer is as bad as its worst fact; ``saev_answer_agreement_min_*``: the
  answer-pair npmi per response token, its minimum; and the blame for the chosen response:
  ``saev_blame_token`` (the token read-out's worst token, its index among the response's tokens),
  ``saev_blame_text`` (that token) and ``saev_blame_features`` (the features voting most against it there,
  comma-separated);
* ``delta_rel``: thresholds for the agreement columns on each feature's own scale (``delta_rel`` x
  its top activation on the reference set) instead of one δ.

The core, :func:`score_activations`, is a pure function of captured tensors and the SAE.
:class:`SaevScorer` wraps it as a :class:`~saev_curate.curation.scorers.base.Scorer` for
``Dataset.map(batched=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saev_curate.core.devices import module_device
from saev_curate.core.errors import InputError
from saev_curate.curation.agreement import (
    AGREEMENT_COLUMNS,
    BLAME_COLUMNS,
    batch_agreement,
    feature_thresholds,
    template_token_ids,
)
from saev_curate.curation.capture import capture_rows
from saev_curate.curation.config import FEATURE_SETS, ScoreConfig
from saev_curate.curation.crossmodal import CLASS_NAMES, CrossModalWeights, flatten_tokens
from saev_curate.curation.methods import data_shape
from saev_curate.curation.scorers.base import Scorer
from saev_curate.io.fingerprint import module_fingerprint, processor_fingerprint, sae_fingerprint
from saev_curate.sae.chunks import chunk_tokens, segment_maxima
from saev_curate.vlm.layers import resolve_sae_layer

__all__ = ["Reconstruction", "RowMaxima", "SaevScorer", "row_maxima", "saev_columns", "score_activations",
           "score_maxima", "shows_responses"]

BASE_COLUMNS = ("score", "score_mean", "cooccur_l0", "l0", "l0_image", "l0_text", "score_content", "grounding",
                "pair_agreement")
RESPONSE_PARTS = ("score", "grounding", "pair_agreement", "answer_agreement", "answer_readout", "token_readout_min",
                  "answer_agreement_min")  # each with _chosen/_rejected/_margin
RESPONSE_COLUMNS = (*(f"{c}_{m}" for c in RESPONSE_PARTS for m in ("chosen", "rejected", "margin")),
                    "blame_token", "blame_text", "blame_features")
CONTROL_COLUMNS = ("score_control", "grounding_control", "grounding_vs_control")


# ---------------------------------------------------------------------------------------------
# The pure core


@dataclass
class RowMaxima:
    """Per row of a captured batch: each feature's maximum activation over its text / image tokens (``[B, d_sae]``,
    -inf where the row has no such token), its text / image token counts and their summed active-feature counts."""

    text_max: Tensor
    image_max: Tensor
    n_text: Tensor  # [B] float64
    n_image: Tensor
    active_text: Tensor  # [B] float64: sum over the row's text tokens of their number of active (> 0) features
    active_image: Tensor


@torch.no_grad()
def row_maxima(sae, resid: Tensor, image_mask: Tensor, text_mask: Tensor, attention_mask: Tensor | None = None, *,
               chunk_tokens: int | None = 8192) -> RowMaxima:
    """Encode every image and text token of ``resid [B, T, d_in]`` once, in chunks of at most ``chunk_tokens``
    tokens and :data:`~saev_curate.sae.chunks.ENCODE_BUDGET` code entries, reducing to :class:`RowMaxima` as it
    goes: memory is one chunk's code plus ``[2B, d_sae]``, whatever the rows' token counts."""
    B = int(resid.shape[0])
    tb = flatten_tokens(resid, image_mask, text_mask, attention_mask)
    seg = tb.row * 2 + tb.is_image.long()  # row b: text segment 2b, image segment 2b+1
    maxes, n_act, n_tok = segment_maxima(sae, tb.resid, seg, 2 * B, max_tokens=chunk_tokens)
    return RowMaxima(text_max=maxes[0::2], image_max=maxes[1::2], n_text=n_tok[0::2], n_image=n_tok[1::2],
                     active_text=n_act[0::2], active_image=n_act[1::2])


@torch.no_grad()
def score_activations(sae, omega: Tensor, resid: Tensor, image_mask: Tensor, text_mask: Tensor,
                      attention_mask: Tensor | None = None, *, delta: float = 1.0,
                      feature_set: str = "cooccur", chunk_tokens: int | None = 8192) -> dict[str, Any]:
    """Stage-3 scores of every row of a captured batch ``resid [B, T, d_in]``.

    Returns a dict of python lists (one value per row): ``score``, ``score_mean``, ``cooccur_l0``,
    ``l0``, ``l0_image``, ``l0_text`` and ``error`` (None, or why the row has no score: then its
    other values are None).  Tokens are encoded in bounded chunks (:func:`row_maxima`).
    """
    if feature_set not in FEATURE_SETS:
        raise InputError(f"feature_set={feature_set!r}; use one of {', '.join(FEATURE_SETS)}")
    return score_maxima(row_maxima(sae, resid, image_mask, text_mask, attention_mask, chunk_tokens=chunk_tokens),
                        omega, delta=delta, feature_set=feature_set)


def score_maxima(m: RowMaxima, omega: Tensor, *, delta: float = 1.0, feature_set: str = "cooccur") -> dict[str, Any]:
    """:func:`score_activations`' columns from rows' :class:`RowMaxima` (the part after the encode)."""
    if feature_set not in FEATURE_SETS:
        raise InputError(f"feature_set={feature_set!r}; use one of {', '.join(FEATURE_SETS)}")
    B = int(m.text_max.shape[0])
    dev = m.text_max.device
    text_max, image_max, n_text, n_image = m.text_max, m.image_max, m.n_text, m.n_image
    cooccur = (text_max > delta) & (image_max > delta)
    x = torch.maximum(text_max, image_max)
    chosen = cooccur if feature_set == "cooccur" else x > delta
    w = omega.to(dev, torch.float64)
    defined = ~torch.isnan(w)
    w = torch.where(defined, w, torch.zeros_like(w))
    use = (chosen & defined[None, :]).double()
    score = use @ w
    xw = use * x.double().clamp_min(0)
    denom = xw.sum(-1)
    score_mean = torch.where(denom > 0, (xw @ w) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    l0_text = m.active_text / n_text.clamp_min(1)
    l0_image = m.active_image / n_image.clamp_min(1)
    l0 = (m.active_text + m.active_image) / (n_text + n_image).clamp_min(1)
    cols = {"score": score.tolist(), "score_mean": score_mean.tolist(), "cooccur_l0": cooccur.sum(-1).tolist(),
            "l0": l0.tolist(), "l0_image": l0_image.tolist(), "l0_text": l0_text.tolist()}
    errors: list[str | None] = [None] * B
    for b, (nt, ni) in enumerate(zip(n_text.tolist(), n_image.tolist())):
        if ni == 0:
            errors[b] = "no image tokens in the sequence (no image, or the processor produced none)"
        elif nt == 0:
            errors[b] = "no text tokens in the sequence"
        if errors[b] is not None:
            for v in cols.values():
                v[b] = None
    cols["error"] = errors
    return cols


# ---------------------------------------------------------------------------------------------
# The scorer


class SaevScorer(Scorer):
    """Callable for ``ds.map(scorer, batched=True, batch_size=...)`` adding ``saev_*`` columns.

    ``model``/``processor``/``sae``/``weights`` are objects or paths (a model folder for
    :func:`saev_curate.vlm.load.load_vlm`, an SAE folder for :func:`load_sae`, a folder written by
    :meth:`CrossModalWeights.save`).  ``processor=None`` loads it from the model folder.

    Columns (prefix ``saev_``): ``score``, ``score_mean``, ``cooccur_l0``, ``l0``, ``l0_image``,
    ``l0_text``, ``error``; for preference rows (``responses=True``, or ``"auto"`` when the batch
    has ``chosen``/``rejected`` or ``response_1``/``response_2`` columns) also ``score_chosen``,
    ``score_rejected``, ``score_margin`` (= chosen - rejected): the same score computed with the
    chosen / rejected response shown after the prompt.  A row that cannot be scored keeps its place:
    its score columns are null and ``saev_error`` says why (a response-aware part that fails nulls
    only its own columns and is named in ``saev_error``).  ``max_image_pixels`` caps an image's size
    (default: the process-wide limit of :mod:`saev_curate.vlm.rows.images`); a larger one is a row error.
    The agreement columns beyond the paper and their options (``delta_rel``, ``control_prompt``) are
    described in the module docstring.

    ``datasets`` citizenship: pickling drops the model; a worker reloads it lazily from the paths
    (or, for in-memory objects, finds them in the forked parent's registry).  The pickled state,
    hence ``datasets``' fingerprint, is a content hash of the model, processor, SAE and weights plus
    every setting that changes the output, so a second identical ``map`` is a cache hit.  With
    ``with_rank=True`` each worker uses ``cuda:{rank % n_gpus}`` when GPUs exist and ``device`` is
    not set.  Output columns are typed whatever a batch holds, so a plain ``ds.map(scorer, batched=True)``
    works; :meth:`map` adds ``with_rank=True`` and handles ``DatasetDict`` / ``IterableDataset``.
    """

    COLUMNS = {"score": "float64", "score_mean": "float64", "cooccur_l0": "int64", "l0": "float64",
               "l0_image": "float64", "l0_text": "float64", "score_content": "float64", "grounding": "float64",
               "score_chosen": "float64", "score_rejected": "float64", "score_margin": "float64",
               "grounding_chosen": "float64", "grounding_rejected": "float64", "grounding_margin": "float64",
               "pair_agreement": "float64", "pair_agreement_chosen": "float64", "pair_agreement_rejected": "float64",
               "pair_agreement_margin": "float64", "answer_agreement_chosen": "float64",
               "answer_agreement_rejected": "float64", "answer_agreement_margin": "float64",
               "answer_readout_chosen": "float64", "answer_readout_rejected": "float64",
               "answer_readout_margin": "float64", "token_readout_min_chosen": "float64",
               "token_readout_min_rejected": "float64", "token_readout_min_margin": "float64",
               "answer_agreement_min_chosen": "float64", "answer_agreement_min_rejected": "float64",
               "answer_agreement_min_margin": "float64", "blame_token": "int64", "blame_text": "string",
               "blame_features": "string",
               "score_control": "float64", "grounding_control": "float64", "grounding_vs_control": "float64",
               "error": "string"}
    FINGERPRINTS = {"model": module_fingerprint, "processor": processor_fingerprint, "sae": sae_fingerprint,
                    "weights": lambda w: w.fingerprint()}
    ROLES = ("model", "sae", "weights", "processor")

    def __init__(self, model, processor, sae, weights, layer: int | str | None = None, *,
                 config: ScoreConfig | None = None, prefix: str = "saev_", device: str | None = None,
                 dtype: str | None = None, **options: Any):
        """``config``: a :class:`~saev_curate.curation.config.ScoreConfig` (δ, ``delta_rel``, ``feature_set``,
        ``responses``, ``control_prompt``, max length, ...); ``options`` override its fields by name
        (``SaevScorer(..., delta=0.5)``); ``layer`` given here wins over ``config.layer``."""
        cfg = ScoreConfig.of(config, **options)
        if layer is not None:
            cfg = ScoreConfig.of(cfg, layer=layer)
        super().__init__(prefix=prefix, device=device, delta=cfg.delta, feature_set=cfg.feature_set,
                         responses=cfg.responses_value, max_length=cfg.score_max_length,
                         exclude_special_tokens=cfg.exclude_special_tokens, dtype=dtype, delta_rel=cfg.delta_rel,
                         control_prompt=cfg.control_prompt, max_image_pixels=cfg.max_image_pixels)
        for role, obj in (("model", model), ("processor", processor), ("sae", sae), ("weights", weights)):
            self.add_role(role, obj, optional=role == "processor")
        self._layer_arg = layer = cfg.layer_value
        self.layer: int | None = None
        if isinstance(layer, int) and layer >= 0:
            self.layer = layer
        if "model" in self._objs and "sae" in self._objs:
            self.bind()

    #: set to a :class:`Reconstruction` to accumulate the SAE's fit on the scored rows' tokens (the callback does)
    reconstruction: "Reconstruction | None" = None

    # -------------------------------------------------------------- state, loading, checks
    def state(self) -> dict[str, Any]:
        return {"layer_arg": self._layer_arg, "layer": self.layer}

    def restore_state(self, state: dict[str, Any]) -> None:
        self._layer_arg, self.layer = state["layer_arg"], state["layer"]

    def bind(self) -> None:
        model, sae = self._objs["model"], self._objs["sae"]
        self.layer = resolve_sae_layer(model, sae, self._layer_arg)
        weights = self._objs.get("weights")
        if weights is not None:
            weights.check_sae(sae)
            fitted = weights.meta.get("layer")
            if fitted is not None and int(fitted) != self.layer:
                raise InputError(f"the cross-modal weights were fitted at layer {fitted}, the scorer reads layer "
                                 f"{self.layer}; refit the weights or pass layer={fitted}")
        if "processor" not in self._objs and self._specs["processor"]["kind"] == "none":
            if self._specs["model"].get("path") is None:
                raise InputError("processor=None needs the model given as a path (its processor is loaded from "
                                 "the same folder); pass the processor")

    @property
    def model(self):
        self.setup()
        return self._objs["model"]

    @property
    def sae(self):
        self.setup()
        return self._objs["sae"]

    @property
    def weights(self) -> CrossModalWeights:
        self.setup()
        return self._objs["weights"]

    # -------------------------------------------------------------- columns
    def columns_for(self, keys: list[str] | None = None) -> dict[str, str]:
        return saev_columns(keys or [], responses=self.settings["responses"],
                            control_prompt=self.settings["control_prompt"])

    def _responses_for(self, keys) -> bool:
        return shows_responses(keys, self.settings["responses"])

    # -------------------------------------------------------------- scoring
    def _agreement_setup(self) -> tuple[set[int], Tensor]:
        """Template token ids and per-feature thresholds (computed once per loaded scorer)."""
        if getattr(self, "_agree", None) is None:
            w = self._objs["weights"]
            self._agree = (template_token_ids(self._objs["processor"]),
                           feature_thresholds(w.d_sae, self.settings["delta"], self.settings["delta_rel"],
                                              w.top_activation))
        return self._agree

    def _score_mode(self, rows: list[dict], mode: str, prompt_lens: list[int | None] | None = None
                    ) -> dict[str, list]:
        """Scores of ``rows`` shown in ``mode``; with ``prompt_lens`` the agreement columns read only the
        tokens after each row's prompt (the response). Adds ``n_tokens`` (real tokens per row)."""
        model, processor = self._objs["model"], self._objs["processor"]
        sae, weights = self._objs["sae"], self._objs["weights"]
        n = len(rows)
        acts, kept, errors = capture_rows(model, processor, rows, self.layer, mode=mode,
                                          max_length=self.settings["max_length"],
                                          exclude_special_tokens=self.settings["exclude_special_tokens"],
                                          max_image_pixels=self.settings["max_image_pixels"])
        keep = (*BASE_COLUMNS, *(c for c in AGREEMENT_COLUMNS if c not in BASE_COLUMNS), *BLAME_COLUMNS, "n_tokens")
        out: dict[str, list] = {k: [None] * n for k in keep}
        out["error"] = list(errors)
        if acts is None:
            return out
        maxima = row_maxima(sae, acts.resid, acts.image_mask, acts.text_mask, acts.attention_mask)
        cols = score_maxima(maxima, weights.omega, delta=self.settings["delta"], feature_set=self.settings["feature_set"])
        if mode == "prompt" and self.reconstruction is not None:
            self.reconstruction.add(sae, acts.resid[acts.image_mask | acts.text_mask])
        template_ids, thresholds = self._agreement_setup()
        skip = None
        if prompt_lens is not None:
            skip = torch.tensor([prompt_lens[i] if prompt_lens[i] is not None else 1 << 30 for i in kept])
        agree = batch_agreement(sae, weights, acts, template_ids, thresholds, skip, image_max=maxima.image_max)
        cols.update({k: agree[k] for k in (*AGREEMENT_COLUMNS, *BLAME_COLUMNS)})
        cols["n_tokens"] = acts.attention_mask.sum(1).tolist()
        for j, i in enumerate(kept):
            for k in keep:
                out[k][i] = cols[k][j]
            out["error"][i] = cols["error"][j]
            if out["error"][i] is None and agree["error"][j] is not None:
                out["error"][i] = f"{'response' if prompt_lens is not None else 'prompt'}: {agree['error'][j]}"
        return out

    def score_rows(self, rows: list[dict], keys: list[str]) -> dict[str, list]:
        res = self._score_mode(rows, "prompt")
        out = {k: res[k] for k in BASE_COLUMNS}
        errors = list(res["error"])

        def note(i: int, part: str, err: str | None) -> None:
            if err is not None and err != errors[i] and f"{part}: " not in (errors[i] or ""):
                errors[i] = "; ".join(([errors[i]] if errors[i] else []) + [f"{part}: {err}"])

        if self._responses_for(keys):
            parts = {m: self._score_mode(rows, m, res["n_tokens"]) for m in ("chosen", "rejected")}
            for col in RESPONSE_PARTS:
                c, r = parts["chosen"][col], parts["rejected"][col]
                out[f"{col}_chosen"], out[f"{col}_rejected"] = c, r
                out[f"{col}_margin"] = [None if a is None or b is None else a - b for a, b in zip(c, r)]
            tok = getattr(self._objs["processor"], "tokenizer", self._objs["processor"])
            out["blame_token"], out["blame_features"] = parts["chosen"]["blame_token"], parts["chosen"]["blame_features"]
            out["blame_text"] = [None if t is None else tok.decode([t]).strip() for t in parts["chosen"]["blame_token_id"]]
            for i in range(len(rows)):
                for m in ("chosen", "rejected"):
                    note(i, m, parts[m]["error"][i])
        prompt = self.settings["control_prompt"]
        if prompt is not None:
            control = self._score_mode([_with_prompt(r, prompt) for r in rows], "prompt")
            out["score_control"], out["grounding_control"] = control["score"], control["grounding"]
            out["grounding_vs_control"] = [None if a is None or b is None else a - b
                                           for a, b in zip(out["grounding"], control["grounding"])]
            for i in range(len(rows)):
                note(i, "control", control["error"][i])
        out["error"] = errors
        return out

    @torch.no_grad()
    def explain(self, row: dict, *, mode: str = "prompt", top: int | None = 20) -> list[dict[str, Any]]:
        """Why a row scores what it scores: its co-occurring features with ω, sorted by ω descending.

        Each entry: ``feature``, ``omega`` (None when undefined), ``class``, ``text_max``,
        ``image_max``.  The defined ω of all entries (``top=None``) sum to the row's ``saev_score``.
        """
        self.setup()
        sae, weights = self._objs["sae"], self._objs["weights"]
        acts, kept, errors = capture_rows(self._objs["model"], self._objs["processor"], [row], self.layer,
                                          mode=mode, max_length=self.settings["max_length"],
                                          exclude_special_tokens=self.settings["exclude_special_tokens"])
        if acts is None:
            raise InputError(f"this row cannot be scored: {errors[0]}")
        m = row_maxima(sae, acts.resid, acts.image_mask, acts.text_mask, acts.attention_mask)
        if not (m.n_image[0] > 0 and m.n_text[0] > 0):
            raise InputError("this row has no image tokens or no text tokens")
        tmax, imax = m.text_max[0].cpu(), m.image_max[0].cpu()
        delta = self.settings["delta"]
        feats = ((tmax > delta) & (imax > delta)).nonzero(as_tuple=True)[0].tolist()
        out = []
        for k in feats:
            w = float(weights.omega[k])
            out.append({"feature": k, "omega": None if math.isnan(w) else w, "class": CLASS_NAMES[int(weights.classes[k])],
                        "text_max": float(tmax[k]), "image_max": float(imax[k])})
        out.sort(key=lambda e: (-(e["omega"] if e["omega"] is not None else -math.inf), e["feature"]))
        return out if top is None else out[:top]

    def __repr__(self) -> str:
        return f"SaevScorer(layer={self.layer if self.layer is not None else self._layer_arg}, {self.settings})"


class Reconstruction:
    """Running explained variance of an SAE on the tokens it is shown (``1 - SSE / SST`` over all of them)."""

    def __init__(self, chunk: int = 4096):
        """``chunk``: at most this many tokens per encode (fewer at a large d_sae: :mod:`saev_curate.sae.chunks`)."""
        self.sse, self.n, self.chunk = 0.0, 0, chunk
        self.x_sum: Tensor | None = None
        self.x_sq: Tensor | None = None

    @torch.no_grad()
    def add(self, sae, x: Tensor) -> None:
        x = x.float().to(module_device(sae))
        step = chunk_tokens(int(sae.cfg.d_sae), self.chunk)
        for c in range(0, x.shape[0], step):
            xc = x[c:c + step]
            self.sse += float(((sae.decode(sae.encode(xc)).float() - xc) ** 2).sum())
            xs, xq = xc.double().sum(0), (xc.double() ** 2).sum(0)
            self.x_sum = xs if self.x_sum is None else self.x_sum + xs
            self.x_sq = xq if self.x_sq is None else self.x_sq + xq
            self.n += xc.shape[0]

    def explained_variance(self) -> float:
        if self.n < 2:
            return float("nan")
        sst = float((self.x_sq - self.x_sum ** 2 / self.n).sum())
        return 1.0 - self.sse / sst if sst > 0 else float("nan")


def shows_responses(keys, responses: bool | str) -> bool:
    """Whether rows with columns ``keys`` are also scored with their chosen / rejected response shown."""
    if responses != "auto":
        return bool(responses)
    return data_shape(keys) == "preference"


def saev_columns(keys, *, responses: bool | str = "auto", control_prompt: str | None = None) -> dict[str, str]:
    """The short columns (-> Arrow type) :class:`SaevScorer` writes for a dataset with columns ``keys``: the
    response columns only when responses are shown, the control columns only with a control prompt."""
    skip = () if shows_responses(keys, responses) else RESPONSE_COLUMNS
    if control_prompt is None:
        skip = (*skip, *CONTROL_COLUMNS)
    return {k: v for k, v in SaevScorer.COLUMNS.items() if k not in skip}


def _with_prompt(row: dict, text: str) -> dict:
    """``row``'s images with a fixed user prompt (the image-only control): a TRL-style prompt-only row."""
    images = row.get("images") if row.get("images") is not None else ([row["image"]] if row.get("image") is not None
                                                                       else [])
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return {"prompt": [{"role": "user", "content": content}], "images": list(images)}

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

The core, :func:`score_activations`, is a pure function of captured tensors and the SAE.
:class:`SaevScorer` wraps it for ``Dataset.map(batched=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
import weakref
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from saev_curate.crossmodal import (
    CrossModalWeights,
    _sae_device,
    capture_rows,
    flatten_tokens,
    resolve_sae_layer,
    sae_fingerprint,
    tensor_bytes,
)
from saev_curate.errors import InputError, SaevError

log = logging.getLogger(__name__)

SCORE_VERSION = 1
FEATURE_SETS = ("cooccur", "any")
BASE_COLUMNS = ("score", "score_mean", "cooccur_l0", "l0", "l0_image", "l0_text")
RESPONSE_COLUMNS = ("score_chosen", "score_rejected", "score_margin")
_INT_COLUMNS = {"cooccur_l0"}


# ---------------------------------------------------------------------------------------------
# The pure core


@torch.no_grad()
def score_activations(sae, omega: Tensor, resid: Tensor, image_mask: Tensor, text_mask: Tensor,
                      attention_mask: Tensor | None = None, *, delta: float = 1.0,
                      feature_set: str = "cooccur", chunk_tokens: int = 8192) -> dict[str, Any]:
    """Stage-3 scores of every row of a captured batch ``resid [B, T, d_in]``.

    Returns a dict of python lists (one value per row): ``score``, ``score_mean``, ``cooccur_l0``,
    ``l0``, ``l0_image``, ``l0_text`` and ``error`` (None, or why the row has no score: then its
    other values are None).
    """
    if feature_set not in FEATURE_SETS:
        raise InputError(f"feature_set={feature_set!r}; use one of {', '.join(FEATURE_SETS)}")
    B = int(resid.shape[0])
    dev = _sae_device(sae)
    d_sae = int(omega.shape[0])
    tb = flatten_tokens(resid, image_mask, text_mask, attention_mask)
    seg = (tb.row * 2 + tb.is_image.long()).to(dev)  # row b: text segment 2b, image segment 2b+1
    maxes = torch.full((2 * B, d_sae), -math.inf, dtype=torch.float32, device=dev)
    n_tok = torch.zeros(2 * B, dtype=torch.float64, device=dev)
    n_act = torch.zeros(2 * B, dtype=torch.float64, device=dev)
    for s in range(0, tb.resid.shape[0], chunk_tokens):
        z = sae.encode(tb.resid[s:s + chunk_tokens].to(dev)).float()
        sg = seg[s:s + chunk_tokens]
        with warnings.catch_warnings():  # "index_reduce() is in beta"
            warnings.simplefilter("ignore", UserWarning)
            maxes.index_reduce_(0, sg, z, "amax", include_self=True)
        n_act.index_add_(0, sg, (z > 0).float().sum(-1).double())  # float sum: 4x faster than bool sum on CPU
        n_tok.index_add_(0, sg, torch.ones_like(sg, dtype=torch.float64))
    text_max, image_max = maxes[0::2], maxes[1::2]
    n_text, n_image = n_tok[0::2], n_tok[1::2]
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
    l0_text = n_act[0::2] / n_text.clamp_min(1)
    l0_image = n_act[1::2] / n_image.clamp_min(1)
    l0 = (n_act[0::2] + n_act[1::2]) / (n_text + n_image).clamp_min(1)
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
# Fingerprints of what a scorer depends on


def _file_digest(path: Path, h, *, full_limit: int = 8 << 20, sample: int = 1 << 20) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            h.update(f.read())
            return
        for off in (0, size // 2, max(0, size - sample)):  # large weight files: sampled content
            f.seek(off)
            h.update(f.read(sample))


def path_fingerprint(path: str | os.PathLike) -> str:
    """Content hash of a file or folder (files <= 8 MiB fully; larger ones by size and three 1 MiB
    samples: first, middle, last).  A non-local name (a hub id) hashes as its string."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        _file_digest(p, h)
    elif p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
            h.update(str(f.relative_to(p)).encode())
            _file_digest(f, h)
    else:
        h.update(f"name:{path}".encode())
    return h.hexdigest()[:32]


def module_fingerprint(module) -> str:
    """Content hash of a torch module's parameters and buffers (and its config when it has one)."""
    h = hashlib.sha256()
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        try:
            h.update(cfg.to_json_string(use_diff=False).encode())
        except TypeError:
            h.update(cfg.to_json_string().encode())
    state = module.state_dict()
    for name in sorted(state):
        h.update(name.encode())
        h.update(tensor_bytes(state[name]))
    return h.hexdigest()[:32]


def processor_fingerprint(processor) -> str:
    h = hashlib.sha256()
    tok = getattr(processor, "tokenizer", processor)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items()) if hasattr(tok, "get_vocab") else [],
                            default=str).encode())
    h.update(str(getattr(tok, "chat_template", None) or getattr(processor, "chat_template", None)).encode())
    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        if sub is not None and hasattr(sub, "to_json_string"):
            h.update(sub.to_json_string().encode())
    h.update(type(processor).__name__.encode())
    return h.hexdigest()[:32]


# Live objects of scorers built from in-memory models, keyed by content fingerprint: a pickled
# scorer carries only the key, so forked `num_proc` workers find them without pickling a model.
_LIVE: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


# ---------------------------------------------------------------------------------------------
# The scorer


# The process that imported this module; a scorer unpickled in another pid is in a forked worker.
_IMPORT_PID = os.getpid()


class SaevScorer:
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
    only its own columns and is named in ``saev_error``).

    ``datasets`` citizenship: pickling drops the model; a worker reloads it lazily from the paths
    (or, for in-memory objects, finds them in the forked parent's registry).  The pickled state,
    hence ``datasets``' fingerprint, is a content hash of the model, processor, SAE and weights plus
    every setting that changes the output, so a second identical ``map`` is a cache hit.  With
    ``with_rank=True`` each worker uses ``cuda:{rank % n_gpus}`` when GPUs exist and ``device`` is
    not set.  Prefer :meth:`map`, which also declares the output ``features`` (so a first batch whose
    ``saev_error`` values are all null cannot fix that column's type to null).
    """

    def __init__(self, model, processor, sae, weights, layer: int | str | None = None, *, delta: float = 1.0,
                 feature_set: str = "cooccur", responses: bool | str = "auto", max_length: int | None = None,
                 exclude_special_tokens: bool = False, prefix: str = "saev_", device: str | None = None,
                 dtype: str | None = None):
        if feature_set not in FEATURE_SETS:
            raise InputError(f"feature_set={feature_set!r}; use one of {', '.join(FEATURE_SETS)}")
        if responses not in (True, False, "auto"):
            raise InputError(f"responses={responses!r}; use True, False or 'auto'")
        if not isinstance(delta, (int, float)) or not math.isfinite(delta):
            raise InputError(f"delta={delta!r} must be a finite number")
        self.settings = {
            "delta": float(delta), "feature_set": feature_set, "responses": responses, "max_length": max_length,
            "exclude_special_tokens": bool(exclude_special_tokens), "prefix": prefix, "dtype": dtype,
        }
        self.device = device
        self._specs: dict[str, dict[str, Any]] = {}
        self._objs: dict[str, Any] = {}
        for role, obj in (("model", model), ("processor", processor), ("sae", sae), ("weights", weights)):
            self._add(role, obj)
        self._layer_arg = layer
        self.layer: int | None = None
        if isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0:
            self.layer = layer
        if "model" in self._objs and "sae" in self._objs:
            self._bind()

    # -------------------------------------------------------------- objects and specs
    def _add(self, role: str, obj) -> None:
        if obj is None:
            if role != "processor":
                raise InputError(f"SaevScorer needs a {role}")
            self._specs[role] = {"kind": "from_model"}
            return
        if isinstance(obj, (str, os.PathLike)):
            self._specs[role] = {"kind": "path", "path": str(obj), "fingerprint": None}
            return
        self._objs[role] = obj
        self._specs[role] = {"kind": "live", "fingerprint": None}

    def _fingerprint_of(self, role: str) -> str:
        spec = self._specs[role]
        if spec["kind"] == "from_model":
            return "from_model"
        if spec.get("fingerprint") is None:
            if spec["kind"] == "path":
                spec["fingerprint"] = path_fingerprint(spec["path"])
            else:
                obj = self._objs[role]
                spec["fingerprint"] = {
                    "model": module_fingerprint, "processor": processor_fingerprint,
                    "sae": sae_fingerprint, "weights": lambda w: w.fingerprint(),
                }[role](obj)
                _LIVE[f"{role}:{spec['fingerprint']}"] = obj
        return spec["fingerprint"]

    def fingerprint(self) -> str:
        """Deterministic hash of everything the output depends on."""
        doc = {"version": SCORE_VERSION, "layer": self._layer_arg if self.layer is None else self.layer,
               "settings": self.settings,
               "inputs": {r: (self._specs[r]["kind"], self._fingerprint_of(r)) for r in self._specs}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def __getstate__(self) -> dict[str, Any]:
        for role in self._specs:
            self._fingerprint_of(role)
        return {"settings": self.settings, "device": self.device, "specs": self._specs,
                "layer_arg": self._layer_arg, "layer": self.layer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self.device = state["device"]
        self._specs = state["specs"]
        self._layer_arg = state["layer_arg"]
        self.layer = state["layer"]
        self._objs = {}
        self._worker = os.getpid() != _IMPORT_PID

    def _resolve_device(self, rank: int | None) -> str | None:
        if self.device is not None:
            return self.device
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return f"cuda:{(rank or 0) % n}"
        return None

    def _ensure_loaded(self, rank: int | None = None) -> None:
        if getattr(self, "_worker", False):
            # a forked datasets worker: OpenMP's thread pool does not survive fork (libgomp hangs on the
            # first parallel region when the parent used it), so each worker computes on one thread
            if not torch.cuda.is_available():
                torch.set_num_threads(1)
            self._worker = False
        if all(r in self._objs for r in ("model", "processor", "sae", "weights")):
            return
        device = self._resolve_device(rank)
        for role in ("model", "sae", "weights", "processor"):
            if role in self._objs:
                continue
            spec = self._specs[role]
            if spec["kind"] == "live":
                key = f"{role}:{spec['fingerprint']}"
                if key not in _LIVE:
                    raise SaevError(
                        f"this SaevScorer was built from an in-memory {role} and was unpickled in a process "
                        "that does not have it (a spawned worker or another machine); build the scorer "
                        "from paths (model folder, SAE folder, weights folder) to use it there")
                self._objs[role] = _LIVE[key]
            elif role == "model":
                from saev_curate.vlm.load import load_vlm

                model, processor = load_vlm(spec["path"], dtype=self.settings["dtype"], device=device)
                self._objs["model"] = model
                if self._specs["processor"]["kind"] == "from_model":
                    self._objs["processor"] = processor
            elif role == "sae":
                from saev_curate.sae.io import load_sae

                self._objs["sae"] = load_sae(spec["path"], device=device)
            elif role == "weights":
                self._objs["weights"] = CrossModalWeights.load(spec["path"])
            elif role == "processor":
                if spec["kind"] == "path":
                    from saev_curate.vlm.load import _load_processor  # handles Qwen2-VL without video processor

                    self._objs["processor"] = _load_processor(spec["path"], False)
                else:
                    raise InputError("processor=None needs the model given as a path (its processor is loaded "
                                     "from the same folder); pass the processor")
        self._bind()

    def _bind(self) -> None:
        model, sae = self._objs["model"], self._objs["sae"]
        self.layer = resolve_sae_layer(model, sae, self._layer_arg)
        weights = self._objs.get("weights")
        if weights is not None:
            weights.check_sae(sae)
            fitted = weights.meta.get("layer")
            if fitted is not None and int(fitted) != self.layer:
                raise InputError(f"the cross-modal weights were fitted at layer {fitted}, the scorer reads layer "
                                 f"{self.layer}; refit the weights or pass layer={fitted}")
        if "processor" not in self._objs and self._specs["processor"]["kind"] == "from_model":
            path = self._specs["model"].get("path")
            if path is None:
                raise InputError("processor=None needs the model given as a path; pass the processor")

    @property
    def model(self):
        self._ensure_loaded()
        return self._objs["model"]

    @property
    def sae(self):
        self._ensure_loaded()
        return self._objs["sae"]

    @property
    def weights(self) -> CrossModalWeights:
        self._ensure_loaded()
        return self._objs["weights"]

    # -------------------------------------------------------------- columns
    def column(self, name: str) -> str:
        return self.settings["prefix"] + name

    def output_columns(self, responses: bool = True) -> list[str]:
        names = list(BASE_COLUMNS) + (list(RESPONSE_COLUMNS) if responses else []) + ["error"]
        return [self.column(n) for n in names]

    def features(self, dataset=None, responses: bool | None = None):
        """``datasets.Features`` of the output (input columns of ``dataset`` + the score columns)."""
        from datasets import Features, Value

        if responses is None:
            responses = self._responses_for(list(getattr(dataset, "column_names", None) or []))
        out = dict(dataset.features) if dataset is not None and dataset.features is not None else {}
        for name in self.output_columns(responses):
            short = name[len(self.settings["prefix"]):]
            out[name] = Value("string") if short == "error" else (
                Value("int64") if short in _INT_COLUMNS else Value("float64"))
        return Features(out)

    def _responses_for(self, keys) -> bool:
        r = self.settings["responses"]
        if r != "auto":
            return bool(r)
        keys = set(keys)
        return {"chosen", "rejected"} <= keys or {"response_1", "response_2"} <= keys

    # -------------------------------------------------------------- scoring
    def _score_mode(self, rows: list[dict], mode: str) -> dict[str, list]:
        model, processor = self._objs["model"], self._objs["processor"]
        sae, weights = self._objs["sae"], self._objs["weights"]
        n = len(rows)
        acts, kept, errors = capture_rows(model, processor, rows, self.layer, mode=mode,
                                          max_length=self.settings["max_length"],
                                          exclude_special_tokens=self.settings["exclude_special_tokens"])
        out: dict[str, list] = {k: [None] * n for k in BASE_COLUMNS}
        out["error"] = list(errors)
        if acts is None:
            return out
        cols = score_activations(sae, weights.omega, acts.resid, acts.image_mask, acts.text_mask,
                                 acts.attention_mask, delta=self.settings["delta"],
                                 feature_set=self.settings["feature_set"])
        for j, i in enumerate(kept):
            for k in BASE_COLUMNS:
                out[k][i] = cols[k][j]
            out["error"][i] = cols["error"][j]
        return out

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        from saev_curate.vlm.formats import batch_to_rows

        self._ensure_loaded(rank)
        if isinstance(batch, Mapping):
            keys = list(batch.keys())
            rows = batch_to_rows({k: batch[k] for k in keys})
        else:  # a list of row dicts
            rows = list(batch)
            keys = list(rows[0]) if rows else []
        res = self._score_mode(rows, "prompt")
        out = {self.column(k): res[k] for k in BASE_COLUMNS}
        errors = list(res["error"])
        if self._responses_for(keys):
            chosen = self._score_mode(rows, "chosen")
            rejected = self._score_mode(rows, "rejected")
            margin = []
            for i in range(len(rows)):
                c, r = chosen["score"][i], rejected["score"][i]
                margin.append(None if c is None or r is None else c - r)
                extra = [f"{m}: {e}" for m, e in (("chosen", chosen["error"][i]), ("rejected", rejected["error"][i]))
                         if e is not None and e != errors[i]]
                if extra:
                    errors[i] = "; ".join(([errors[i]] if errors[i] else []) + extra)
            out[self.column("score_chosen")] = chosen["score"]
            out[self.column("score_rejected")] = rejected["score"]
            out[self.column("score_margin")] = margin
        out[self.column("error")] = errors
        return out

    @torch.no_grad()
    def explain(self, row: dict, *, mode: str = "prompt", top: int | None = 20) -> list[dict[str, Any]]:
        """Why a row scores what it scores: its co-occurring features with ω, sorted by ω descending.

        Each entry: ``feature``, ``omega`` (None when undefined), ``class``, ``text_max``,
        ``image_max``.  The defined ω of all entries (``top=None``) sum to the row's ``saev_score``.
        """
        from saev_curate.crossmodal import CLASS_NAMES

        self._ensure_loaded()
        sae, weights = self._objs["sae"], self._objs["weights"]
        acts, kept, errors = capture_rows(self._objs["model"], self._objs["processor"], [row], self.layer,
                                          mode=mode, max_length=self.settings["max_length"],
                                          exclude_special_tokens=self.settings["exclude_special_tokens"])
        if acts is None:
            raise InputError(f"this row cannot be scored: {errors[0]}")
        valid = acts.image_mask[0] | acts.text_mask[0]
        z = sae.encode(acts.resid[0][valid].to(_sae_device(sae))).float().cpu()
        is_img = acts.image_mask[0][valid].cpu()
        if not bool(is_img.any()) or bool(is_img.all()):
            raise InputError("this row has no image tokens or no text tokens")
        tmax, imax = z[~is_img].max(0).values, z[is_img].max(0).values
        delta = self.settings["delta"]
        feats = ((tmax > delta) & (imax > delta)).nonzero(as_tuple=True)[0].tolist()
        out = []
        for k in feats:
            w = float(weights.omega[k])
            out.append({"feature": k, "omega": None if math.isnan(w) else w, "class": CLASS_NAMES[int(weights.classes[k])],
                        "text_max": float(tmax[k]), "image_max": float(imax[k])})
        out.sort(key=lambda e: (-(e["omega"] if e["omega"] is not None else -math.inf), e["feature"]))
        return out if top is None else out[:top]

    def map(self, dataset, *, batch_size: int = 8, num_proc: int | None = None, **kwargs):
        """``dataset.map(self, batched=True, features=...)`` (+ ``with_rank=True`` for a ``Dataset``).

        Works on ``Dataset`` and streaming ``IterableDataset`` (``num_proc`` only for the former).
        """
        from datasets import IterableDataset

        features = self.features(dataset) if getattr(dataset, "features", None) is not None else None
        map_kwargs = dict(batched=True, batch_size=batch_size, features=features, **kwargs)
        if isinstance(dataset, IterableDataset):
            if num_proc is not None:
                raise InputError("num_proc is not supported for a streaming IterableDataset")
            return dataset.map(self, **map_kwargs)
        map_kwargs.setdefault("desc", "SAE-V scoring")
        return dataset.map(self, with_rank=True, num_proc=num_proc, **map_kwargs)

    def __repr__(self) -> str:
        return f"SaevScorer(layer={self.layer if self.layer is not None else self._layer_arg}, {self.settings})"

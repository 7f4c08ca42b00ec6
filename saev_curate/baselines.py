"""Baselines the SAE-V paper compares against, in the same interface as the SAE-V scorer.

* random: ``select(ds, by="random", fraction=..., seed=...)`` (no scoring needed);
* L0 and co-occurring L0: columns ``saev_l0`` and ``saev_cooccur_l0`` written by :class:`SaevScorer`
  (``select(ds, by="l0")`` / ``by="cooccur_l0"``);
* :class:`ResponsePerplexityScorer`: the model's own image-conditioned perplexity of the response
  (``saev_ppl``), an IFD-like difficulty signal that needs no extra model;
* :class:`ClipScorer`: CLIP image-prompt cosine (``saev_clip_score``), when a local CLIP model is given.

Each scorer is a callable for ``ds.map(scorer, batched=True)`` and has ``.map(ds)`` (declares the
output features); a row that cannot be scored keeps its place with a null value and a reason in
``saev_ppl_error`` / ``saev_clip_error``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from saev_curate.errors import InputError


def _rows_of(batch) -> tuple[list[dict], list[str]]:
    from saev_curate.vlm.formats import batch_to_rows

    if isinstance(batch, Mapping):
        keys = list(batch.keys())
        return batch_to_rows({k: batch[k] for k in keys}), keys
    rows = list(batch)
    return rows, (list(rows[0]) if rows else [])


def _map(scorer, dataset, columns: dict[str, str], batch_size: int, **kwargs):
    from datasets import Features, IterableDataset, Value

    feats = None
    if getattr(dataset, "features", None) is not None:
        feats = Features({**dataset.features, **{c: Value(t) for c, t in columns.items()}})
    kw = dict(batched=True, batch_size=batch_size, features=feats, **kwargs)
    if isinstance(dataset, IterableDataset):
        return dataset.map(scorer, **kw)
    return dataset.map(scorer, **kw)


class ResponsePerplexityScorer:
    """Perplexity of the (chosen) response given image + prompt under the model itself.

    ``mode="chosen"`` (preference rows: the preferred response; SFT rows: the completion / last
    assistant turn).  Response tokens are those after the prompt rendered with the generation prompt;
    a row whose prompt rendering is not a token prefix of the full rendering gets an error.
    """

    def __init__(self, model, processor, *, mode: str = "chosen", prefix: str = "saev_"):
        if mode not in ("chosen", "rejected", "full"):
            raise InputError(f"mode={mode!r}; use 'chosen', 'rejected' or 'full'")
        self.model, self.processor, self.mode, self.prefix = model, processor, mode, prefix

    @property
    def columns(self) -> dict[str, str]:
        return {f"{self.prefix}ppl": "float64", f"{self.prefix}ppl_error": "string"}

    def __getstate__(self):
        """Content fingerprints only (a stable ``datasets`` cache key); forked workers find the
        objects in the parent's registry, as for an in-memory :class:`SaevScorer`."""
        from saev_curate.score import _LIVE, module_fingerprint, processor_fingerprint

        if getattr(self, "_fps", None) is None:
            self._fps = (module_fingerprint(self.model), processor_fingerprint(self.processor))
        _LIVE[f"model:{self._fps[0]}"] = self.model
        _LIVE[f"processor:{self._fps[1]}"] = self.processor
        return {"mode": self.mode, "prefix": self.prefix, "fps": self._fps}

    def __setstate__(self, state):
        from saev_curate.errors import SaevError
        from saev_curate.score import _LIVE

        from saev_curate.score import _IMPORT_PID

        self.mode, self.prefix, self._fps = state["mode"], state["prefix"], state["fps"]
        if os.getpid() != _IMPORT_PID and not torch.cuda.is_available():
            torch.set_num_threads(1)  # a forked worker: see SaevScorer._ensure_loaded
        try:
            self.model = _LIVE[f"model:{self._fps[0]}"]
            self.processor = _LIVE[f"processor:{self._fps[1]}"]
        except KeyError:
            raise SaevError("ResponsePerplexityScorer was unpickled in a process without its model (a spawned "
                            "worker); use num_proc with the fork start method or score in one process") from None

    @torch.no_grad()
    def __call__(self, batch, rank: int | None = None) -> dict[str, list]:
        from saev_curate.vlm.formats import prepare_batch

        rows, _ = _rows_of(batch)
        n = len(rows)
        ppl: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        prompt = prepare_batch(self.processor, rows, mode="prompt", on_error="record")
        full = prepare_batch(self.processor, rows, mode=self.mode, on_error="record")
        for i in range(n):
            errors[i] = full.row_errors[i] or prompt.row_errors[i]
        if full.inputs is not None:
            dev = next(self.model.parameters()).device
            dtype = next(self.model.parameters()).dtype
            inputs = {k: (v.to(dev, dtype) if k.startswith("pixel_values") and v.is_floating_point() else v.to(dev))
                      if isinstance(v, torch.Tensor) else v for k, v in full.inputs.items()}
            logits = self.model(**inputs, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            ids = inputs["input_ids"]
            tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
            am = inputs.get("attention_mask", torch.ones_like(ids)).bool()
            p_pos = {i: j for j, i in enumerate(prompt.kept)}
            for j, i in enumerate(full.kept):
                if errors[i] is not None or i not in p_pos:
                    continue
                pid = prompt.inputs["input_ids"][p_pos[i]]
                pam = prompt.inputs.get("attention_mask", torch.ones_like(pid))[p_pos[i]].bool()
                p_ids = pid[pam].tolist()
                pos = am[j].nonzero(as_tuple=True)[0]
                f_ids = ids[j, pos].tolist()
                if len(f_ids) <= len(p_ids) or f_ids[:len(p_ids)] != p_ids:
                    errors[i] = "the prompt's tokens are not a prefix of the prompt+response tokens"
                    continue
                resp = pos[len(p_ids):]  # positions of response tokens; predicted from position - 1
                nll = -tok_lp[j, resp - 1].double().mean()
                ppl[i] = float(math.exp(float(nll)))
        return {f"{self.prefix}ppl": ppl, f"{self.prefix}ppl_error": errors}

    def map(self, dataset, *, batch_size: int = 8, **kwargs):
        return _map(self, dataset, self.columns, batch_size, **kwargs)


class ClipScorer:
    """CLIP cosine between each row's (first) image and its prompt text, from a local CLIP folder
    (``transformers`` ``CLIPModel`` + processor).  Column ``saev_clip_score``."""

    def __init__(self, clip_path: str, *, device: str | None = None, prefix: str = "saev_"):
        self.clip_path, self.device, self.prefix = str(clip_path), device, prefix
        self._model = self._processor = None

    @property
    def columns(self) -> dict[str, str]:
        return {f"{self.prefix}clip_score": "float64", f"{self.prefix}clip_error": "string"}

    def __getstate__(self):
        from saev_curate.score import path_fingerprint

        return {"clip_path": self.clip_path, "device": self.device, "prefix": self.prefix,
                "fingerprint": path_fingerprint(self.clip_path)}

    def __setstate__(self, state):
        self.clip_path, self.device, self.prefix = state["clip_path"], state["device"], state["prefix"]
        self._model = self._processor = None

    def _load(self):
        if self._model is None:
            from transformers import CLIPModel, CLIPProcessor

            self._model = CLIPModel.from_pretrained(self.clip_path).eval()
            if self.device:
                self._model.to(self.device)
            self._processor = CLIPProcessor.from_pretrained(self.clip_path)

    @staticmethod
    def _prompt_text(row: dict) -> str | None:
        from saev_curate.vlm.formats import row_to_conversation

        msgs, _, _ = row_to_conversation(row, "prompt")
        return " ".join(p.get("text", "") for m in msgs if m["role"] != "assistant" for p in m["content"]
                        if p["type"] == "text").strip()

    @torch.no_grad()
    def __call__(self, batch, rank: int | None = None) -> dict[str, list]:
        from saev_curate.vlm.formats import load_image, row_to_conversation

        self._load()
        rows, _ = _rows_of(batch)
        n = len(rows)
        scores: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        texts, images, idx = [], [], []
        for i, row in enumerate(rows):
            try:
                _, refs, _ = row_to_conversation(row, "prompt")
                if not refs:
                    raise ValueError("the row has no image")
                images.append(load_image(refs[0]))
                texts.append(self._prompt_text(row) or "")
                idx.append(i)
            except Exception as e:  # noqa: BLE001 - the reason goes into the row's error column
                errors[i] = str(e)
        if idx:
            inp = self._processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
            dev = next(self._model.parameters()).device
            inp = {k: v.to(dev) for k, v in inp.items()}
            ti = self._model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp.get("attention_mask"))
            ii = self._model.get_image_features(pixel_values=inp["pixel_values"])
            ti = getattr(ti, "pooler_output", ti)
            ii = getattr(ii, "pooler_output", ii)
            cos = torch.nn.functional.cosine_similarity(ti.float(), ii.float(), dim=-1)
            for j, i in enumerate(idx):
                scores[i] = float(cos[j])
        return {f"{self.prefix}clip_score": scores, f"{self.prefix}clip_error": errors}

    def map(self, dataset, *, batch_size: int = 32, **kwargs):
        return _map(self, dataset, self.columns, batch_size, **kwargs)

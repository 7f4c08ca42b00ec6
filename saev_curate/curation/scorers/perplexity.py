"""Baseline: the model's own image-conditioned perplexity of the response (``saev_ppl``), an IFD-like
difficulty signal that needs no extra model."""

from __future__ import annotations

import math
import os

import torch

from saev_curate.curation.scorers.base import Scorer
from saev_curate.devices import to_model_inputs
from saev_curate.errors import InputError
from saev_curate.io.fingerprint import module_fingerprint, processor_fingerprint

__all__ = ["ResponsePerplexityScorer"]


class ResponsePerplexityScorer(Scorer):
    """Perplexity of the (chosen) response given image + prompt under the model itself.

    ``mode="chosen"`` (preference rows: the preferred response; SFT rows: the completion / last
    assistant turn).  Response tokens are those after the prompt rendered with the generation prompt;
    a row whose prompt rendering is not a token prefix of the full rendering gets an error.  ``model``
    and ``processor`` are objects (or a model folder and ``processor=None``).
    """

    COLUMNS = {"ppl": "float64", "ppl_error": "string"}
    SELECT = {"ppl": ("ppl", True)}
    FINGERPRINTS = {"model": module_fingerprint, "processor": processor_fingerprint}
    ROLES = ("model", "processor")

    def __init__(self, model, processor=None, *, mode: str = "chosen", prefix: str = "saev_",
                 device: str | None = None):
        if mode not in ("chosen", "rejected", "full"):
            raise InputError(f"mode={mode!r}; use 'chosen', 'rejected' or 'full'")
        super().__init__(prefix=prefix, device=device, mode=mode)
        self.add_role("model", model)
        self.add_role("processor", processor, optional=isinstance(model, (str, os.PathLike)))

    @property
    def mode(self) -> str:
        return self.settings["mode"]

    def load_role(self, role: str, path: str | None, device: str | None) -> None:
        from saev_curate.vlm.load import load_processor, load_vlm

        if role == "model":
            model, processor = load_vlm(path, device=device)
            self._objs["model"] = model
            if self._specs["processor"]["kind"] == "none":
                self._objs["processor"] = processor
        else:
            self._objs["processor"] = load_processor(path)

    @torch.no_grad()
    def score_rows(self, rows: list[dict], keys: list[str]) -> dict[str, list]:
        from saev_curate.vlm.layers import context_length
        from saev_curate.vlm.rows import prepare_batch

        model, processor, mode = self._objs["model"], self._objs["processor"], self.settings["mode"]
        n = len(rows)
        ppl: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        ctx = context_length(model)  # a row beyond the model's context is that row's error
        prompt = prepare_batch(processor, rows, mode="prompt", on_error="record", max_context=ctx)
        full = prepare_batch(processor, rows, mode=mode, on_error="record", max_context=ctx)
        for i in range(n):
            errors[i] = full.row_errors[i] or prompt.row_errors[i]
        if full.inputs is not None:
            inputs = to_model_inputs(full.inputs, model)
            logits = model(**inputs, use_cache=False).logits.float()
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
        return {"ppl": ppl, "ppl_error": errors}

"""Baseline: the model's own image-conditioned perplexity of the response (``saev_ppl``), an IFD-like
difficulty signal that needs no extra model, and its least likely content token (``saev_min_token_logprob``):
one wrong fact in a long answer is diluted in the mean, the minimum localises it."""

from __future__ import annotations

import math
import os

import torch

from saev_curate.core.devices import to_model_inputs
from saev_curate.core.errors import InputError
from saev_curate.curation.scorers.base import Scorer
from saev_curate.io.fingerprint import module_fingerprint, processor_fingerprint

__all__ = ["ResponsePerplexityScorer"]


class ResponsePerplexityScorer(Scorer):
    """Perplexity of the (chosen) response given image + prompt under the model itself.

    ``mode="chosen"`` (preference rows: the preferred response; SFT rows: the completion / last
    assistant turn).  Response tokens are those after the prompt rendered with the generation prompt;
    a row whose prompt rendering is not a token prefix of the full rendering gets an error.  ``model``
    and ``processor`` are objects (or a model folder and ``processor=None``).

    ``ppl`` is exp of the mean NLL over all response tokens.  ``min_token_logprob`` is the lowest
    log-probability among the response's content tokens (not written by the chat template: see
    :func:`~saev_curate.curation.agreement.template_token_ids`), where a mean dilutes one wrong fact;
    ``min_token_index`` (its index among all response tokens, 0 = first after the prompt) and
    ``min_token_text`` (the decoded token) say where the blame lands.  A response with no content token
    keeps ``ppl`` but gets None there and a reason in ``ppl_error``.
    """

    COLUMNS = {"ppl": "float64", "min_token_logprob": "float64", "min_token_index": "int64",
               "min_token_text": "string", "ppl_error": "string"}
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

    def _template_ids(self) -> set[int]:
        """Ids the chat template writes (computed once per loaded scorer; never pickled)."""
        if getattr(self, "_template", None) is None:
            from saev_curate.curation.agreement import template_token_ids

            self._template = template_token_ids(self._objs["processor"])
        return self._template

    @torch.no_grad()
    def score_rows(self, rows: list[dict], keys: list[str]) -> dict[str, list]:
        from saev_curate.vlm.layers import context_length
        from saev_curate.vlm.rows import prepare_batch

        model, processor, mode = self._objs["model"], self._objs["processor"], self.settings["mode"]
        n = len(rows)
        ppl: list[float | None] = [None] * n
        min_lp: list[float | None] = [None] * n
        min_idx: list[int | None] = [None] * n
        min_text: list[str | None] = [None] * n
        errors: list[str | None] = [None] * n
        template, tok = self._template_ids(), getattr(processor, "tokenizer", processor)
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
                lp = tok_lp[j, resp - 1].double()
                ppl[i] = float(math.exp(float(-lp.mean())))
                r_ids = f_ids[len(p_ids):]
                content = torch.tensor([t not in template for t in r_ids], device=lp.device)
                if not content.any():
                    errors[i] = "the response has no content token (only tokens the chat template writes)"
                    continue
                k = int(lp.masked_fill(~content, math.inf).argmin())
                min_lp[i], min_idx[i] = float(lp[k]), k
                min_text[i] = tok.decode([r_ids[k]]).strip()
        return {"ppl": ppl, "min_token_logprob": min_lp, "min_token_index": min_idx, "min_token_text": min_text,
                "ppl_error": errors}

"""Feature labels without a language model: what a feature's decoder direction says, and what it fires on.

* :func:`decoder_logits`: each feature's decoder row read through the model's final norm weight and unembedding
  (the logit lens of the direction the feature writes): the tokens it promotes and suppresses, and the histogram
  of its logit effects (Neuronpedia's ``pos_str``/``neg_str``, ``logits_hist_data_*``).
* :func:`row_concepts` / :func:`concept_precision`: on data that knows what each row shows (the testbed's
  ``concept`` column: digit, colour, shape, count, kind, ...), the share of a feature's firing rows that show its
  best concept ("fires on digit=7: 0.93"); :func:`interpretable_share` is the share of live features whose best
  concept reaches a precision, a measure of how interpretable an SAE is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saev_curate.core.errors import InputError

__all__ = ["concept_precision", "decoder_logits", "final_norm_weight", "interpretable_share", "row_concepts"]

#: the concept record's keys that name what an image shows (the testbed's :class:`~saev_curate.testbed.images.Concept`)
CONCEPT_KEYS = ("kind", "digit", "shape", "colour", "count", "size", "position", "brightness")


def final_norm_weight(model) -> Tensor | None:
    """The language model's final norm scale (None when it has none): what the residual stream is multiplied by
    before the unembedding, per dimension (Gemma's ``1 + w`` convention included)."""
    decoder = model.get_decoder()
    norm = next((getattr(decoder, n) for n in ("norm", "final_layernorm", "ln_f") if hasattr(decoder, n)), None)
    w = getattr(norm, "weight", None)
    if w is None:
        return None
    w = w.detach().float().cpu()
    model_type = str(getattr(getattr(model.config, "text_config", model.config), "model_type", ""))
    return 1.0 + w if model_type.startswith("gemma") else w


@torch.no_grad()
def decoder_logits(model, processor, sae, features: list[int], *, top: int = 10, n_bins: int = 24,
                   chunk: int = 1024) -> dict[int, dict]:
    """For each feature of ``features``: the ``top`` tokens its decoder direction promotes (``pos_str``,
    ``pos_values``) and suppresses (``neg_str``, ``neg_values``) through the final norm weight and the
    unembedding, and the histogram of its logit effects over the vocabulary."""
    out_emb = model.get_output_embeddings()
    if out_emb is None or getattr(out_emb, "weight", None) is None:
        raise InputError(f"{type(model).__name__} has no output embeddings (LM head); decoder logits need one")
    W_U = out_emb.weight.detach().float().cpu()  # [V, d]
    d_in = int(sae.cfg.d_in)
    if W_U.shape[1] != d_in:
        raise InputError(f"the SAE writes {d_in}-dim directions but the model's unembedding reads {W_U.shape[1]}")
    norm = final_norm_weight(model)
    tok = getattr(processor, "tokenizer", processor)
    out: dict[int, dict] = {}
    for s in range(0, len(features), chunk):
        ids = torch.tensor(features[s:s + chunk], dtype=torch.long)
        dirs = sae.W_dec.detach().float().cpu()[ids]
        if norm is not None:
            dirs = dirs * norm
        logits = dirs @ W_U.T  # [n, V]
        k = min(top, logits.shape[1])
        pos_v, pos_i = logits.topk(k, dim=1)
        neg_v, neg_i = logits.topk(k, dim=1, largest=False)
        for j, f in enumerate(ids.tolist()):
            row = logits[j]
            lo, hi = float(row.min()), float(row.max())
            heights = torch.histc(row, bins=n_bins, min=lo, max=hi if hi > lo else lo + 1e-6)
            width = ((hi if hi > lo else lo + 1e-6) - lo) / n_bins
            out[f] = {"pos_str": tok.convert_ids_to_tokens(pos_i[j].tolist()), "pos_values": pos_v[j].tolist(),
                      "neg_str": tok.convert_ids_to_tokens(neg_i[j].tolist()), "neg_values": neg_v[j].tolist(),
                      "logits_hist_data_bar_heights": heights.long().tolist(),
                      "logits_hist_data_bar_values": [lo + width * (i + 0.5) for i in range(n_bins)]}
    return out


def row_concepts(row: dict) -> list[str]:
    """The concept labels of a row whose ``concept`` column records what its image shows (``key=value``, e.g.
    ``digit=7``, ``colour=red``, ``kind=face``, ``position=top left``); empty when the row has none."""
    c = row.get("concept")
    if not isinstance(c, dict):
        return []
    out = []
    for key in CONCEPT_KEYS:
        v = c.get(key)
        if v is None or (key == "position" and not v):
            continue
        out.append(f"{key}={' '.join(v) if isinstance(v, (list, tuple)) else v}")
    return out


def concept_precision(stats, *, min_rows: int = 5) -> dict[int, dict]:
    """Per live feature of :class:`~saev_curate.inspect.features.FeatureStats` ``stats`` that fired on at least
    ``min_rows`` rows with concept labels: its best concept (the label holding on the largest share of its firing
    rows), that share (``precision``), the share of the concept's rows it fires on (``recall``) and its support."""
    if not stats.concepts:
        return {}
    names = list(stats.concepts)
    fired = stats.rows_firing.double()
    counts = stats.concept_counts.double()  # [F, C]
    prec = counts / fired.clamp_min(1)[:, None]
    best_p, best_c = prec.max(1)
    out = {}
    for f in (fired >= min_rows).nonzero().flatten().tolist():
        c = int(best_c[f])
        out[f] = {"concept": names[c], "precision": float(best_p[f]),
                  "recall": float(counts[f, c] / max(int(stats.concept_rows[c]), 1)), "rows": int(fired[f])}
    return out


def interpretable_share(stats, *, threshold: float = 0.8, min_rows: int = 5) -> dict:
    """The share of live features (fired at least once) whose best concept has precision >= ``threshold`` on at
    least ``min_rows`` firing rows (a feature firing on fewer rows counts as not meeting it)."""
    live = int((stats.rows_firing > 0).sum())
    prec = concept_precision(stats, min_rows=min_rows)
    hits = sum(p["precision"] >= threshold for p in prec.values())
    return {"live": live, "with_support": len(prec), "meeting": hits,
            "share": hits / live if live else math.nan,
            "share_with_support": hits / len(prec) if prec else math.nan, "threshold": threshold,
            "min_rows": min_rows}

"""Encoding in bounded chunks (saev_curate.sae.chunks, issue 23) changes nothing but memory: the fit (ω, the pair
tables, the read-outs) and every scorer column with 3 tokens per encoded chunk equal those with every token of a
batch in one chunk (to the fp32 tolerance of tests/float_tolerance.py), for a standard and a topk SAE."""

from __future__ import annotations

import math

import pytest
import torch
from float_tolerance import assert_columns_close
from scoring_rows import LAYER, make_rows, make_sae

import saev_curate.sae.chunks as chunks
from saev_curate.curation.crossmodal import CrossModalWeights
from saev_curate.curation.scorers import SaevScorer


def _fit_and_score(model, processor, sae, rows):
    weights = CrossModalWeights.fit(model, processor, sae, rows, LAYER, n_reference=None)
    return weights, SaevScorer(model, processor, sae, weights, LAYER, control_prompt="describe it")(rows)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_three_tokens_per_chunk_equal_one_chunk(tiny_vlm, monkeypatch, architecture):
    model, processor = tiny_vlm("llava")
    sae = make_sae(model.config.get_text_config().hidden_size, architecture=architecture,
                   k=24 if architecture == "topk" else None)
    rows = make_rows(8, seed=11, with_bad=False)
    monkeypatch.setattr(chunks, "ENCODE_BUDGET", 1 << 30)  # one chunk per batch
    whole_w, whole = _fit_and_score(model, processor, sae, rows)
    calls = []
    real = chunks.encode_chunks

    def counted(sae_, x, **kw):
        for s, z in real(sae_, x, **kw):
            calls.append(z.shape[0])
            yield s, z

    monkeypatch.setattr(chunks, "ENCODE_BUDGET", 3 * sae.cfg.d_sae)  # 3 tokens per chunk
    monkeypatch.setattr(chunks, "encode_chunks", counted)
    small_w, small = _fit_and_score(model, processor, sae, rows)
    assert calls and max(calls) == 3  # the small budget was used
    assert torch.equal(whole_w.classes, small_w.classes)
    assert torch.allclose(whole_w.omega, small_w.omega, rtol=1e-5, atol=1e-6, equal_nan=True)
    for name in ("pairs", "answer_pairs"):
        a, b = getattr(whole_w, name), getattr(small_w, name)
        assert torch.equal(a.keys, b.keys) and torch.allclose(a.npmi, b.npmi, atol=1e-6), name
    for name in ("answer_readout", "token_readout"):
        a, b = getattr(whole_w, name), getattr(small_w, name)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.counts, b.counts), name
    assert set(whole) == set(small)
    checked = 0
    for col, values in whole.items():
        assert_columns_close(small[col], values, col)
        checked += any(isinstance(v, float) and math.isfinite(v) for v in values)
    assert checked >= 10  # score, pair agreement, read-outs, grounding ... were compared with values

"""Known-answer tests of the cross-modal weights (stages 1-2) on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from saev_curate.core.errors import InputError
from saev_curate.curation.crossmodal import (
    CrossModalFitter,
    CrossModalWeights,
    flatten_tokens,
    token_top_features,
)
from saev_curate.sae import SAE, SAEConfig


def identity_sae(d: int) -> SAE:
    """z = ReLU(x): feature k fires exactly where coordinate k of the residual is positive."""
    sae = SAE(SAEConfig(d_in=d, d_sae=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
    return sae


def one_row_batch(vectors: list[list[float]], is_image: list[bool], row_id: int = 0) -> dict:
    resid = torch.tensor([vectors], dtype=torch.float32)
    img = torch.tensor([is_image])
    return {"resid": resid, "image_mask": img, "text_mask": ~img, "attention_mask": torch.ones_like(img, dtype=torch.long),
            "row_ids": [row_id]}


def unit(v):
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm()


def test_omega_is_hand_computed_mean_cosine_and_text_only_feature_has_none():
    # d = 4.  Feature 0: only text tokens.  Feature 1: 2 text + 2 image tokens (m = 2).
    # Feature 2: 1 text + 3 image (mixed: undefined).  Feature 3: never positive (dead).
    t1, t2 = [1.0, 3.0, -0.5, -1.0], [2.0, 2.0, 1.0, -2.0]
    i1, i2, i3 = [-1.0, 1.0, 2.0, -1.0], [-0.5, 4.0, 0.5, -3.0], [-2.0, -1.0, 1.0, -1.0]
    batch = one_row_batch([t1, t2, i1, i2, i3], [False, False, True, True, True])
    w = CrossModalWeights.fit_activations([batch], identity_sae(4), top_features_per_token=4,
                                          top_tokens_per_feature=10, tokens_per_modality=2)
    assert [w.class_of(k) for k in range(4)] == ["text", "cross_modal", "mixed", "dead"]
    assert math.isnan(w.omega[0]) and math.isnan(w.omega[2]) and math.isnan(w.omega[3])
    cos = [float(unit(a) @ unit(b)) for a in (t1, t2) for b in (i1, i2)]  # the 2x2 pairs
    assert w.omega[1].item() == pytest.approx(sum(cos) / 4, abs=1e-6)
    # feature 1's ranking: i2 (4.0) > t1 (3.0) > t2 (2.0) > i1 (1.0); i3 has z_1 = 0: not recorded
    assert w.top_position[1, :4].tolist() == [3, 0, 1, 2]
    assert w.top_is_image[1, :4].tolist() == [True, False, False, True]
    assert w.top_row[1, 4:].eq(-1).all()


def test_first_five_per_modality_in_activation_order_among_top_k():
    # Feature 0 fires on 8 tokens with decreasing activation; top_tokens_per_feature=6 keeps
    # t(8) i(7) t(6) t(5) i(4) i(3) -> first 2 text = t8, t6; first 2 image = i7, i4.
    acts = [8, 7, 6, 5, 4, 3, 2, 1]
    img = [False, True, False, False, True, True, True, False]
    rng = torch.Generator().manual_seed(0)
    other = torch.randn(8, 3, generator=rng).tolist()
    vecs = [[float(a)] + o for a, o in zip(acts, other)]
    sae = SAE(SAEConfig(d_in=4, d_sae=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0], [0.0], [0.0], [0.0]]))
    w = CrossModalWeights.fit_activations([one_row_batch(vecs, img)], sae, top_features_per_token=1,
                                          top_tokens_per_feature=6, tokens_per_modality=2)
    texts, images = [vecs[0], vecs[2]], [vecs[1], vecs[4]]
    expect = sum(float(unit(a) @ unit(b)) for a in texts for b in images) / 4
    assert w.omega[0].item() == pytest.approx(expect, abs=1e-6)
    # with 3 per modality the 6 kept tokens hold only 3 text and 3 image: still defined;
    # with 4 it is undefined although the feature fires on 4 text tokens overall (only top-6 count)
    w4 = CrossModalWeights.fit_activations([one_row_batch(vecs, img)], sae, top_features_per_token=1,
                                           top_tokens_per_feature=6, tokens_per_modality=4)
    assert math.isnan(w4.omega[0]) and w4.class_of(0) == "mixed"


def test_tie_rules_lower_feature_first_and_earlier_token_first():
    z = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    tok, feat, act = token_top_features(z, 2)
    assert feat.tolist() == [1, 2]  # three-way tie at 2.0: the lower feature indices win
    tok, feat, act = token_top_features(torch.tensor([[0.0, 0.0, 3.0]]), 2)
    assert feat.tolist() == [2]  # zeros are never recorded
    # per feature: equal activations -> the earlier token (row id, then position) wins, across batches
    f = CrossModalFitter(1, top_features_per_token=1, top_tokens_per_feature=2, tokens_per_modality=1)
    for row in range(3):
        f.observe(torch.tensor([[1.0], [1.0]]), torch.tensor([False, True]),
                  torch.tensor([row << 32, (row << 32) | 1]), torch.tensor([row, row]))
    assert f.top_row[0].tolist() == [0, 0]
    assert f.top_key[0].tolist() == [0, 1]


def test_streaming_is_independent_of_batching_and_memory_is_fixed():
    torch.manual_seed(0)
    d, n_rows, T = 8, 12, 7
    sae = SAE(SAEConfig(d_in=d, d_sae=16))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, 16))
    resid = torch.randn(n_rows, T, d)
    img = torch.zeros(n_rows, T, dtype=torch.bool)
    img[:, 1:4] = True
    am = torch.ones(n_rows, T, dtype=torch.long)
    am[::3, -2:] = 0  # some padding (never a token)
    text = am.bool() & ~img

    def batches(bs):
        return [{"resid": resid[s:s + bs], "image_mask": img[s:s + bs], "text_mask": text[s:s + bs],
                 "attention_mask": am[s:s + bs], "row_ids": list(range(s, min(s + bs, n_rows)))}
                for s in range(0, n_rows, bs)]

    kw = dict(top_features_per_token=5, top_tokens_per_feature=8, tokens_per_modality=3)
    a = CrossModalWeights.fit_activations(batches(1), sae, **kw)
    b = CrossModalWeights.fit_activations(batches(5), sae, **kw)
    assert torch.equal(a.classes, b.classes)
    assert torch.allclose(a.omega.nan_to_num(9), b.omega.nan_to_num(9), atol=1e-6)
    assert a.class_counts()["cross_modal"] > 0
    # state is the fixed-size per-feature lists, whatever the number of tokens seen
    f = CrossModalFitter(16, **kw)
    f.observe(torch.rand(1000, 16), torch.rand(1000) > 0.5, torch.arange(1000), torch.zeros(1000, dtype=torch.long))
    assert f.top_act.shape == (16, 8) and f.top_key.shape == (16, 8)


def test_padding_is_never_a_token():
    resid = torch.randn(2, 4, 3)
    img = torch.tensor([[False, True, False, False], [False, False, True, False]])
    am = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right and left padding
    tb = flatten_tokens(resid, img, am.bool() & ~img, am)
    assert tb.row.tolist() == [0, 0, 0, 1, 1, 1]
    assert tb.position.tolist() == [0, 1, 2, 0, 1, 2]  # positions in the unpadded rows


def test_save_load_round_trip_and_checks(tmp_path):
    t1, t2 = [1.0, 3.0, 0.5, -1.0], [2.0, 2.0, 1.0, -2.0]
    i1, i2 = [-1.0, 1.0, 2.0, -1.0], [-0.5, 4.0, 0.5, -3.0]
    sae = identity_sae(4)
    w = CrossModalWeights.fit_activations([one_row_batch([t1, t2, i1, i2], [False, False, True, True])], sae,
                                          tokens_per_modality=2, meta={"layer": 3})
    w.save(tmp_path / "w")
    v = CrossModalWeights.load(tmp_path / "w")
    assert torch.equal(v.omega.nan_to_num(7), w.omega.nan_to_num(7)) and torch.equal(v.classes, w.classes)
    assert torch.equal(v.top_row, w.top_row) and torch.equal(v.top_is_image, w.top_is_image)
    assert v.meta["tokens_per_modality"] == 2 and v.meta["layer"] == 3
    assert v.fingerprint() == w.fingerprint()
    v.check_sae(sae)
    other = identity_sae(4)
    with torch.no_grad():
        other.b_enc.fill_(0.1)
    with pytest.raises(InputError, match="different SAE"):
        v.check_sae(other)
    with pytest.raises(InputError, match="d_sae"):
        v.check_sae(identity_sae(5))
    with pytest.raises(InputError, match="not a cross-modal weights folder"):
        CrossModalWeights.load(tmp_path)


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError):
        CrossModalFitter(4, tokens_per_modality=6, top_tokens_per_feature=5)
    with pytest.raises(InputError):
        CrossModalFitter(4, top_features_per_token=0)
    sae = identity_sae(2)
    b = one_row_batch([[1.0, 1.0]], [False], row_id=5)
    with pytest.raises(InputError, match="increase"):
        CrossModalWeights.fit_activations([b, dict(b, row_ids=[2])], sae)

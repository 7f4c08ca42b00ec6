"""Brute-force reference for SAE-V stages 1-3, written from the method doc (sections 4-5) with
loops and every vector kept, against which the streaming fit and the scorer must agree on tiny
LLaVA and Qwen2-VL models.

Both sides see the same captured batches (same rows, same padding), so they see bit-identical
residuals; everything after the capture is computed independently here.  Discrete results (feature
classes, selected tokens, co-occurring feature sets, errors) must be equal exactly; floating
results (ω, scores) to 1e-6 (the fast path sums unit vectors in float64, the reference averages 25
cosines).  Tie rules (documented in saev_curate.curation.crossmodal): per token, lower feature index first;
per feature, earlier (row id, position in the unpadded row) first.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saev_curate.curation.capture import capture_rows, reference_indices  # noqa: E402
from saev_curate.curation.crossmodal import CLASS_NAMES, CrossModalWeights  # noqa: E402

FAMILIES = ["llava", "qwen2_vl"]
from scoring_rows import LAYER, make_rows, make_sae  # noqa: E402


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request, tiny_vlm):
    model, processor = tiny_vlm(request.param)
    sae = make_sae(model.config.get_text_config().hidden_size)
    return request.param, model, processor, sae


def captured_batches(model, processor, rows, indices, batch_size, mode="prompt"):
    """The same batches the library forms: consecutive sampled rows, ``batch_size`` at a time."""
    out = []
    for s in range(0, len(indices), batch_size):
        ids = indices[s:s + batch_size]
        acts, kept, errors = capture_rows(model, processor, [rows[i] for i in ids], LAYER, mode=mode)
        out.append((ids, acts, kept, errors))
    return out


# ---------------------------------------------------------------------------------------------
# the reference


def reference_tokens(batches, sae):
    """Every valid token: (key=(row id, position in unpadded row), is_image, h, z), in stream order."""
    tokens = []
    for ids, acts, kept, _ in batches:
        if acts is None:
            continue
        for j, i in enumerate(kept):
            nonpad = acts.attention_mask[j].bool()
            valid_pos = [t for t in range(nonpad.numel()) if acts.image_mask[j, t] or acts.text_mask[j, t]]
            if not valid_pos:
                continue
            z_row = sae.encode(acts.resid[j, valid_pos]).detach()  # a gemm over the row's tokens
            pos_in_row = {t: p for p, t in enumerate(t for t in range(nonpad.numel()) if nonpad[t])}
            for q, t in enumerate(valid_pos):
                tokens.append(((ids[i], pos_in_row[t]), bool(acts.image_mask[j, t]),
                               acts.resid[j, t].double(), z_row[q].tolist()))
    return tokens


def reference_fit(tokens, d_sae, *, top_features_per_token=50, top_tokens_per_feature=30,
                  tokens_per_modality=5):
    records = defaultdict(list)  # feature -> [(activation, key, is_image, h)]
    for key, is_image, h, z in tokens:
        ranked = sorted(range(d_sae), key=lambda k: (-z[k], k))[:top_features_per_token]
        for k in ranked:
            if z[k] > 0:
                records[k].append((z[k], key, is_image, h))
    omega = [math.nan] * d_sae
    classes = []
    selected = {}
    for k in range(d_sae):
        top = sorted(records[k], key=lambda r: (-r[0], r[1]))[:top_tokens_per_feature]
        texts = [r for r in top if not r[2]]
        images = [r for r in top if r[2]]
        if not top:
            classes.append("dead")
        elif not images:
            classes.append("text")
        elif not texts:
            classes.append("image")
        elif len(texts) >= tokens_per_modality and len(images) >= tokens_per_modality:
            classes.append("cross_modal")
            t5, i5 = texts[:tokens_per_modality], images[:tokens_per_modality]
            cos = [float(torch.dot(a[3], b[3]) / (a[3].norm() * b[3].norm())) for a in t5 for b in i5]
            omega[k] = sum(cos) / len(cos)
            selected[k] = ([r[1] for r in t5], [r[1] for r in i5])
        else:
            classes.append("mixed")
        records[k] = top
    return omega, classes, selected, records


def reference_score(resid_tokens, is_image, sae, omega, delta=1.0):
    """One row: resid_tokens [n, d] of its valid tokens."""
    z = sae.encode(resid_tokens).detach()
    text = [z[q].tolist() for q in range(len(is_image)) if not is_image[q]]
    image = [z[q].tolist() for q in range(len(is_image)) if is_image[q]]
    if not image:
        return {"error": "no image"}
    if not text:
        return {"error": "no text"}
    d = len(omega)
    tmax = [max(v[k] for v in text) for k in range(d)]
    imax = [max(v[k] for v in image) for k in range(d)]
    F = [k for k in range(d) if tmax[k] > delta and imax[k] > delta]
    weighted = [k for k in F if not math.isnan(omega[k])]
    score = sum(omega[k] for k in weighted)
    x = {k: max(tmax[k], imax[k]) for k in weighted}
    mean = sum(omega[k] * x[k] for k in weighted) / sum(x.values()) if weighted else 0.0
    l0s = [sum(1 for a in v if a > 0) for v in text + image]
    return {"error": None, "score": score, "score_mean": mean, "cooccur": F, "cooccur_l0": len(F),
            "l0": sum(l0s) / len(l0s), "l0_text": sum(l0s[:len(text)]) / len(text),
            "l0_image": sum(l0s[len(text):]) / len(image)}


# ---------------------------------------------------------------------------------------------
# fit vs reference


@pytest.mark.parametrize("params", [
    dict(),  # the paper's 50 / 30 / 5
    dict(top_features_per_token=6, top_tokens_per_feature=9, tokens_per_modality=3),
])
def test_fit_matches_reference(family_setup, params):
    fam, model, processor, sae = family_setup
    rows = make_rows(14, seed=1)
    batch_size = 4
    w = CrossModalWeights.fit(model, processor, sae, rows, LAYER, n_reference=None, batch_size=batch_size, **params)
    batches = captured_batches(model, processor, rows, list(range(len(rows))), batch_size)
    tokens = reference_tokens(batches, sae)
    omega, classes, selected, records = reference_fit(tokens, sae.cfg.d_sae, **params)

    assert [CLASS_NAMES[c] for c in w.classes.tolist()] == classes
    counts = w.class_counts()
    assert counts["cross_modal"] > 5, counts  # the test exercises the interesting case
    assert w.meta["n_rows_skipped"] == 1  # the row without an image
    ref = torch.tensor(omega, dtype=torch.float64)
    got = w.omega.double()
    assert torch.equal(torch.isnan(ref), torch.isnan(got))
    defined = ~torch.isnan(ref)
    assert torch.allclose(got[defined], ref[defined], atol=1e-6, rtol=0)
    # the per-feature top-token records agree entry by entry
    for k in range(sae.cfg.d_sae):
        rec = records[k]
        n = len(rec)
        assert w.top_row[k, :n].tolist() == [r[1][0] for r in rec]
        assert w.top_position[k, :n].tolist() == [r[1][1] for r in rec]
        assert w.top_is_image[k, :n].tolist() == [r[2] for r in rec]
        assert torch.allclose(w.top_activation[k, :n].double(), torch.tensor([r[0] for r in rec], dtype=torch.float64))
        assert (w.top_row[k, n:] == -1).all()


def test_fit_samples_reference_rows_with_seed(family_setup):
    fam, model, processor, sae = family_setup
    rows = make_rows(20, seed=2, with_bad=False)
    w = CrossModalWeights.fit(model, processor, sae, rows, LAYER, n_reference=8, seed=7, batch_size=3)
    idx = reference_indices(rows, 8, 7)
    assert idx == sorted(idx) and len(set(idx)) == 8
    used = set(w.top_row[w.top_row >= 0].tolist())
    assert used <= set(idx)
    batches = captured_batches(model, processor, rows, idx, 3)
    omega, classes, _, _ = reference_fit(reference_tokens(batches, sae), sae.cfg.d_sae)
    assert [CLASS_NAMES[c] for c in w.classes.tolist()] == classes
    ref = torch.tensor(omega, dtype=torch.float64)
    assert torch.allclose(w.omega.double().nan_to_num(9.0), ref.nan_to_num(9.0), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# scorer vs reference


def test_scorer_matches_reference(family_setup):
    import datasets

    fam, model, processor, sae = family_setup
    ref_rows = make_rows(12, seed=3, with_bad=False)
    w = CrossModalWeights.fit(model, processor, sae, ref_rows, LAYER, n_reference=None, batch_size=4)
    from saev_curate.curation.scorers import SaevScorer

    rows = make_rows(10, seed=4)
    rows[6] = dict(rows[6], prompt="")  # an empty prompt: the processor-side error path
    scorer = SaevScorer(model, processor, sae, w, LAYER)
    ds = datasets.Dataset.from_list(rows)
    out = scorer.map(ds, batch_size=4)
    batches = captured_batches(model, processor, rows, list(range(len(rows))), 4)
    omega = w.omega.tolist()
    n_scored = 0
    for ids, acts, kept, errors in batches:
        for i_local, i in enumerate(ids):
            got = out[i]
            if i_local not in kept:
                assert errors[i_local] is not None
                assert got["saev_error"] is not None and got["saev_score"] is None
                continue
            j = kept.index(i_local)
            valid = acts.image_mask[j] | acts.text_mask[j]
            ref = reference_score(acts.resid[j][valid], acts.image_mask[j][valid].tolist(), sae, omega)
            assert got["saev_error"] is None
            n_scored += 1
            assert got["saev_cooccur_l0"] == ref["cooccur_l0"]
            for col in ("score", "score_mean", "l0", "l0_text", "l0_image"):
                assert got[f"saev_{col}"] == pytest.approx(ref[col], abs=1e-6), col
    assert n_scored == 8
    assert out[3]["saev_error"] and "image" in out[3]["saev_error"]
    assert out[6]["saev_error"]
    assert any(r > 0 for r in out["saev_cooccur_l0"] if r is not None)
    # response-aware columns: the same score with the chosen / rejected response shown
    chosen = captured_batches(model, processor, rows, list(range(len(rows))), 4, mode="chosen")
    for ids, acts, kept, errors in chosen:
        for j, i_local in enumerate(kept):
            i = ids[i_local]
            valid = acts.image_mask[j] | acts.text_mask[j]
            ref = reference_score(acts.resid[j][valid], acts.image_mask[j][valid].tolist(), sae, omega)
            assert out[i]["saev_score_chosen"] == pytest.approx(ref["score"], abs=1e-6)
            assert out[i]["saev_score_margin"] == pytest.approx(
                out[i]["saev_score_chosen"] - out[i]["saev_score_rejected"], abs=1e-9)

"""Stage 3 known answers on hand-made tensors, and the scorer as a `datasets` citizen
(pickling without the model, deterministic fingerprint with cache hit / miss, num_proc + with_rank,
streaming datasets)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from float_tolerance import assert_columns_close

from saev_curate.core.errors import InputError, SaevError
from saev_curate.curation.crossmodal import CrossModalWeights
from saev_curate.curation.scorers import SaevScorer, score_activations
from saev_curate.sae import SAE, SAEConfig


def identity_sae(d: int) -> SAE:
    sae = SAE(SAEConfig(d_in=d, d_sae=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
    return sae


def test_known_answer_scores_and_no_image_row_is_an_error():
    # z = ReLU(h).  Row 0: text tokens then image tokens; row 1: text only (plus padding).
    T = 4
    resid = torch.zeros(2, T, 5)
    resid[0, 0] = torch.tensor([2.0, 0.5, 3.0, 0.0, 4.0])  # text
    resid[0, 1] = torch.tensor([0.0, 2.0, 0.2, 0.0, 0.0])  # text
    resid[0, 2] = torch.tensor([1.5, 0.0, 2.5, 5.0, 0.9])  # image
    resid[0, 3] = torch.tensor([0.0, 1.2, 0.0, 0.0, 0.0])  # image
    resid[1, 0] = torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0])
    image = torch.tensor([[False, False, True, True], [False, False, False, False]])
    am = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    text = am.bool() & ~image
    omega = torch.tensor([0.1, 0.2, math.nan, 0.4, 0.5])
    out = score_activations(identity_sae(5), omega, resid, image, text, am)
    # text max: [2, 2, 3, 0, 4]; image max: [1.5, 1.2, 2.5, 5, 0.9]
    # > 1 on both: features 0, 1, 2 -> |F| = 3; ω defined for 0, 1 -> score 0.3
    assert out["cooccur_l0"][0] == 3
    assert out["score"][0] == pytest.approx(0.3)
    # weighted mean over F ∩ defined with x_k = max activation over the row: x0 = 2, x1 = 2
    assert out["score_mean"][0] == pytest.approx((0.1 * 2 + 0.2 * 2) / 4)
    # L0: active features per token: text 4, 2; image 4, 1
    assert out["l0_text"][0] == pytest.approx(3.0) and out["l0_image"][0] == pytest.approx(2.5)
    assert out["l0"][0] == pytest.approx(11 / 4)
    assert out["error"][0] is None
    assert out["error"][1] and "no image" in out["error"][1]
    assert out["score"][1] is None and out["cooccur_l0"][1] is None
    # delta and the Algorithm-1 variant
    strict = score_activations(identity_sae(5), omega, resid, image, text, am, delta=2.2)
    assert strict["cooccur_l0"][0] == 1 and strict["score"][0] == pytest.approx(0.0)  # only feature 2 (no ω)
    anyf = score_activations(identity_sae(5), omega, resid, image, text, am, feature_set="any")
    assert anyf["score"][0] == pytest.approx(0.1 + 0.2 + 0.4 + 0.5)  # max over all tokens > 1
    assert anyf["cooccur_l0"][0] == 3
    with pytest.raises(InputError):
        score_activations(identity_sae(5), omega, resid, image, text, am, feature_set="bogus")


def test_padding_never_counts_as_text():
    resid = torch.zeros(1, 3, 2)
    resid[0, 0] = torch.tensor([2.0, 0.0])  # image
    resid[0, 1] = torch.tensor([0.0, 2.0])  # text
    resid[0, 2] = torch.tensor([2.0, 2.0])  # padding, would make feature 0 co-occur
    image = torch.tensor([[True, False, False]])
    am = torch.tensor([[1, 1, 0]])
    out = score_activations(identity_sae(2), torch.tensor([1.0, 1.0]), resid, image, am.bool() & ~image, am)
    assert out["cooccur_l0"][0] == 0 and out["score"][0] == 0.0


# ---------------------------------------------------------------------------------------------
# with a tiny model on disk


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import datasets
    from scoring_rows import LAYER, make_rows, make_sae

    from saev_curate.testing import save_tiny_vlm
    from saev_curate.vlm.load import load_vlm

    root = tmp_path_factory.mktemp("scorer")
    model_dir = save_tiny_vlm("llava", root / "model", seed=0)
    model, processor = load_vlm(model_dir)
    sae = make_sae(model.config.get_text_config().hidden_size)
    sae.save(root / "sae")
    w = CrossModalWeights.fit(model, processor, sae, make_rows(8, seed=5, with_bad=False), LAYER,
                              n_reference=None, batch_size=4)
    w.save(root / "weights")
    rows = make_rows(9, seed=6)
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "data"))
    return {"root": root, "model": model_dir, "sae": root / "sae", "weights": root / "weights",
            "data": root / "data", "layer": LAYER, "live": (model, processor, sae, w)}


def _path_scorer(saved, **kw):
    return SaevScorer(str(saved["model"]), None, str(saved["sae"]), str(saved["weights"]), saved["layer"], **kw)


def test_pickles_without_model_and_scores_the_same(saved):
    import datasets

    ds = datasets.load_from_disk(str(saved["data"]))
    scorer = _path_scorer(saved)
    blob = pickle.dumps(scorer)
    assert len(blob) < 20_000  # paths, hashes and settings, no weights
    ref = scorer(ds[:5])
    assert "model" in scorer._objs  # loaded lazily on the first call
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone._objs == {}
    again = clone(ds[:5])
    assert again == ref
    assert ref["saev_error"][3] is not None and ref["saev_score"][3] is None  # the row without an image
    why = scorer.explain(ds[0], top=None)
    assert len(why) == ref["saev_cooccur_l0"][0]
    assert sum(e["omega"] for e in why if e["omega"] is not None) == pytest.approx(ref["saev_score"][0], abs=1e-6)
    assert scorer.weights.top_tokens(why[0]["feature"])[0]["activation"] > 0
    # in-memory objects: the pickle carries only content hashes; this process finds them again
    model, processor, sae, w = saved["live"]
    live = SaevScorer(model, processor, sae, w, saved["layer"])
    blob = pickle.dumps(live)
    assert len(blob) < 20_000
    assert pickle.loads(blob)(ds[:5]) == ref


def test_fingerprint_cache_hit_and_miss(saved, monkeypatch, tmp_path):
    import datasets
    from datasets.fingerprint import Hasher

    import saev_curate.curation.scorers.saev as score_mod

    calls = {"n": 0}
    real = score_mod.row_maxima

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(score_mod, "row_maxima", counting)  # the encode of every scored batch
    assert Hasher.hash(_path_scorer(saved)) == Hasher.hash(_path_scorer(saved))  # deterministic
    ds = datasets.load_from_disk(str(saved["data"]))
    first = _path_scorer(saved).map(ds, batch_size=4)
    n_first = calls["n"]
    assert n_first > 0
    second = _path_scorer(saved).map(ds, batch_size=4)  # a new, equal scorer: cache hit
    assert calls["n"] == n_first
    assert second.cache_files == first.cache_files
    assert second["saev_score"] == first["saev_score"]
    third = _path_scorer(saved, delta=0.5).map(ds, batch_size=4)  # a setting changed: recomputed
    assert calls["n"] > n_first
    assert third["saev_cooccur_l0"] != first["saev_cooccur_l0"]
    # changed weights (same paths, new content) also change the fingerprint
    w = CrossModalWeights.load(saved["weights"])
    w.omega = w.omega * 2
    w.save(tmp_path / "w2")
    other = SaevScorer(str(saved["model"]), None, str(saved["sae"]), str(tmp_path / "w2"), saved["layer"])
    assert Hasher.hash(other) != Hasher.hash(_path_scorer(saved))


def test_num_proc_with_rank_and_streaming_match_single_process(saved):
    import datasets

    ds = datasets.load_from_disk(str(saved["data"]))
    single = _path_scorer(saved).map(ds, batch_size=4, load_from_cache_file=False)
    multi = _path_scorer(saved).map(ds, batch_size=2, num_proc=2, load_from_cache_file=False)
    cols = [c for c in single.column_names if c.startswith("saev_")]
    # batch size 4 vs 2 changes padding and matmul blocking: floats agree to fp32 error, not bit for bit
    for c in cols:
        assert_columns_close(multi[c], single[c], c)
    streamed = list(_path_scorer(saved).map(ds.to_iterable_dataset(), batch_size=3))
    for c in cols:
        assert_columns_close([r[c] for r in streamed], single[c], c)


def test_rank_picks_a_gpu_round_robin(saved, monkeypatch):
    scorer = _path_scorer(saved)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert scorer._resolve_device(3) == "cuda:1"
    assert scorer._resolve_device(None) == "cuda:0"
    assert _path_scorer(saved, device="cpu")._resolve_device(3) == "cpu"


def test_mismatches_are_clear_errors(saved, tmp_path):
    model, processor, sae, w = saved["live"]
    with pytest.raises(InputError, match="layer"):
        SaevScorer(model, processor, sae, w, 1)  # the SAE says layer 2
    bigger = SAE(SAEConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae + 1, hook_layer=2))
    with pytest.raises(InputError, match="d_sae"):
        SaevScorer(model, processor, bigger, w, 2)
    with pytest.raises(InputError):
        SaevScorer(model, processor, sae, w, 2, feature_set="nope")
    state = SaevScorer(model, processor, sae, w, 2).__getstate__()
    state["specs"]["model"]["fingerprint"] = "not-in-this-process"
    orphan = SaevScorer.__new__(SaevScorer)
    orphan.__setstate__(state)
    with pytest.raises(SaevError, match="paths"):
        orphan({"prompt": ["x"], "images": [[]]})

"""SaevRescoreCallback + SelectionSampler with real TRL trainers (DPO, SFT; LoRA) on tiny models, CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")

import datasets  # noqa: E402
from _rescore_helpers import base_vlm, losses, record_collated, rows, sae_and_weights, trainer  # noqa: E402

from saev_curate import SaevScorer, select  # noqa: E402
from saev_curate.integrations.sampler import SelectionSampler  # noqa: E402
from saev_curate.integrations.trl import SaevRescoreCallback  # noqa: E402

# ---------------------------------------------------------------------------------------------
# the sampler alone


def test_sampler_untouched_draws_what_accelerate_draws_and_obeys_a_new_selection():
    from accelerate.data_loader import SeedableRandomSampler

    ref = SeedableRandomSampler(range(20), data_seed=7)
    s = SelectionSampler(20, seed=7, group_size=4)
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        s.set_epoch(epoch)
        assert list(s) == list(ref)
    assert not isinstance(s, torch.utils.data.RandomSampler)  # accelerate would replace it

    s.set_epoch(2)
    s.record = []
    it = iter(s)
    first = [next(it) for _ in range(5)]  # mid-batch-group: the change applies from draw 8
    assert s.set_selection(rows=[3, 1, 17]) == 8
    rest = list(it)
    assert len(first) + len(rest) == 20
    assert all(r in {1, 3, 17} for r in rest[3:])
    assert sorted(rest[3:6]) == [1, 3, 17]  # each selected row once per cycle
    # weights: only rows with positive weight are drawn
    w = np.zeros(20)
    w[[0, 19]] = [1.0, 3.0]
    s.set_epoch(3)
    s.set_selection(weights=w)
    assert set(s) <= {0, 19}


def test_sampler_state_round_trip_replays_the_epoch():
    s = SelectionSampler(30, seed=1, group_size=2)
    it = iter(s)
    drawn = [next(it) for _ in range(7)]
    s.set_selection(rows=range(10))
    drawn += [next(it) for _ in range(9)]
    s.set_selection(rows=range(20, 30))
    meta, arrays = s.state_arrays()
    drawn += list(it)
    t = SelectionSampler(30, seed=1, group_size=2)
    t.load_state_arrays(meta, arrays)
    assert list(t) == drawn


# ---------------------------------------------------------------------------------------------
# with trainers


@pytest.fixture(scope="module")
def sae_w():
    return sae_and_weights()


def _callback(sae_w, **kw):
    """A callback ranking by the paper's score (the expectations below are computed from it)."""
    sae, w = sae_w
    kw.setdefault("by", "saev_score")
    return SaevRescoreCallback(sae=sae, weights=w, **kw)


def test_dpo_llava_trains_on_exactly_the_selected_rows_after_a_rescore(sae_w, tmp_path):
    ds = datasets.Dataset.from_list(rows(16, seed=1))
    cb = _callback(sae_w, every_n_steps=2, fraction=0.25)
    tr = trainer("dpo", "llava", ds, tmp_path, max_steps=6)
    cb.attach(tr)
    cb.sampler.record = []
    seen = record_collated(tr, "prompt")
    tr.train()
    segs = cb.sampler.segments
    assert len(segs) == 4 and segs[1].start > 0  # three re-scores, the first after step 2
    # the trainer consumed the sampler's draws, in order
    draws = [row for _, _, row in cb.sampler.record]
    assert seen == [str(ds[r]["prompt"]) for r in draws[:len(seen)]]
    # from its first draw on, each selection is exactly what was drawn (one full cycle = the set)
    for seg, nxt in zip(segs[1:], segs[2:]):
        part = draws[seg.start:nxt.start]
        assert set(part) <= set(seg.rows.tolist()) and len(part) == 4 == len(seg.rows)
        assert sorted(part) == seg.rows.tolist()
    # the selection is select()'s top 25% of the last scores
    kept = select([{"s": v} for v in cb.scores.tolist()], by="s", fraction=0.25, return_report=True)[1]
    assert segs[-1].rows.tolist() == [r["row_index"] for r in kept if r["saev_keep"]]
    logged = [h for h in tr.state.log_history if "saev/score_mean" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for h in logged:
        assert h["saev/kept_fraction"] == 0.25 and 0 <= h["saev/selection_change"] <= 1
        assert np.isfinite(h["saev/explained_variance"]) and h["saev/n_scored"] == 16


def test_sft_qwen2_vl_rescores_with_the_current_policy(sae_w, tmp_path):
    ds = datasets.Dataset.from_list(rows(12, seed=2, kind="sft"))
    cb = _callback(sae_w, every_n_steps=2, fraction=0.5, sample_size=8)
    tr = trainer("sft", "qwen2_vl", ds, tmp_path, max_steps=2)
    cb.attach(tr)
    tr.train()
    assert cb.n_rescores == 1 and np.count_nonzero(~np.isnan(cb.scores)) == 8  # a seeded sample of 8
    model = tr.model
    assert model.training  # train mode restored after scoring
    cb.sample_size = None  # from here on: every row, so that the scores compare row for row
    cb.rescore()
    trained = cb.scores.copy()
    with torch.no_grad():  # move the adapters: the policy's scores must move
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    cb.rescore()
    assert not np.allclose(cb.scores, trained)
    # adapters off = the base model: the same scores as SaevScorer on an untouched copy
    with model.disable_adapter():
        cb.rescore()
    base_model, processor = base_vlm("qwen2_vl")
    sae, w = sae_w
    expected = SaevScorer(base_model, processor, sae, w, 2)(ds[:])["saev_score"]
    np.testing.assert_allclose(cb.scores, expected, rtol=1e-4, atol=1e-6)
    assert model.training


def test_schedule_that_never_fires_changes_nothing(sae_w, tmp_path):
    ds = datasets.Dataset.from_list(rows(8, seed=3))
    plain = trainer("dpo", "llava", ds, tmp_path / "plain", max_steps=5)
    plain.train()
    cb = _callback(sae_w, every_n_steps=1000)
    with_cb = trainer("dpo", "llava", ds, tmp_path / "cb", max_steps=5)
    cb.attach(with_cb)
    with_cb.train()
    assert cb.n_rescores == 0
    assert losses(with_cb) == losses(plain) and len(losses(plain)) == 5


def test_resume_draws_what_the_uninterrupted_run_draws(sae_w, tmp_path):
    ds = datasets.Dataset.from_list(rows(8, seed=4))  # 4 steps per epoch: the run crosses an epoch
    kw = dict(max_steps=7, save_strategy="steps", save_steps=3)
    full_cb = _callback(sae_w, every_n_steps=2, fraction=0.5)
    full = trainer("dpo", "llava", ds, tmp_path / "full", **kw)
    full_cb.attach(full)
    full_cb.sampler.record = []
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-3"
    assert (ckpt / "saev_rescore_state.json").is_file() and (ckpt / "saev_rescore_state.npz").is_file()

    res_cb = _callback(sae_w, every_n_steps=2, fraction=0.5)
    resumed = trainer("dpo", "llava", ds, tmp_path / "full", **kw)
    res_cb.attach(resumed)
    res_cb.sampler.record = []
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert res_cb.n_rescores == full_cb.n_rescores == 3
    a = {(e, p): r for e, p, r in full_cb.sampler.record}
    b = {(e, p): r for e, p, r in res_cb.sampler.record}
    after = [k for k in a if k in b and (k[0], k[1]) >= (0, 6)]  # from the resume point (3 steps x 2 rows)
    assert len(after) >= 8 and all(a[k] == b[k] for k in after)
    assert res_cb.sampler.selection.rows.tolist() == full_cb.sampler.selection.rows.tolist()
    np.testing.assert_allclose(res_cb.scores, full_cb.scores, rtol=1e-5)

    # a checkpoint written without the callback's state: the run resumes (with a warning), no KeyError
    for f in ckpt.glob("saev_rescore_state.*"):
        f.unlink()
    again = trainer("dpo", "llava", ds, tmp_path / "full", **kw)
    _callback(sae_w, every_n_steps=2, fraction=0.5).attach(again)
    again.train(resume_from_checkpoint=str(ckpt))


def test_resume_with_another_selection_rule_is_refused(sae_w, tmp_path):
    """Issue 24, item 7: a checkpoint's re-score state records its rule; resuming with another fraction or method
    names both values (the earlier steps trained on the recorded one)."""
    from saev_curate.core.errors import InputError

    doc = {"format": "saev-curate/rescore-state", "version": 1, "step": 3, "sampler": {}, "by": "saev_score",
           "fraction": 0.5, "weighting": None, "seed": 0}
    (tmp_path / "saev_rescore_state.json").write_text(json.dumps(doc))
    np.savez(tmp_path / "saev_rescore_state.npz", scores=np.zeros(4))
    with pytest.raises(InputError, match=r"selected with fraction=0\.5, this callback with fraction=0\.25"):
        _callback(sae_w, every_n_steps=2, fraction=0.25).load_state(tmp_path)
    with pytest.raises(InputError, match=r"selected with by='saev_score', this callback with by='saev_score_mean'"):
        _callback(sae_w, every_n_steps=2, fraction=0.5, by="saev_score_mean").load_state(tmp_path)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_draw_the_same_selection(tmp_path):
    script = Path(__file__).with_name("_rescore_ddp.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["segments"] == r1["segments"] and len(r0["segments"]) == 3  # two re-scores, same on both
    assert r0["draws"] == r1["draws"]  # every rank iterates the whole sampler identically
    # each rank scored its half of the 16 rows, and both hold every row's score (issue 24, item 13)
    assert r0["rows_scored_here"] == r1["rows_scored_here"] == 8
    assert r0["scores"] == r1["scores"] and all(v is not None for v in r0["scores"])
    # each rank trained on its own slice of the draws: batch g goes to rank g % 2
    draws, bs = r0["draws"], 2
    for rank, r in enumerate((r0, r1)):
        mine = [row for g in range(rank, len(draws) // bs, 2) for row in draws[g * bs:(g + 1) * bs]]
        assert r["seen"] == mine[:len(r["seen"])] and len(r["seen"]) >= 8
    start, rows_ = r0["segments"][1]["start"], set(r0["segments"][1]["rows"])
    assert start % 4 == 0 and set(draws[start:start + 4]) <= rows_


def test_options_weighting_monitor_only_initial_column_refit(sae_w, tmp_path, monkeypatch):
    ds = datasets.Dataset.from_list(rows(8, seed=6))
    ds = ds.add_column("saev_score", [float(v) for v in range(8)])
    tr = trainer("dpo", "llava", ds, tmp_path)
    # the dataset's own scores pick the first selection
    cb = _callback(sae_w, fraction=0.25, initial_selection="column").attach(tr)
    assert cb.sampler.selection.rows.tolist() == [6, 7]
    # monitor only: scores and metrics, the selection stays
    cb.fraction = None
    m = cb.rescore()
    assert "saev/score_mean" in m and "saev/kept_fraction" not in m
    assert cb.sampler.selection.rows.tolist() == [6, 7]
    # sampling weights from the scores, after re-fitting ω on the policy
    cb.weighting, cb.refit_reference = "softmax", 6
    m = cb.rescore()
    w = cb.sampler.selection.weights
    # by hand: w_i = exp(s_i / T) / sum_j exp(s_j / T) over the scored rows; the kept fraction is the effective
    # sample size (sum w)^2 / sum w^2 over the 8 rows
    s = cb.scores
    assert w is not None and np.isfinite(s).sum() >= 6
    softmax = np.where(np.isfinite(s), np.exp(np.nan_to_num(s - np.nanmax(s), nan=-np.inf) / cb.temperature), 0.0)
    np.testing.assert_allclose(w, softmax / softmax.sum(), rtol=1e-9)
    assert m["saev/kept_fraction"] == pytest.approx(1 / (w ** 2).sum() / 8) and cb.weights is not sae_w[1]
    assert cb.weights.meta["n_rows_sampled"] == 6
    with pytest.raises(ValueError, match="no method 'saev_scor'"):
        _callback(sae_w, by="saev_scor")
    with pytest.raises(ValueError, match="trainer trains on"):
        _callback(sae_w, train_dataset=ds.select(range(4))).attach(trainer("dpo", "llava", ds, tmp_path / "b"))
    # a fraction that keeps no row, and no rows per scoring pass, fail before training (issue 24, item 5)
    with pytest.raises(ValueError, match="keeps no row"):
        _callback(sae_w, fraction=0.05).attach(trainer("dpo", "llava", ds, tmp_path / "c"))  # 0.4 of 8 rows
    # rounding half up at the edge: 0.07 x 8 = 0.56 and 1/16 x 8 = 0.5 keep one row, the column's best (row 7)
    for i, fraction in enumerate((0.07, 1 / 16)):
        cb = _callback(sae_w, fraction=fraction, initial_selection="column")
        assert cb.attach(trainer("dpo", "llava", ds, tmp_path / f"d{i}")).sampler.selection.rows.tolist() == [7]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            _callback(sae_w, batch_size=bad)
    # by=None: the methods table's recommendation for the training rows' shape, read when attached
    from saev_curate.curation import methods

    monkeypatch.setitem(methods.RECOMMENDED, "preference", "l0")
    auto = _callback(sae_w, by=None).attach(trainer("dpo", "llava", ds, tmp_path / "e"))
    assert auto.method.name == "l0" and auto.by == "saev_l0"


def test_exported_from_the_package():
    import saev_curate

    assert saev_curate.SaevRescoreCallback is SaevRescoreCallback and "SaevRescoreCallback" in saev_curate.__all__


def test_rescore_by_pair_agreement_is_the_scorers_column(tmp_path):
    """by="saev_pair_agreement" (beyond the paper: content tokens x image feature pairs) re-scores the
    same values SaevScorer gives, here with the adapters off (= the base model)."""
    from saev_curate import CrossModalWeights

    ds = datasets.Dataset.from_list(rows(10, seed=5))
    base_model, processor = base_vlm("llava")
    sae, _ = sae_and_weights()
    weights = CrossModalWeights.fit(base_model, processor, sae, ds, 2, n_reference=None, pair_min_count=2)
    assert weights.pairs is not None and len(weights.pairs.keys) > 0
    cb = SaevRescoreCallback(sae=sae, weights=weights, by="saev_pair_agreement", fraction=0.5, every_n_steps=1000)
    tr = trainer("dpo", "llava", ds, tmp_path, max_steps=1)
    cb.attach(tr)
    tr.train()
    with tr.model.disable_adapter():
        cb.rescore()
    expected = SaevScorer(base_model, processor, sae, weights, 2)(ds[:])["saev_pair_agreement"]
    assert sum(v is not None for v in expected) >= 5
    np.testing.assert_allclose(cb.scores, [np.nan if v is None else v for v in expected], rtol=1e-4, atol=1e-6)

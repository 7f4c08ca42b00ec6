"""The alignment-effect study's reduced run: one seed, two fractions, 2 DPO steps, on a tiny random LLaVA (the
testbed build takes minutes on a cold cache). It checks that the study runs end to end and resumes, not what it
finds; the pre-registered choices are checked against the evidence they were taken from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.alignment_effect import study
from benchmarks.alignment_effect.study import main


def test_quick_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    argv = ["--quick", "--tiny", "--workers", "1", "--out", str(out)]
    doc = main(argv)
    settings = doc["settings"]
    assert settings["fractions"] == [0.5, 1.0] and settings["seeds"] == [10] and settings["steps"] == 2
    methods = settings["methods"]
    assert methods == ["saev_score", study.PRIMARY["method"], "random"]
    # every cell: method x fraction 0.5, the shared full-data cell, and the clean full-data cell
    cells = doc["cells"]
    assert {(c["method"], c["fraction"]) for c in cells} == ({(m, 0.5) for m in methods}
                                                              | {("all", 1.0), ("all (clean data)", 1.0)})
    for c in cells:
        assert c["steps"] == 2
        assert all(0 <= c[m] <= 1 for m in study.METRICS), c
    primary = doc["targets"]["preregistered_primary"]
    assert primary["method"] == study.PRIMARY["method"] and isinstance(primary["met"], bool)
    assert primary["met"] is False  # one seed: the paired test cannot pass
    assert set(doc["defect_share_kept"]) == set(methods)
    for name in ("results.json", "results.md", "selection_effect.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "cells").glob("run-*.json"))

    again = main(argv)  # resumable: every finished cell is reused, nothing retrained
    assert again["timing"]["cells_run_this_time"] == 0
    assert json.loads((out / "results.json").read_text())["cells"] == again["cells"]

    (out / "selection_effect.png").unlink()
    (out / "results.md").unlink()
    replot = main(["--replot", "--out", str(out)])  # redraws from results.json alone: same tables, no cell run
    assert replot["timing"] == again["timing"] and (out / "selection_effect.png").is_file()
    assert (out / "results.md").read_text().startswith("# What selection buys")


def test_stratified_selection_oracle_and_random_tie_break_by_hand():
    from benchmarks.alignment_effect.study import ORACLE, kept_indices, method_scores_of

    doc = {"scores": {"m": [0.9, 0.1, 0.5, None, 0.03, 0.02]}, "groups": ["a", "a", "a", "b", "b", "b"],
           "labels": ["none", "x", "none", "none", "x", "none"]}
    scores = method_scores_of(doc, "m")
    # stratified: each group keeps round_half_up(0.5 x 3) = 2 rows, its best scored ones, whatever the raw scale
    assert kept_indices(scores, 0.5, groups=doc["groups"]) == [0, 2, 4, 5]
    assert kept_indices(scores, 0.5) == [0, 1, 2]  # one global ranking: group a only
    assert kept_indices(method_scores_of(doc, ORACLE), 4 / 6) == [0, 2, 3, 5]  # the four clean rows
    # a constant score selects like random: over many seeds every row is kept about 30% of the time
    counts = [0] * 10
    for seed in range(600):
        for i in kept_indices([0.0] * 10, 0.3, seed=seed):
            counts[i] += 1
    assert all(0.22 < c / 600 < 0.38 for c in counts), counts


def test_paired_test_against_a_hand_computed_t():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641; one-sided p with 2 degrees of freedom
    # = 0.5 * (1 - 3.4641 / sqrt(2 + 3.4641^2)) = 0.03701 (Student's t CDF for 2 d.f. in closed form)
    res = study.paired_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert res["mean_difference"] == pytest.approx(2.0) and res["sd_difference"] == pytest.approx(1.0)
    assert res["t"] == pytest.approx(3 ** 0.5 * 2)
    assert res["p"] == pytest.approx(0.5 * (1 - 12 ** 0.5 / (2 + 12) ** 0.5), rel=1e-6)
    assert study.paired_test([1.0, 1.0], [2.0, 2.0])["p"] == 1.0  # constant negative differences


def test_preregistered_methods_follow_the_detection_benchmarks_dev_split():
    from saev_curate.testbed.data import ALIGNMENT_MIX

    detection = json.loads(Path(study.DETECTION_RESULTS).read_text())
    assert list(study.DEV_TOP_SAEV) == study.dev_ranking(detection, ALIGNMENT_MIX, prefix="saev_")[:3]
    assert list(study.COMBINED) == detection["combined"]["topk"]
    # the ranking is a weighted mean over the mix, checked by hand on a three-method, two-kind table
    toy = {"dev_choices": {"topk": {"dev_auroc": {"saev_a": {"k1": 1.0, "k2": 0.0}, "saev_b": {"k1": 0.4, "k2": 0.8},
                                                  "ppl": {"k1": 1.0, "k2": 1.0}}}}}
    assert study.dev_ranking(toy, {"k1": 3.0, "k2": 1.0}, prefix="saev_") == ["saev_a", "saev_b"]  # 0.75 vs 0.5
    assert study.dev_ranking(toy, {"k1": 1.0, "k2": 3.0}) == ["ppl", "saev_b", "saev_a"]  # 1, 0.7, 0.25

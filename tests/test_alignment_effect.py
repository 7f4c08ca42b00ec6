"""The alignment-effect study's reduced run (issue 13 item 5): one seed, two fractions, 2 DPO steps, on a tiny
random LLaVA (the testbed build takes ~10 min on a cold cache). It checks that the study runs end to end and
resumes, not what it finds."""

from __future__ import annotations

import json

import pytest

from benchmarks.alignment_effect.study import main


def test_quick_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    argv = ["--quick", "--tiny", "--workers", "1", "--out", str(out)]
    doc = main(argv)
    settings = doc["settings"]
    assert settings["fractions"] == [0.5, 1.0] and settings["seeds"] == [0] and settings["steps"] == 2
    methods = settings["methods"]
    assert "saev_score" in methods and "random" in methods
    # every cell: method x fraction 0.5, the shared full-data cell, and the clean full-data cell (item 2)
    cells = doc["cells"]
    assert {(c["method"], c["fraction"]) for c in cells} == ({(m, 0.5) for m in methods}
                                                              | {("all", 1.0), ("all (clean data)", 1.0)})
    for c in cells:
        assert {"method", "fraction", "defect_rate", "seed", "accuracy", "steps"} <= set(c) and c["steps"] == 2
        assert 0 <= c["accuracy"] <= 1
    assert "best_saev_at_most_50pct_relative_to_full" in doc
    assert set(doc["defect_share_kept"]["0.3"]) == set(methods)
    for name in ("results.json", "results.md", "accuracy_vs_fraction.png", "defect_share_kept.png"):
        assert (out / name).is_file(), name
    stored = sorted(p.name for p in (out / "cells").glob("run-*.json"))
    assert stored

    again = main(argv)  # resumable: every finished cell is reused, nothing retrained
    assert again["timing"]["cells_run_this_time"] == 0
    assert json.loads((out / "results.json").read_text())["cells"] == again["cells"]


def test_within_type_ranking_and_oracle_by_hand():
    from benchmarks.alignment_effect.study import ORACLE, WITHIN_TYPE, kept_indices, method_scores_of

    doc = {"scores": {"m": [0.9, 0.1, 0.5, None, 0.03, 0.02]}, "qtypes": ["a", "a", "a", "b", "b", "b"],
           "labels": ["none", "x", "none", "none", "x", "none"]}
    within = method_scores_of(doc, WITHIN_TYPE + "m", seed=0)
    # type a: 0.9 > 0.5 > 0.1 -> 1, 2/3, 1/3; type b: 0.03 > 0.02 -> 1, 1/2; the null stays null
    assert within[3] is None
    assert [v for i, v in enumerate(within) if i != 3] == pytest.approx([1.0, 1 / 3, 2 / 3, 1.0, 0.5])
    assert kept_indices(within, 0.5) == [0, 2, 4]  # the best of each type first, whatever the raw scale
    assert kept_indices(method_scores_of(doc, "m", seed=0), 0.5) == [0, 1, 2]  # raw: type a only
    oracle = method_scores_of(doc, ORACLE, seed=3)
    assert sorted(kept_indices(oracle, 4 / 6)) == [0, 2, 3, 5]  # the four clean rows

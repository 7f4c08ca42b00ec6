"""The alignment-effect study's reduced run (issue 13 item 5): one seed, two fractions, 2 DPO steps, on a tiny
random LLaVA (the testbed build takes ~10 min on a cold cache). It checks that the study runs end to end and
resumes, not what it finds."""

from __future__ import annotations

import json

from benchmarks.alignment_effect.study import main


def test_quick_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    argv = ["--quick", "--tiny", "--workers", "1", "--out", str(out)]
    doc = main(argv)
    settings = doc["settings"]
    assert settings["fractions"] == [0.5, 1.0] and settings["seeds"] == [3] and settings["steps"] == 2
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

    (out / "accuracy_vs_fraction.png").unlink()
    (out / "results.md").unlink()
    replot = main(["--replot", "--out", str(out)])  # redraws from results.json alone: same tables, no cell run
    assert replot["timing"] == again["timing"] and (out / "accuracy_vs_fraction.png").is_file()
    assert (out / "results.md").read_text().startswith("# Alignment effect")


def test_stratified_selection_oracle_and_random_tie_break_by_hand():
    from benchmarks.alignment_effect.study import ORACLE, kept_indices, method_scores_of

    doc = {"scores": {"m": [0.9, 0.1, 0.5, None, 0.03, 0.02]}, "qtypes": ["a", "a", "a", "b", "b", "b"],
           "labels": ["none", "x", "none", "none", "x", "none"]}
    scores = method_scores_of(doc, "m")
    # stratified: each type keeps round_half_up(0.5 x 3) = 2 rows, its best scored ones, whatever the raw scale
    assert kept_indices(scores, 0.5, groups=doc["qtypes"]) == [0, 2, 4, 5]
    assert kept_indices(scores, 0.5) == [0, 1, 2]  # one global ranking: type a only
    assert kept_indices(method_scores_of(doc, ORACLE), 4 / 6) == [0, 2, 3, 5]  # the four clean rows
    # a constant score selects like random: over many seeds every row is kept about 30% of the time
    counts = [0] * 10
    for seed in range(600):
        for i in kept_indices([0.0] * 10, 0.3, seed=seed):
            counts[i] += 1
    assert all(0.22 < c / 600 < 0.38 for c in counts), counts

"""The README's main job, at toy size: every artifact is written and the data labels are right."""

from __future__ import annotations

import json

import datasets

from saev_curate.cli import main
from saev_curate.demo import digit_preference_rows


def test_digit_rows_label_true_and_false_claims():
    rows = digit_preference_rows(40, seed=1)
    assert sum(r["matched"] for r in rows) == 20
    for r in rows:
        assert (f"is a {r['digit']}." in r["prompt"]) == r["matched"]
        assert r["chosen"] == str(r["digit"]) and r["rejected"] != r["chosen"]
        assert r["images"][0].size == (28, 28)


def test_demo_cli_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rows", "24", "--sae-steps", "20", "--n-reference", "12"]) == 0
    printed = capsys.readouterr().out
    assert "AUC of saev_score for a true claim" in printed
    scored = datasets.load_from_disk(str(out / "scored"))
    assert len(scored) == 24 and "saev_score" in scored.column_names and "matched" in scored.column_names
    assert len(datasets.load_from_disk(str(out / "selected"))) == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rows"] == 24 and summary["n_kept"] == 12
    page = (out / "report.html").read_text()
    assert "<svg" in page and "matched" in page
    assert (out / "sae" / "cfg.json").exists() and (out / "weights").is_dir()

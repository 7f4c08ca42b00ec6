"""The README's main job at toy size (a tiny random model instead of the testbed): every artifact is
written, every method has an AUROC per defect kind, and the selection keeps the requested share."""

from __future__ import annotations

import json

import datasets

from saev_curate.cli import main
from saev_curate.testbed.data import DEFECT_KINDS
from saev_curate.testing import save_tiny_vlm
from saev_curate.testing.rows import digit_preference_rows


def test_digit_rows_label_true_and_false_claims():
    rows = digit_preference_rows(40, seed=1)
    assert sum(r["matched"] for r in rows) == 20
    for r in rows:
        assert (f"is a {r['digit']}." in r["prompt"]) == r["matched"]
        assert r["chosen"] == str(r["digit"]) and r["rejected"] != r["chosen"]
        assert r["images"][0].size == (28, 28)


def test_demo_cli_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    model = save_tiny_vlm("llava", tmp_path / "models" / "tiny")
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model), "--out", str(out), "--rows", "40", "--sae-steps", "20",
                 "--n-reference", "20"]) == 0
    printed = capsys.readouterr().out
    assert "AUROC of clean rows against each defect kind" in printed
    scored = datasets.load_from_disk(str(out / "scored"))
    assert len(scored) == 40 and {"defect", "method_saev_score", "method_saev_grounding"} <= set(scored.column_names)
    assert len(datasets.load_from_disk(str(out / "selected"))) == 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rows"] == 40 and summary["n_kept"] == 20
    present = set(scored["defect"]) - {"none"}
    assert set(summary["auroc"]["saev_score"]) == present and present <= set(DEFECT_KINDS)
    assert {"hallucinated_detail", "image_prompt_mismatch"} <= present and "describe" in set(scored["task"])
    assert {"saev_score", "saev_score_mean", "saev_score_any", "saev_grounding", "image_only_control",
            "response_perplexity", "random", "cooccur_l0", "l0"} <= set(summary["auroc"])
    page = (out / "report.html").read_text()
    assert "<svg" in page and "AUROC" in page and "image prompt mismatch" in page
    assert (out / "weights").is_dir() and any((tmp_path / "models").glob("tiny-sae-topk-*/cfg.json"))

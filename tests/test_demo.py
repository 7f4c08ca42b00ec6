"""The README's main job at toy size (a tiny random model instead of the testbed): every artifact is written,
every method's AUROC per defect kind equals scikit-learn's over the stored scores, and the selection is the
brute-force top share."""

from __future__ import annotations

import json

import datasets
import pytest
from sklearn.metrics import roc_auc_score

from saev_curate.cli import main
from saev_curate.curation.methods import RECOMMENDED
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
    selected = datasets.load_from_disk(str(out / "selected"))
    assert len(selected) == 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rows"] == 40 and summary["n_kept"] == 20
    present = set(scored["defect"]) - {"none"}
    assert set(summary["auroc"]["saev_score"]) == present and present <= set(DEFECT_KINDS)
    assert {"hallucinated_detail", "image_prompt_mismatch"} <= present and "describe" in set(scored["task"])
    assert {"saev_score", "saev_score_mean", "saev_score_any", "saev_grounding", "image_only_control",
            "response_perplexity", "random", "cooccur_l0", "l0"} <= set(summary["auroc"])
    page = (out / "report.html").read_text()
    assert "<svg" in page and "AUROC" in page and "image prompt mismatch" in page
    assert "href='site/index.html'" in page and (out / "site" / "index.html").is_file()  # the report links the site
    assert (out / "weights").is_dir() and any((tmp_path / "models").glob("tiny-sae-topk-*/cfg.json"))

    # every AUROC against scikit-learn's over the stored columns: clean rows of the kind's own tasks (label 1) against
    # the kind's rows (label 0), a row without a score ranked below every scored row
    defects, tasks = scored["defect"], scored["task"]
    for method, row in summary["auroc"].items():
        values = scored[f"method_{method}"]
        floor = min((v for v in values if v is not None), default=0.0) - 1.0
        for kind in present:
            own = {t for t, d in zip(tasks, defects) if d == kind}
            idx = [i for i, (t, d) in enumerate(zip(tasks, defects)) if d == kind or (d == "none" and t in own)]
            truth = [defects[i] == "none" for i in idx]
            assert any(truth) and not all(truth), kind  # both sides present for every kind at this seed
            expected = roc_auc_score(truth, [floor if values[i] is None else values[i] for i in idx])
            assert row[kind] == pytest.approx(expected, abs=1e-9), (method, kind)
    # the selection: the 20 best rows by the default column, in their original order; the shares are counted
    by = summary["by"]
    assert by == RECOMMENDED["preference"]  # the demo's rows are preference rows
    ranked = sorted((v, i) for i, v in enumerate(scored[f"method_{by}"]) if v is not None)
    assert summary["n_scored"] == len(ranked) >= 20
    assert sorted(selected[f"method_{by}"]) == [v for v, _ in ranked[-20:]]
    key = ("prompt", "chosen", "rejected", "defect", f"method_{by}")
    rest = iter(zip(*(scored[k] for k in key)))
    assert all(row in rest for row in zip(*(selected[k] for k in key)))  # a subsequence: the original order
    assert summary["kept_defect_share"] == sum(d != "none" for d in selected["defect"]) / 20
    assert summary["all_defect_share"] == sum(d != "none" for d in defects) / 40

"""`saev-curate pipeline` at toy size (a tiny random LLaVA instead of the testbed): scores, three DPO runs with the
same number of steps, evaluation of all, one report with the accuracies, the cut and the AUROC; a rerun reuses it."""

from __future__ import annotations

import json

from saev_curate.cli import main
from saev_curate.testing import save_tiny_vlm


def test_pipeline_cli_runs_end_to_end_and_reuses_its_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    model = save_tiny_vlm("llava", tmp_path / "models" / "tiny")
    out = tmp_path / "pipe"
    argv = ["pipeline", "--model", str(model), "--out", str(out), "--rows", "24", "--sae-steps", "10",
            "--n-reference", "16", "--dpo-steps", "2", "--batch-size", "2", "--eval-per-type", "1",
            "--fraction", "0.25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "report:" in printed
    doc = json.loads((out / "pipeline.json").read_text())
    acc = doc["accuracies"]
    assert set(acc) == {"base", "selected", "full", "random"}
    assert acc["selected"]["train_rows"] == acc["random"]["train_rows"] == 6 and acc["full"]["train_rows"] == 24
    assert acc["selected"]["steps"] == acc["full"]["steps"] == acc["random"]["steps"] == 2
    assert all(a["n"] == 9 for a in acc.values())  # one question of each of the 9 image question types
    for name in ("selected", "full", "random"):
        assert (out / "dpo" / name / "adapter_model.safetensors").is_file()
        assert (out / "dpo" / name / "eval" / "results.json").is_file()
        assert json.loads((out / "dpo" / name / "selection.json").read_text())["n_kept"] == acc[name]["train_rows"]
    page = (out / "report.html").read_text()
    assert "DPO on the selection vs all rows vs random rows" in page and "AUROC" in page
    assert "stroke-dasharray" in page  # the cut on the histogram
    assert doc["reused"] == []

    assert main(argv) == 0  # a rerun: nothing recomputed
    assert set(json.loads((out / "pipeline.json").read_text())["reused"]) == {"scores", "base", "selected", "full",
                                                                              "random"}
    # another fraction re-trains the two subsets of that size, reuses the scores, the base and the full-data run
    assert main(argv[:-1] + ["0.5"]) == 0
    assert set(json.loads((out / "pipeline.json").read_text())["reused"]) == {"scores", "base", "full"}

    # a run with other settings killed while it rewrites OUT/scoring leaves no valid record behind: the next run of
    # the first settings scores again instead of failing on the half-written folder (issue 24, item 3)
    import saev_curate.demo as demo_module

    real = demo_module.run_demo

    def killed(out_dir, **kw):
        (out_dir / "scored" / "dataset_info.json").write_text("")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(demo_module, "run_demo", killed)
    other = list(argv)
    other[other.index("--rows") + 1] = "30"
    assert main(other) == 1
    monkeypatch.setattr(demo_module, "run_demo", real)
    assert main(argv) == 0
    reused = set(json.loads((out / "pipeline.json").read_text())["reused"])
    assert "scores" not in reused and {"base", "full"} <= reused  # (selected and random were last run at 0.5)

"""`saev-curate pipeline` at toy size (a tiny random LLaVA instead of the testbed): scores, DPO runs per selection and
seed with the same number of steps, evaluation of all, one report that opens with what selection bought; a rerun
reuses it."""

from __future__ import annotations

import json

import pytest

from saev_curate.cli import main
from saev_curate.testing import save_tiny_vlm


def test_pipeline_cli_runs_end_to_end_and_reuses_its_cache(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    model = save_tiny_vlm("llava", tmp_path / "models" / "tiny")
    out = tmp_path / "pipe"
    argv = ["pipeline", "--model", str(model), "--out", str(out), "--rows", "24", "--sae-steps", "10",
            "--n-reference", "16", "--dpo-steps", "2", "--batch-size", "2", "--n-eval", "4", "--eval-per-type", "1",
            "--by", "min_token_logprob", "saev_score", "--seeds", "0", "1", "--fraction", "0.25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "exact descriptions" in printed and "Training on the top 25% by min_token_logprob" in printed
    doc = json.loads((out / "pipeline.json").read_text())
    pol = doc["policies"]
    assert set(pol) == {"base", "selected:min_token_logprob", "selected:saev_score", "full", "random"}
    assert pol["selected:saev_score"]["train_rows"] == pol["random"]["train_rows"] == 6 and pol["full"]["train_rows"] == 24
    for name, p in pol.items():
        assert set(p["by_seed"]) == {"0", "1"} and all(0 <= v <= 1 for s in p["by_seed"].values() for v in s.values())
        # the mean is the mean over the seeds
        assert p["mean"]["exact"] == pytest.approx(sum(s["exact"] for s in p["by_seed"].values()) / 2)
        if name != "base":
            for seed in (0, 1):
                folder = out / "dpo" / name.replace(":", "-") / f"seed{seed}"
                assert (folder / "adapter_model.safetensors").is_file()
                # lmms-eval's files: <eval>/<model>/<date>_results.json and the samples beside them
                (res,) = (folder / "eval").glob("*/*_results.json")
                assert res.with_name(res.name.replace("_results.json", "_samples_testbed_heldout.jsonl")).is_file()
    # the selection keeps the rows with the highest min_token_logprob: checked against the scored column itself
    scored = datasets.load_from_disk(str(out / "scoring" / "scored"))
    col = scored["method_min_token_logprob"]
    best = sorted(range(len(col)), key=lambda i: -1e9 if col[i] is None else col[i], reverse=True)[:6]
    kept = json.loads((out / "dpo" / "selected-min_token_logprob" / "seed0" / "selection.json").read_text())
    assert {col[i] for i in kept["kept_indices"]} == {col[i] for i in best}
    # an effect is the mean over seeds of the per-seed differences, with an interval around it
    eff = doc["effects"]["selected:saev_score"]["vs_random"]["exact"]
    per = [pol["selected:saev_score"]["by_seed"][s]["exact"] - pol["random"]["by_seed"][s]["exact"] for s in ("0", "1")]
    assert eff["difference"] == pytest.approx(sum(per) / 2) and eff["low"] <= eff["high"]
    page = (out / "report.html").read_text()
    assert page.index("What selection bought") < page.index("AUROC")  # the first screen
    assert "stroke-dasharray" in page  # the cut on the histogram
    # the report links the feature browser of the scoring SAE over the training rows, and the link resolves
    assert "href='scoring/site/index.html'" in page and (out / "scoring" / "site" / "index.html").is_file()
    assert list((out / "scoring" / "site" / "features").glob("*.json"))
    assert doc["reused"] == []

    assert main(argv) == 0  # a rerun: nothing recomputed
    reused = json.loads((out / "pipeline.json").read_text())["reused"]
    assert {"scores", "base"} <= set(reused) and len(reused) == 2 + 4 * 2
    # another fraction re-trains the subsets of that size, reuses the scores, the base and the full-data runs
    assert main(argv[:-1] + ["0.5"]) == 0
    assert set(json.loads((out / "pipeline.json").read_text())["reused"]) == {"scores", "base", "full/seed0",
                                                                              "full/seed1"}

    # a run with other settings killed while it rewrites OUT/scoring leaves no valid record behind: the next run of
    # the first settings scores again instead of failing on the half-written folder (issue 24, item 3)
    import saev_curate.jobs.demo as demo_module

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
    assert "scores" not in reused and {"base", "full/seed0"} <= reused

    # --by auto: a check on the training rows chooses the method, recorded beside the result (issue 21)
    auto = argv[:argv.index("--by")] + ["--by", "auto", "--seeds", "0", "--fraction", "0.5"]
    assert main(auto) == 0
    doc = json.loads((out / "pipeline.json").read_text())
    check = json.loads((out / "check" / "check.json").read_text())
    assert doc["by_from"]["method"] == check["recommended"]["preference"] == doc["by"][0]
    assert f"selected:{doc['by'][0]}" in doc["policies"] and "--by auto" in (out / "report.html").read_text()


def test_differences_and_their_intervals_by_hand():
    from saev_curate.jobs.pipeline import difference, metrics_of

    def items(exact, false, stated, qa):
        return {"exact": exact, "false": false, "stated": stated, "recalled": [1] * len(exact),
                "true": [2] * len(exact), "qa": qa}

    a = items([1, 1, 0, 1], [0, 0, 1, 0], [2, 2, 2, 2], [1, 0])
    b = items([0, 1, 0, 0], [1, 0, 1, 2], [2, 2, 2, 2], [0, 0])
    # hallucination rate: false facts / stated facts over the set (CHAIR's micro average), not a mean of ratios
    assert metrics_of(b)["hallucination_rate"] == pytest.approx(4 / 8) and metrics_of(a)["recall"] == 0.5
    d = difference([a, a], [b, b], n_boot=200)
    assert d["exact"]["difference"] == pytest.approx(0.75 - 0.25)
    assert d["hallucination_rate"]["difference"] == pytest.approx(1 / 8 - 4 / 8)
    assert d["qa_acc"]["difference"] == pytest.approx(0.5)
    same = difference([a], [a], n_boot=50)
    assert all(v["difference"] == v["low"] == v["high"] == 0 for v in same.values())  # paired: no spread
    ones, zeros = items([1] * 5, [0] * 5, [1] * 5, [1] * 3), items([0] * 5, [1] * 5, [1] * 5, [0] * 3)
    assert difference([ones], [zeros], n_boot=50)["exact"] == {"difference": 1.0, "low": 1.0, "high": 1.0}


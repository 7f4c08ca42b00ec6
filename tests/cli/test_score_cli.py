"""`saev-curate fit-weights | score | select` end to end on a tiny local dataset, including a killed
and resumed scoring run that ends with the same result as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
from float_tolerance import assert_columns_close

from saev_curate.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import datasets
    from scoring_rows import make_rows, make_sae

    from saev_curate.testing import save_tiny_vlm

    root = tmp_path_factory.mktemp("cli")
    save_tiny_vlm("llava", root / "model", seed=0)
    make_sae(64).save(root / "sae")
    datasets.Dataset.from_list(make_rows(8, seed=11)).save_to_disk(str(root / "data"))
    return root


def test_cli_fit_score_resume_select(workdir, monkeypatch, tmp_path, capsys):
    import datasets

    from saev_curate.curation.scorers import MethodScorer

    r = workdir
    common = ["--model", str(r / "model"), "--sae", str(r / "sae"), "--layer", "2"]
    assert main(["fit-weights", *common, "--data", str(r / "data"), "--out", str(r / "w"),
                 "--n-reference", "6", "--batch-size", "4"]) == 0
    assert json.loads((r / "w" / "crossmodal_weights.json").read_text())["meta"]["n_rows_sampled"] == 6
    score = ["score", *common, "--weights", str(r / "w"), "--data", str(r / "data"), "--shard-rows", "3",
             "--batch-size", "2", "--device", "cpu"]
    assert main([*score, "--out", str(tmp_path / "full")]) == 0
    full = datasets.load_from_disk(str(tmp_path / "full"))

    # a run killed after its first shard
    real = MethodScorer.__call__
    calls = {"n": 0}

    def dying(self, batch, rank=None):
        calls["n"] += 1
        if calls["n"] == 3:  # shard 0 = rows 0-2 = 2 batches; die in shard 1
            raise KeyboardInterrupt
        return real(self, batch, rank)

    monkeypatch.setattr(MethodScorer, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        main([*score, "--out", str(tmp_path / "resumed")])
    shards = sorted(p.name for p in (tmp_path / "resumed.shards").glob("shard-*.parquet"))
    assert shards == ["shard-00000.parquet"]
    calls["n"] = -100  # no more dying
    assert main([*score, "--out", str(tmp_path / "resumed")]) == 0
    assert calls["n"] == -100 + 3  # only shards 1 and 2 (rows 3-7: 3 batches) were scored again
    resumed = datasets.load_from_disk(str(tmp_path / "resumed"))
    assert resumed.column_names == full.column_names
    for c in full.column_names:
        if c.startswith("saev_"):
            assert resumed[c] == full[c], c
    assert full["prompt"] == datasets.load_from_disk(str(r / "data"))["prompt"]
    assert full[3]["saev_error"] and full[3]["saev_score"] is None

    # different settings refuse to mix with the old shards
    monkeypatch.setattr(MethodScorer, "__call__", real)
    assert main([*score, "--out", str(tmp_path / "resumed"), "--delta", "0.5"]) == 1
    assert "different run" in capsys.readouterr().err

    assert main(["select", "--data", str(tmp_path / "full"), "--out", str(tmp_path / "top.parquet"),
                 "--fraction", "0.5", "--report", str(tmp_path / "why.jsonl")]) == 0
    top = datasets.Dataset.from_parquet(str(tmp_path / "top.parquet"))
    assert len(top) == 4
    lines = [json.loads(x) for x in (tmp_path / "why.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and sum(x["saev_keep"] for x in lines) == 4


def test_cli_scores_rlaif_v_rows(workdir, tmp_path):
    """RLAIF-V rows (what recipes/dpo.py trains on) fit weights and score through the CLI as they are."""
    import datasets
    from scoring_rows import make_rlaif_v_rows

    r = workdir
    datasets.Dataset.from_list(make_rlaif_v_rows(4, seed=5)).save_to_disk(str(tmp_path / "data"))
    common = ["--model", str(r / "model"), "--sae", str(r / "sae"), "--layer", "2", "--data", str(tmp_path / "data"),
              "--batch-size", "4"]
    assert main(["fit-weights", *common, "--out", str(tmp_path / "w"), "--n-reference", "4"]) == 0
    assert main(["score", *common, "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "scored"),
                 "--device", "cpu"]) == 0
    scored = datasets.load_from_disk(str(tmp_path / "scored"))
    assert scored["question"] == [row["question"] for row in make_rlaif_v_rows(4, seed=5)]  # columns kept as given
    assert all(e is None for e in scored["saev_error"])
    for column in ("saev_score", "saev_score_margin"):
        assert all(v is not None for v in scored[column]), (column, scored[column])


def test_sharded_processes_join_in_row_order(workdir, tmp_path):
    """What `accelerate launch` does: process p scores shards p, p+n, ...; process 0 joins them."""
    import datasets

    from saev_curate.curation.scorers import SaevScorer
    from saev_curate.curation.sharded import score_to_disk
    r = workdir
    if not (r / "w").exists():
        pytest.skip("needs the weights of test_cli_fit_score_resume_select")
    ds = datasets.load_from_disk(str(r / "data"))
    scorer = SaevScorer(str(r / "model"), None, str(r / "sae"), str(r / "w"), 2, device="cpu")
    score_to_disk(scorer, ds, str(tmp_path / "one"), batch_size=4, shard_rows=2)
    score_to_disk(scorer, ds, str(tmp_path / "two"), batch_size=4, shard_rows=2, rank=1, world=2)
    assert sorted(p.name for p in (tmp_path / "two.shards").glob("shard-*")) == ["shard-00001.parquet",
                                                                                  "shard-00003.parquet"]
    score_to_disk(scorer, ds, str(tmp_path / "two"), batch_size=4, shard_rows=2, rank=0, world=2,
                  wait_timeout_s=5)
    one, two = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    assert one["prompt"] == two["prompt"]  # row order exact; floats to fp32 error (see float_tolerance)
    for column in (c for c in one.column_names if c.startswith("saev_")):
        assert_columns_close(two[column], one[column], column)


def test_cli_select_stratified_keeps_each_groups_top_rows(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"task": ["a"] * 4 + ["b"] * 4, "saev_score": [9.0, 7.0, 8.0, 6.0, 0.2, 0.0, 0.3, 0.1]}
                               ).to_parquet(str(tmp_path / "scored.parquet"))
    assert main(["select", "--data", str(tmp_path / "scored.parquet"), "--out", str(tmp_path / "top.jsonl"),
                 "--fraction", "0.5", "--stratify-by", "task", "--by", "saev_score"]) == 0
    kept = [json.loads(x) for x in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert [(r["task"], r["saev_score"]) for r in kept] == [("a", 9.0), ("a", 8.0), ("b", 0.2), ("b", 0.3)]


def test_cli_scores_any_method_without_an_sae_and_select_keeps_the_lowest_perplexity(workdir, tmp_path, capsys):
    """`score --methods response_perplexity` needs no SAE; `select` without --by ranks preference rows by the table's
    recommendation (the model's perplexity), keeping the lowest values."""
    import datasets

    from saev_curate.curation.scorers import ResponsePerplexityScorer

    r = workdir
    base = ["score", "--model", str(r / "model"), "--data", str(r / "data"), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "ppl"), "--methods", "response_perplexity"]) == 0
    scored = datasets.load_from_disk(str(tmp_path / "ppl"))
    assert {c for c in scored.column_names if c.startswith("saev_")} == {
        "saev_ppl", "saev_min_token_logprob", "saev_min_token_index", "saev_min_token_text", "saev_error"}
    direct = datasets.load_from_disk(str(r / "data")).map(ResponsePerplexityScorer(str(r / "model")), batched=True)
    assert scored["saev_ppl"] == direct["saev_ppl"]  # the perplexity scorer run by hand
    assert main(["select", "--data", str(tmp_path / "ppl"), "--out", str(tmp_path / "kept"), "--fraction", "0.5"]) == 0
    kept = datasets.load_from_disk(str(tmp_path / "kept"))["saev_ppl"]
    finite = sorted(v for v in scored["saev_ppl"] if v is not None)
    assert sorted(kept) == finite[:len(kept)] and len(kept) == round(0.5 * len(scored))
    # a method that needs an SAE, without one, is named before anything loads
    assert main([*base, "--out", str(tmp_path / "x"), "--methods", "saev_score"]) == 1
    assert "need an SAE" in capsys.readouterr().err


def test_fit_weights_pair_capacity_flag(workdir, tmp_path, capsys):
    """--pair-capacity reaches the pair tables: the default counts this 64-feature SAE exactly (64^2 pairs can never
    reach 2^25), a capacity of 8 distinct pairs makes them lossy (a worst undercount recorded with the weights), and
    a capacity that is no number is refused by name."""
    common = ["fit-weights", "--model", str(workdir / "model"), "--sae", str(workdir / "sae"), "--layer", "2",
              "--data", str(workdir / "data"), "--n-reference", "8", "--batch-size", "4"]
    undercount = {}
    for cap in ("default", "8", "none"):
        out = tmp_path / cap
        assert main([*common, "--out", str(out), *([] if cap == "default" else ["--pair-capacity", cap])]) == 0
        doc = json.loads((out / "crossmodal_weights.json").read_text())
        assert doc["pairs"] is not None
        undercount[cap] = doc["pairs"]["max_undercount"]
    assert undercount["default"] == 0 and undercount["none"] == 0 and undercount["8"] > 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "bad"), "--pair-capacity", "lots"])
    err = capsys.readouterr().err
    assert "--pair-capacity" in err and "'none' for exact counts" in err

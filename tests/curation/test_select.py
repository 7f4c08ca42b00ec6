"""Selection and baselines: deterministic ranking, null handling, reasons; perplexity and CLIP scorers."""

from __future__ import annotations

import math

import pytest

from saev_curate import select, selection_report
from saev_curate.core.errors import InputError


def scored_ds():
    import datasets

    return datasets.Dataset.from_dict({
        "id": list(range(8)),
        "saev_score": [0.5, None, 2.0, 1.0, 2.0, float("nan"), 0.1, 3.0],
        "saev_cooccur_l0": [3, None, 1, 7, 2, None, 9, 4],
        "saev_error": [None, "no image tokens in the sequence", None, None, None, "bad row", None, None],
    })


def test_fraction_keeps_top_rows_ties_by_row_and_reports_reasons():
    ds = scored_ds()
    kept, report = select(ds, by="saev_score", fraction=0.5, return_report=True)
    # ranking: 7 (3.0), 2 (2.0), 4 (2.0, tie -> later row), 3 (1.0), 0, 6; k = round(0.5 * 8) = 4
    assert kept["id"] == [2, 3, 4, 7]  # original order
    assert select(ds, by="saev_score", fraction=0.5, order="rank")["id"] == [7, 2, 4, 3]
    rep = {r["row_index"]: r for r in report}
    assert rep[7]["saev_rank"] == 1 and rep[2]["saev_rank"] == 2 and rep[4]["saev_rank"] == 3
    assert rep[0]["saev_keep"] is False and "dropped: rank 5" in rep[0]["saev_keep_reason"]
    assert rep[1]["saev_keep"] is False and rep[1]["saev_rank"] is None
    assert "no image tokens" in rep[1]["saev_keep_reason"]
    assert "bad row" in rep[5]["saev_keep_reason"]  # NaN counts as null too
    assert len(report) == 8


def test_threshold_ascending_methods_and_random():
    ds = scored_ds()
    assert select(ds, by="saev_score", threshold=1.0)["id"] == [2, 3, 4, 7]
    assert select(ds, by="saev_score", threshold=0.5, descending=False)["id"] == [0, 6]
    assert select(ds, by="cooccur_l0", fraction=0.25)["id"] == [3, 6]  # method name -> column
    a = select(ds, by="random", fraction=0.5, seed=3)["id"]
    assert a == select(ds, by="random", fraction=0.5, seed=3)["id"] and len(a) == 4
    # fraction 1.0 keeps every scored row, never the null ones
    assert select(ds, by="saev_score", fraction=1.0)["id"] == [0, 2, 3, 4, 6, 7]


def test_nulls_policy_and_errors():
    ds = scored_ds()
    assert select(ds, by="saev_score", fraction=0.25, nulls="keep")["id"] == [1, 2, 5, 7]
    with pytest.raises(InputError, match="null"):
        select(ds, by="saev_score", fraction=0.5, nulls="raise")
    with pytest.raises(InputError, match="exactly one"):
        select(ds, by="saev_score")
    with pytest.raises(InputError, match="not in the dataset"):
        select(ds, by="saev_nothing", fraction=0.5)
    with pytest.raises(InputError):
        select(ds, fraction=1.5)
    rows = [{"saev_score": v} for v in (1.0, None, 3.0)]
    assert select(rows, by="saev_score", fraction=0.34) == [{"saev_score": 3.0}]
    with pytest.raises(InputError, match="saev_pair_agreement"):  # the default for prompt-only rows, not present
        select(rows, fraction=0.34)
    assert [r["saev_keep"] for r in selection_report(rows, "saev_score", fraction=0.34)] == [False, False, True]


def test_response_perplexity_baseline_matches_a_direct_computation(tiny_vlm):
    import datasets
    import torch
    from scoring_rows import make_rows

    from saev_curate.curation.scorers import ResponsePerplexityScorer
    from saev_curate.vlm.rows import prepare_batch

    model, processor = tiny_vlm("llava")
    rows = make_rows(5, seed=9)
    out = ResponsePerplexityScorer(model, processor).map(datasets.Dataset.from_list(rows), batch_size=3)
    assert out[3]["saev_ppl"] is None and out[3]["saev_ppl_error"]
    # row 0 alone, by hand: mean NLL of the response tokens after the prompt
    p = prepare_batch(processor, [rows[0]], mode="prompt").inputs["input_ids"][0]
    f = prepare_batch(processor, [rows[0]], mode="chosen")
    ids = f.inputs["input_ids"][0]
    with torch.no_grad():
        logits = model(**f.inputs).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    nll = -torch.stack([lp[t - 1, ids[t]] for t in range(len(p), len(ids))]).double().mean()
    assert out[0]["saev_ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert all(v > 1 for v in out["saev_ppl"] if v is not None)


def test_clip_baseline_with_a_local_tiny_clip(tmp_path, tiny_vlm):
    import datasets
    from scoring_rows import make_rows
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from saev_curate.curation.scorers import ClipScorer

    _, processor = tiny_vlm("llava")
    tok = processor.tokenizer
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=64),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32),
                  tokenizer=tok).save_pretrained(tmp_path / "clip")
    out = ClipScorer(str(tmp_path / "clip")).map(datasets.Dataset.from_list(make_rows(4, seed=2)))
    assert out[3]["saev_clip_score"] is None and out[3]["saev_clip_error"]
    assert all(-1 <= v <= 1 for v in out["saev_clip_score"] if v is not None)
    assert sum(v is not None for v in out["saev_clip_score"]) == 3


def test_stratified_fraction_keeps_each_groups_top_rows():
    import datasets

    ds = datasets.Dataset.from_dict({
        "id": list(range(8)),
        "task": ["a", "a", "a", "a", "b", "b", "b", "b"],
        # group a scores far above group b: a global top 50% would keep only a's rows
        "saev_score": [9.0, 7.0, 8.0, 6.0, 0.2, None, 0.3, 0.1],
    })
    assert select(ds, by="saev_score", fraction=0.5)["id"] == [0, 1, 2, 3]
    kept, report = select(ds, by="saev_score", fraction=0.5, stratify_by="task", return_report=True)
    # a: 4 rows -> round(2.0) = 2: rows 0 (9.0), 2 (8.0); b: 4 rows (one null) -> 2: rows 6 (0.3), 4 (0.2)
    assert kept["id"] == [0, 2, 4, 6]
    assert "within each task" in report[0]["saev_keep_reason"]
    rows = [dict(r) for r in ds]
    assert [r["id"] for r in select(rows, by="saev_score", fraction=0.25, stratify_by="task")] == [0, 6]
    with pytest.raises(InputError, match="fraction="):
        select(ds, by="saev_score", threshold=1.0, stratify_by="task")
    with pytest.raises(InputError, match="source"):
        select(ds, by="saev_score", fraction=0.5, stratify_by="source")


def test_rank_average_by_hand():
    """Mean percentile rank (0 = worst, 1 = best), a flipped column, ties sharing their rank, nulls staying null."""
    from saev_curate.curation.selection import rank_average

    got = rank_average({"sae": [0.1, 0.4, 0.4, 0.9, None], "ppl": [3.0, 1.0, 2.0, 4.0, 1.5]}, {"ppl": False})
    # sae ranks over 4 values: 0, 1.5/3, 1.5/3, 1 (the two 0.4 share ranks 1 and 2); ppl lower is cleaner:
    # 3.0 -> 1/4, 1.0 -> 4/4, 2.0 -> 2/4, 4.0 -> 0, 1.5 -> 3/4
    assert got[:4] == pytest.approx([(0 + 0.25) / 2, (0.5 + 1.0) / 2, (0.5 + 0.5) / 2, (1.0 + 0.0) / 2])
    assert got[4] is None
    with pytest.raises(Exception, match="different lengths"):
        rank_average({"a": [1.0], "b": [1.0, 2.0]})


def test_infinite_scores_are_null_with_a_reason():
    """An infinite score would outrank every real one; it is a null score with a reason, as NaN is."""
    rows = [{"s": v} for v in (1.0, math.inf, 0.5, 0.2, 0.7, -math.inf)]
    kept, report = select(rows, by="s", fraction=0.5, return_report=True)
    assert [r["s"] for r in kept] == [1.0, 0.5, 0.7]
    assert report[1]["value"] is None and not report[1]["saev_keep"] and "inf is not finite" in report[1]["saev_keep_reason"]
    assert report[5]["saev_rank"] is None and "-inf is not finite" in report[5]["saev_keep_reason"]


def test_selection_statistics_are_strict_json():
    """selection.json's score statistics summarise the finite scores and count the others (no Infinity / NaN)."""
    import json

    from saev_curate.recipes.common import _stats

    got = _stats([1.0, math.inf, None, 3.0, math.nan, -math.inf])
    assert got == {"n": 2, "mean": 2.0, "std": math.sqrt(2.0), "min": 1.0, "median": 2.0, "max": 3.0,
                   "n_not_finite": 3}
    json.dumps(got, allow_nan=False)
    assert _stats([math.inf]) == {"n": 0, "n_not_finite": 1}


def test_an_empty_selection_is_an_error_naming_the_rule():
    rows = [{"s": float(v), "g": "ab"[v % 2]} for v in range(12)]
    for kwargs, rule in (({"fraction": 0.01}, "top 0.01 by s"), ({"threshold": 99.0}, "s >= 99.0"),
                         ({"fraction": 0.04, "stratify_by": "g"}, "within each g")):
        with pytest.raises(InputError, match="keeps no row of 12") as e:
            select(rows, by="s", **kwargs)
        assert rule in str(e.value) and "best 11" in str(e.value)
    assert len(select(rows, by="s", fraction=0.05)) == 1  # 0.6 of a row rounds to one

"""The one table of methods: directions, shapes, the recommendation (against the committed detection results),
every default following it, and MethodScorer's columns against the scorers run by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scoring_rows import LAYER, fitted

from saev_curate import select
from saev_curate.core.errors import InputError
from saev_curate.curation import methods as table

ROOT = Path(__file__).resolve().parents[2]


def test_perplexity_keeps_the_lowest_rows_and_hardest_the_highest():
    rows = [{"id": i, "saev_ppl": p} for i, p in enumerate([3.0, 1.2, 9.0, 1.0, 2.5, 40.0])]
    # by hand: sorted ascending 1.0 (3), 1.2 (1), 2.5 (4) | 3.0, 9.0, 40.0
    for by in ("response_perplexity", "ppl", "saev_ppl"):
        assert sorted(r["id"] for r in select(rows, by=by, fraction=0.5)) == [1, 3, 4]
    assert sorted(r["id"] for r in select(rows, by="response_perplexity_hardest", fraction=0.5)) == [0, 2, 5]
    # a threshold reads the same direction: perplexity at most 2.5
    assert sorted(r["id"] for r in select(rows, by="response_perplexity", threshold=2.5)) == [1, 3, 4]


def test_every_method_has_a_direction_and_known_needs_and_names_resolve():
    vocabulary = {"sae", "weights", "pairs", "readout", "response", "pair", "control", "clip"}
    for name, m in table.METHODS.items():
        assert m.name == name and m.needs <= vocabulary and m.family in ("paper", "beyond_paper", "baseline",
                                                                         "difficulty")
    assert table.get_method("saev").name == "saev_score"
    assert table.get_method("token_readout_min_margin").name == "saev_token_readout_min_margin"
    with pytest.raises(InputError, match="did you mean saev_score"):
        table.get_method("saev_scor")
    assert table.resolve_by("some_numeric_column") == ("some_numeric_column", True)
    assert table.data_shape(["prompt", "images", "chosen", "rejected"]) == "preference"
    assert table.data_shape(["question", "image", "response_1", "response_2"]) == "preference"
    assert table.data_shape(["messages", "images"]) == "sft"
    assert table.data_shape(["prompt", "images"]) == "prompt_only"
    assert "saev_score_margin" not in table.methods_for("prompt_only")
    assert "response_perplexity" in table.methods_for("sft") and "saev_score_margin" not in table.methods_for("sft")


def test_the_recommendation_is_the_committed_benchmarks():
    doc = json.loads((ROOT / "benchmarks/defect_detection/results/results.json").read_text())
    main_arch = doc["settings"]["architectures"][0]
    dev = doc["dev_choices"][main_arch]["dev_auroc"]
    assert table.recommend_from(dev) == table.RECOMMENDED
    assert table.recommend_from(dev, table.SAEV) == table.RECOMMENDED_SAEV
    # the rule by hand for preference rows: the best mean over the five flagged kinds of every allowed method
    kinds = table.SHAPE_KINDS["preference"]
    means = {m: sum(dev[m][k] for k in kinds) / len(kinds) for m in dev
             if m in table.METHODS and m != "random" and table.METHODS[m].family != "difficulty"}
    assert table.RECOMMENDED["preference"] == max(means, key=means.get)


def test_every_default_by_follows_the_table(monkeypatch):
    """Change the recommendation and see select, the CLI, the recipes, the callback, demo and pipeline follow."""
    import inspect

    from saev_curate.cli import build_parser
    from saev_curate.recipes.common import SaevArguments

    monkeypatch.setitem(table.RECOMMENDED, "preference", "saev_cooccur_l0")
    monkeypatch.setitem(table.RECOMMENDED, "prompt_only", "l0")
    pref = [{"prompt": "p", "chosen": "a", "rejected": "b", "saev_cooccur_l0": v, "saev_l0": -v} for v in (1, 5, 3, 2)]
    assert [r["saev_cooccur_l0"] for r in select(pref, fraction=0.5, order="rank")] == [5, 3]
    plain = [{"prompt": "p", "saev_l0": v, "saev_cooccur_l0": -v} for v in (1, 5, 3, 2)]
    assert [r["saev_l0"] for r in select(plain, fraction=0.5, order="rank")] == [5, 3]
    # the CLI's select and the recipes' arguments leave the choice to the table (resolved on the data)
    sel = build_parser()._subparsers._group_actions[0].choices["select"]
    assert sel.get_default("by") is None
    assert SaevArguments().select_by == "auto"
    from saev_curate.recipes.common import resolve_select_by

    assert resolve_select_by("auto", ["prompt", "chosen", "rejected"]) == "saev_cooccur_l0"
    # the callback, the demo and the pipeline read it at call time
    from saev_curate.integrations.trl import SaevRescoreCallback
    from saev_curate.jobs import demo, pipeline

    assert inspect.signature(SaevRescoreCallback).parameters["by"].default is None
    assert demo.default_demo_by() == "saev_cooccur_l0"
    assert pipeline.default_pipeline_by()[-1] == "saev_cooccur_l0"


@pytest.fixture(scope="module")
def scored(tiny_vlm):
    return fitted(tiny_vlm, 6, seed=5)


def test_method_scorer_equals_each_scorer_run_by_hand(scored):
    from saev_curate.curation.scorers import MethodScorer, ResponsePerplexityScorer, SaevScorer

    model, processor, sae, weights, rows = scored
    keys = list(rows[0])
    out = MethodScorer(model, processor, sae, weights, layer=LAYER,
                       methods=["saev_score_any", "response_perplexity", "image_only_control",
                                "saev_token_readout_min_margin"])(rows)
    main = SaevScorer(model, processor, sae, weights, LAYER, control_prompt="What is shown in the image?")(rows)
    anyf = SaevScorer(model, processor, sae, weights, LAYER, feature_set="any", responses=False)(rows)
    ppl = ResponsePerplexityScorer(model, processor)(rows)
    assert list(out["saev_score_any"]) == list(anyf["saev_score"])
    assert list(out["saev_ppl"]) == list(ppl["saev_ppl"])
    for col in ("saev_score_control", "saev_token_readout_min_margin", "saev_score"):
        assert list(out[col]) == list(main[col])
    # row 3 has no image: one error column names it, its scores are null
    assert out["saev_error"][3].count("image is missing") == 1 and out["saev_score"][3] is None
    assert all(out["saev_error"][i] is None for i in range(len(rows)) if i != 3)
    # prompt-only rows: a margin cannot be computed and says so; the defaults adapt to the shape
    plain = [{"prompt": r["prompt"], "images": r["images"]} for r in rows]
    with pytest.raises(InputError, match="needs pair and response"):
        MethodScorer(model, processor, sae, weights, layer=LAYER, methods=["saev_score_margin"])(plain)
    cols = MethodScorer(model, processor, sae, weights, layer=LAYER).columns_for(list(plain[0]))
    assert "pair_agreement" in cols and "ppl" not in cols and "score_margin" not in cols
    assert "ppl" in MethodScorer(model, processor, sae, weights, layer=LAYER).columns_for(keys)


def test_method_scorer_without_an_sae_and_clear_errors(scored):
    from saev_curate.curation.scorers import MethodScorer

    model, processor, _, _, rows = scored
    out = MethodScorer(model, processor, methods=["response_perplexity", "min_token_logprob"])(rows)
    assert set(out) == {"saev_ppl", "saev_min_token_logprob", "saev_min_token_index", "saev_min_token_text",
                        "saev_error"}
    with pytest.raises(InputError, match="need an SAE"):
        MethodScorer(model, processor, methods=["saev_score"])
    with pytest.raises(InputError, match="CLIP"):
        MethodScorer(model, processor, methods=["clip_score"])
    with pytest.raises(InputError, match="no method"):
        MethodScorer(model, processor, methods=["perplexity_of_everything"])

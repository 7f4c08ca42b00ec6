"""The Scorer base: output column types fixed whatever a batch holds, so a plain `ds.map(scorer, batched=True)`
works without `features=` (one process, num_proc=2, a DatasetDict, streaming), and selection reads the
scorers' declared columns."""

from __future__ import annotations

import datasets
import pytest
from scoring_rows import LAYER, make_rows, make_sae

from saev_curate.core.errors import InputError
from saev_curate.curation.crossmodal import CrossModalWeights
from saev_curate.curation.scorers import SaevScorer, Scorer


class Parity(Scorer):
    """Scores even numbers; odd ones are errors. Declares its columns once."""

    COLUMNS = {"half": "float64", "count": "int64", "error": "string"}
    def score_rows(self, rows, keys):
        ok = [r["x"] % 2 == 0 for r in rows]
        return {"half": [r["x"] / 2 if g else None for r, g in zip(rows, ok)],
                "count": [r["x"] if g else None for r, g in zip(rows, ok)],
                "error": [None if g else "odd" for g in ok]}


def test_types_are_fixed_when_the_first_batch_has_only_nulls_or_no_errors():
    ds = datasets.Dataset.from_dict({"x": [0, 2, 4, 6, 1, 3, 8]})  # batch 0: no error; batch 2: errors
    out = ds.map(Parity(), batched=True, batch_size=2)
    assert out.features["saev_error"] == datasets.Value("string")
    assert out["saev_error"] == [None, None, None, None, "odd", "odd", None]
    first_null = datasets.Dataset.from_dict({"x": [1, 3, 2]}).map(Parity(), batched=True, batch_size=2)
    assert first_null.features["saev_half"] == datasets.Value("float64")  # first batch: scores all None
    assert first_null.features["saev_count"] == datasets.Value("int64")
    assert first_null["saev_half"] == [None, None, 1.0]


def test_map_refuses_a_list_with_a_hint():
    with pytest.raises(InputError, match="Dataset.from_list"):
        Parity().map([{"x": 1}])


@pytest.fixture(scope="module")
def live_scorer(tiny_vlm):
    model, processor = tiny_vlm("llava")
    sae = make_sae(model.config.get_text_config().hidden_size)
    w = CrossModalWeights.fit(model, processor, sae, make_rows(8, seed=5, with_bad=False), LAYER,
                              n_reference=None, batch_size=4)
    return SaevScorer(model, processor, sae, w, LAYER)


def _late_error_rows():
    rows = make_rows(8, seed=11, with_bad=False)
    rows[5] = dict(rows[5], images=[])  # the only error, in the third batch of 2
    return datasets.Dataset.from_list(rows)


def _check(out, column_names=None):
    assert out.features["saev_error"] == datasets.Value("string")
    assert out.features["saev_cooccur_l0"] == datasets.Value("int64")
    errors = out["saev_error"]
    assert [i for i, e in enumerate(errors) if e is not None] == [5] and "image" in errors[5]
    assert out["saev_score"][5] is None and all(v is not None for i, v in enumerate(out["saev_score"]) if i != 5)


def test_plain_ds_map_without_features_with_an_error_only_in_a_late_batch(live_scorer):
    ds = _late_error_rows()
    _check(ds.map(live_scorer, batched=True, batch_size=2, load_from_cache_file=False))


def test_plain_ds_map_without_features_with_num_proc_2(live_scorer):
    ds = _late_error_rows()
    _check(ds.map(live_scorer, batched=True, batch_size=2, num_proc=2, load_from_cache_file=False))


def test_plain_map_and_scorer_map_on_a_dataset_dict(live_scorer):
    ds = _late_error_rows()
    dd = datasets.DatasetDict(train=ds, test=ds.select(range(6)))
    for out in (dd.map(live_scorer, batched=True, batch_size=2, load_from_cache_file=False),
                live_scorer.map(dd, batch_size=2, load_from_cache_file=False)):
        _check(out["train"])
        assert out["test"]["saev_error"][5] is not None

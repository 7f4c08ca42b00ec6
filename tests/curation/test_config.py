"""One score configuration: every ScoreConfig field reaches every entry point (the CLI's score, the recipes, the
callback, the scorers), bad values are named, and the CLI flags parse back to the same config."""

from __future__ import annotations

from dataclasses import fields

import pytest

from saev_curate.curation.config import ScoreConfig
from saev_curate.errors import InputError

VALUES = {"layer": "2", "delta": 0.5, "delta_rel": 0.1, "feature_set": "any", "responses": "no",
          "control_prompt": "What is here?", "score_max_length": 64, "score_batch_size": 3,
          "exclude_special_tokens": True, "max_image_pixels": 10_000}


def test_every_field_is_tested_here():
    assert set(VALUES) == {f.name for f in fields(ScoreConfig)}  # a new option needs a value below


def test_the_cli_flags_parse_to_the_config():
    from saev_curate.cli import build_parser
    from saev_curate.curation.config import score_config_from_args

    argv = ["score", "--model", "m", "--data", "d", "--out", "o"]
    for f in fields(ScoreConfig):
        v = VALUES[f.name]
        flag = {"score_max_length": "--max-length", "score_batch_size": "--batch-size"}.get(
            f.name, "--" + f.name.replace("_", "-"))
        argv += [flag] if v is True else [flag, str(v)]
    args = build_parser().parse_args(argv)
    assert score_config_from_args(args) == ScoreConfig(**VALUES)
    assert score_config_from_args(build_parser().parse_args(argv[:7])) == ScoreConfig()  # defaults: the dataclass's


def test_the_recipes_and_the_callback_take_every_field():
    import inspect

    from saev_curate.integrations.trl import SaevRescoreCallback
    from saev_curate.recipes.common import SaevArguments
    from saev_curate.recipes.evaluate_policy import EvalArguments

    for cls in (SaevArguments, EvalArguments):
        got = cls(**VALUES)
        assert {f.name: getattr(got, f.name) for f in fields(ScoreConfig)} == ScoreConfig(**VALUES).to_dict()
    assert SaevArguments(**VALUES).score_config() == ScoreConfig(**VALUES)
    assert "config" in inspect.signature(SaevRescoreCallback).parameters  # plus **options, folded by ScoreConfig.of


def test_options_by_name_and_bad_values_are_named():
    assert ScoreConfig.of(None, max_length=12, delta=0.0) == ScoreConfig(score_max_length=12, delta=0.0)
    assert ScoreConfig(responses=True).responses == "yes" and ScoreConfig(layer=3).layer_value == 3
    with pytest.raises(InputError, match="unknown score option.*detla"):
        ScoreConfig.of(None, detla=1.0)
    for bad in ({"delta": float("nan")}, {"delta_rel": 1.5}, {"feature_set": "all"}, {"responses": "maybe"},
                {"control_prompt": "  "}, {"score_max_length": 0}, {"score_batch_size": True}):
        with pytest.raises(InputError, match=next(iter(bad))):
            ScoreConfig(**bad)


def test_the_cli_flags_keep_their_types_after_the_recipes_parse_the_config():
    """HfArgumentParser (the recipes' TrlParser) rewrites the dataclass fields' ``type`` in place; the CLI's flags
    must still parse numbers as numbers afterwards."""
    from trl import TrlParser

    from saev_curate.cli import build_parser
    from saev_curate.curation.config import score_config_from_args
    from saev_curate.recipes.evaluate_policy import EvalArguments

    TrlParser((EvalArguments,))
    args = build_parser().parse_args(["score", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "2",
                                      "--delta", "0.5", "--exclude-special-tokens"])
    assert score_config_from_args(args) == ScoreConfig(score_batch_size=2, delta=0.5, exclude_special_tokens=True)

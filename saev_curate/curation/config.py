"""One score configuration, declared once (every field with its help, as TRL's ``*_config.py`` and sparsify's
``config.py``): :class:`~saev_curate.SaevScorer`, ``saev-curate score``, the recipes' ``SaevArguments`` and
:class:`~saev_curate.SaevRescoreCallback` all take it, so every option is reachable from every entry point.

Field names are prefixed where TRL's own configs use the plain name (``score_max_length``: ``DPOConfig`` has a
``max_length``); the CLI shows ``--max-length`` / ``--batch-size`` and takes the long spelling too.
"""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from saev_curate.core.errors import InputError

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_CONTROL_PROMPT", "ScoreConfig", "add_score_args", "score_config_from_args"]

#: the control prompt used when a method needs one and none is given: a fixed neutral question that fits every image
DEFAULT_CONTROL_PROMPT = "What is shown in the image?"
FEATURE_SETS = ("cooccur", "any")
#: distinct keys a fit's pair / read-out table keeps by default (:mod:`saev_curate.curation.counting`): 2^25 (~0.5 GB,
#: ~1.6 GB while merging); the feature pairs of an SAE with d_sae^2 <= 4x this (d_sae <= 11,585) are counted exactly
#: in a dense table of no more memory instead
DEFAULT_CAPACITY = 1 << 25


@dataclass
class ScoreConfig:
    """How rows are scored: the layer, the thresholds, which text is shown, and the limits of one pass."""

    layer: str | None = field(
        default=None,
        metadata={"help": "Decoder layer the SAE reads: an index, a hook name or 'middle' (default: the SAE's own "
                          "metadata)."})
    delta: float = field(
        default=1.0, metadata={"help": "Activation threshold δ for a feature to count as active on a modality "
                                       "(the paper's code: 1)."})
    delta_rel: float | None = field(
        default=None,
        metadata={"help": "Beyond the paper: thresholds for the agreement columns as this share of each feature's top "
                          "activation on the reference rows, instead of one δ (e.g. 0.1)."})
    feature_set: str = field(
        default="cooccur",
        metadata={"help": "cooccur: features active on both image and text tokens (the paper's code); any: features "
                          "active on any token (the paper's Algorithm 1).", "choices": FEATURE_SETS})
    responses: str = field(
        default="auto",
        metadata={"help": "Also score with the chosen / rejected response shown: auto (for preference rows), yes, no.",
                  "choices": ("auto", "yes", "no")})
    control_prompt: str | None = field(
        default=None,
        metadata={"help": "A fixed neutral question scored with each row's image (the image-only control: "
                          "saev_score_control, saev_grounding_vs_control); methods that need it use "
                          f"{DEFAULT_CONTROL_PROMPT!r} when none is given."})
    score_max_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per scored row: text is truncated, image tokens never are (the paper's code: 256; "
                          "default: no limit)."})
    score_batch_size: int = field(default=8, metadata={"help": "Rows per scoring forward pass."})
    exclude_special_tokens: bool = field(
        default=False, metadata={"help": "Leave special tokens (BOS, chat-template markers) out of the text tokens."})
    max_image_pixels: int | None = field(
        default=None,
        metadata={"help": "Images with more pixels are that row's error, not decoded (decompression bombs; default: "
                          "the library's limit)."})

    def __post_init__(self):
        if isinstance(self.responses, bool):  # the Python spelling: True / False
            self.responses = "yes" if self.responses else "no"
        if self.responses not in ("auto", "yes", "no"):
            raise InputError(f"responses={self.responses!r}; use 'auto', 'yes' or 'no' (True / False in Python)")
        if self.feature_set not in FEATURE_SETS:
            raise InputError(f"feature_set={self.feature_set!r}; use one of {', '.join(FEATURE_SETS)}")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not math.isfinite(self.delta):
            raise InputError(f"delta={self.delta!r} must be a finite number")
        self.delta = float(self.delta)
        if self.delta_rel is not None:
            if not (isinstance(self.delta_rel, (int, float)) and 0 < self.delta_rel <= 1):
                raise InputError(f"delta_rel={self.delta_rel!r}: give a share of each feature's top activation in "
                                 "(0, 1], or None for one delta")
            self.delta_rel = float(self.delta_rel)
        if self.control_prompt is not None and (not isinstance(self.control_prompt, str)
                                                or not self.control_prompt.strip()):
            raise InputError(f"control_prompt={self.control_prompt!r}: give a fixed neutral question (e.g. "
                             f"{DEFAULT_CONTROL_PROMPT!r}) or None")
        for name in ("score_max_length", "score_batch_size", "max_image_pixels"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{name}={v!r} must be a positive integer")
        if isinstance(self.layer, int) and not isinstance(self.layer, bool):
            self.layer = str(self.layer)
        self.exclude_special_tokens = bool(self.exclude_special_tokens)

    @property
    def layer_value(self) -> int | str | None:
        """``layer`` as the scorer takes it: an int when it is one, else the hook name / ``'middle'`` / None."""
        v = self.layer
        return int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v

    @property
    def responses_value(self) -> bool | str:
        return {"auto": "auto", "yes": True, "no": False}[self.responses]

    @classmethod
    def of(cls, config: "ScoreConfig | None" = None, **options: Any) -> "ScoreConfig":
        """``config`` (default: the defaults) with ``options`` (field names; ``max_length`` / ``batch_size`` for
        ``score_max_length`` / ``score_batch_size``) applied; an unknown option is an error naming the fields."""
        names = {f.name for f in fields(cls)}
        renamed = {("score_" + k if k in ("max_length", "batch_size") else k): v for k, v in options.items()}
        unknown = sorted(set(renamed) - names)
        if unknown:
            raise InputError(f"unknown score option(s) {', '.join(unknown)}; ScoreConfig has {', '.join(sorted(names))}")
        base = config if config is not None else cls()
        if not isinstance(base, cls):
            raise InputError(f"config= takes a ScoreConfig, got {type(base).__name__}")
        return replace(base, **renamed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, obj: Any) -> "ScoreConfig":
        """The scoring options that ``obj`` carries under the field names (``SaevArguments``, ``EvalArguments``,
        parsed CLI flags); a missing or None value keeps the field's default."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls) if getattr(obj, f.name, None) is not None})


#: the CLI's shorter spelling of a field (field metadata holds only what HfArgumentParser passes to argparse)
CLI_FLAGS = {"score_max_length": "--max-length", "score_batch_size": "--batch-size"}


def _flag(f) -> str:
    return CLI_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))


def add_score_args(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """Every :class:`ScoreConfig` field as a CLI flag (help and choices from the field; ``--max-length`` also
    answers to ``--score-max-length``)."""
    # the annotations, resolved (a field's own ``type`` is a string here, and HfArgumentParser rewrites it in place)
    hints = typing.get_type_hints(ScoreConfig)
    for f in fields(ScoreConfig):
        if f.name in skip:
            continue
        flag = _flag(f)
        names = [flag] + ([] if flag == "--" + f.name.replace("_", "-") else ["--" + f.name.replace("_", "-")])
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"] + (
            f" (default {f.default})" if f.default not in (None, False) else "")}
        kind = next((t for t in (bool, int, float) if t in typing.get_args(hints[f.name]) or hints[f.name] is t), str)
        if kind is bool:
            kw.update(action="store_true", default=False)
        else:
            kw["type"] = kind
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(*names, **kw)


def score_config_from_args(args: argparse.Namespace) -> ScoreConfig:
    """The :class:`ScoreConfig` of parsed CLI flags (flags not given keep the field's default)."""
    return ScoreConfig.from_fields(args)

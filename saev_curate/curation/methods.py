"""The one table of methods: every way saev-curate can rank rows, what it reads, and which way is cleaner.

Everything that names a method reads this table: :func:`~saev_curate.curation.selection.select`, ``saev-curate
score --methods`` / ``select --by``, the recipes' ``--select_by``, :class:`~saev_curate.SaevRescoreCallback`,
the demo, the pipeline and the benchmarks.  No other module lists methods.

* ``column``: the score column a method ranks by (the scorers' default ``saev_`` prefix);
* ``higher_is_cleaner``: the direction that keeps clean rows (perplexity keeps the *lowest* values);
* ``needs``: what computing it takes beyond the model: ``sae`` and ``weights`` (ω), ``pairs`` / ``readout``
  (weights fitted with feature pairs / on rows with responses: :meth:`CrossModalWeights.fit` does both by
  default), ``response`` (a response to read: a preference row's chosen answer or an SFT completion), ``pair``
  (chosen *and* rejected), ``control`` (a fixed control prompt, ``ScoreConfig.control_prompt``), ``clip`` (a CLIP
  model);
* ``family``: ``paper`` (the SAE-V paper's score, as its code computes it), ``beyond_paper`` (our SAE-V variants),
  ``baseline`` (no SAE, or SAE statistics that are not cross-modal) or ``difficulty`` (keeps the *hardest* rows,
  IFD / Self-Filter style: not a defect filter).

:data:`RECOMMENDED` is the detection benchmark's answer per data shape (:func:`recommend_from` derives it from
``benchmarks/defect_detection/results/results.json``; a test keeps the two equal): every default ``by`` comes from
:func:`default_by`, so when the benchmark changes its recommendation, one line changes here.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from saev_curate.core.errors import InputError

__all__ = ["ALIASES", "METHODS", "RECOMMENDED", "RECOMMENDED_SAEV", "SAEV", "SHAPES", "Method", "data_shape",
           "default_by", "find_method", "get_method", "methods_for", "recommend_from", "resolve_by", "table_text"]


@dataclass(frozen=True)
class Method:
    """One row of the table (see the module docstring for the fields)."""

    name: str
    column: str | None  # None: needs no column (random)
    higher_is_cleaner: bool
    needs: frozenset[str]
    family: str
    description: str
    #: the column holding the index (among the chosen response's tokens) of the token this method blames
    blame: str | None = None


def _m(name: str, column: str | None, needs: str, family: str, description: str, *, higher: bool = True,
       blame: str | None = None) -> Method:
    return Method(name, column, higher, frozenset(needs.split()), family, description, blame)


_SAEV = "sae weights"
_READ = "sae weights readout response pair"
#: name -> method, in the order reports list them (the paper's first, then beyond it, then baselines)
METHODS: dict[str, Method] = {m.name: m for m in (
    _m("saev_score", "saev_score", _SAEV, "paper",
       "the paper's score: the sum of ω over features firing on both image and text tokens (δ = 1)"),
    _m("saev_score_mean", "saev_score_mean", _SAEV, "paper",
       "the paper's figure: the activation-weighted mean of ω over the same features"),
    _m("saev_score_any", "saev_score_any", _SAEV, "paper",
       "the paper's Algorithm 1: ω summed over features active on any token"),
    _m("saev_score_chosen", "saev_score_chosen", _SAEV + " response pair", "beyond_paper",
       "the paper's score with the chosen response shown after the prompt"),
    _m("saev_score_rejected", "saev_score_rejected", _SAEV + " response pair", "beyond_paper",
       "the paper's score with the rejected response shown"),
    _m("saev_score_margin", "saev_score_margin", _SAEV + " response pair", "beyond_paper",
       "the paper's score, chosen minus rejected"),
    _m("saev_score_content", "saev_score_content", _SAEV, "beyond_paper",
       "the paper's sum over content tokens only (no chat-template tokens)"),
    _m("saev_grounding", "saev_grounding", _SAEV, "beyond_paper",
       "the share of the content tokens' cross-modal feature mass the image carries"),
    _m("saev_grounding_vs_control", "saev_grounding_vs_control", _SAEV + " control", "beyond_paper",
       "grounding minus the same image's grounding under a fixed control prompt"),
    _m("saev_grounding_margin", "saev_grounding_margin", _SAEV + " response pair", "beyond_paper",
       "grounding on the response's tokens, chosen minus rejected"),
    _m("saev_pair_agreement", "saev_pair_agreement", _SAEV + " pairs", "beyond_paper",
       "mean npmi of the row's (text feature, image feature) pairs: does this text go with this image"),
    _m("saev_pair_agreement_margin", "saev_pair_agreement_margin", _SAEV + " pairs response pair", "beyond_paper",
       "pair agreement on the response's tokens, chosen minus rejected"),
    _m("saev_answer_agreement_margin", "saev_answer_agreement_margin", _READ, "beyond_paper",
       "mean npmi of (response feature, answer-slot feature) pairs, chosen minus rejected"),
    _m("saev_answer_readout_chosen", "saev_answer_readout_chosen", _READ, "beyond_paper",
       "read-out: how likely the chosen response is given the answer slot's SAE features"),
    _m("saev_answer_readout_margin", "saev_answer_readout_margin", _READ, "beyond_paper",
       "read-out, chosen minus rejected"),
    _m("saev_token_readout_min_chosen", "saev_token_readout_min_chosen", _READ, "beyond_paper",
       "token read-out: the chosen response's worst token given the features before it (blames that token)",
       blame="saev_blame_token"),
    _m("saev_token_readout_min_margin", "saev_token_readout_min_margin", _READ, "beyond_paper",
       "token read-out, chosen minus rejected: the best SAE-V column on long answers"),
    _m("saev_answer_agreement_min_chosen", "saev_answer_agreement_min_chosen", _READ, "beyond_paper",
       "answer-pair npmi per chosen-response token, its minimum"),
    _m("saev_answer_agreement_min_margin", "saev_answer_agreement_min_margin", _READ, "beyond_paper",
       "answer-pair npmi minimum, chosen minus rejected"),
    _m("cooccur_l0", "saev_cooccur_l0", "sae weights", "baseline",
       "the number of features firing on both image and text tokens"),
    _m("l0", "saev_l0", "sae weights", "baseline", "mean number of active SAE features per token"),
    _m("image_only_control", "saev_score_control", _SAEV + " control", "baseline",
       "the paper's score of the image under a fixed control prompt (what the image alone scores)"),
    _m("response_perplexity", "saev_ppl", "response", "baseline",
       "the model's own perplexity of the chosen response given image and prompt; keeps the lowest", higher=False),
    _m("min_token_logprob", "saev_min_token_logprob", "response", "baseline",
       "the chosen response's least likely content token under the model (blames that token)",
       blame="saev_min_token_index"),
    _m("clip_score", "saev_clip_score", "clip", "baseline", "CLIP image-text similarity (an extra model)"),
    _m("random", None, "", "baseline", "a seeded random order (the control every method must beat)"),
    _m("response_perplexity_hardest", "saev_ppl", "response", "difficulty",
       "the highest-perplexity rows (IFD / Self-Filter style: the hardest rows, not a defect filter)"),
)}

#: old short names (``SaevScorer.SELECT`` until 0.1) -> method; ``ppl`` now keeps the *lowest* perplexity
ALIASES: dict[str, str] = {"saev": "saev_score", "saev_mean": "saev_score_mean", "saev_margin": "saev_score_margin",
                           "saev_content": "saev_score_content", "ppl": "response_perplexity", "clip": "clip_score"}

#: data shape -> what its rows give a method (``needs`` beyond the model side)
SHAPES: dict[str, frozenset[str]] = {"prompt_only": frozenset(), "sft": frozenset({"response"}),
                                     "preference": frozenset({"response", "pair"})}
#: data shape -> the defect kinds of the detection benchmark a method can see there
SHAPE_KINDS: dict[str, tuple[str, ...]] = {
    "prompt_only": ("image_prompt_mismatch", "corrupted_image", "off_topic_prompt"),
    "sft": ("hallucinated_detail", "image_prompt_mismatch", "chosen_contradicts_image", "corrupted_image",
            "off_topic_prompt"),
    "preference": ("hallucinated_detail", "image_prompt_mismatch", "chosen_contradicts_image", "corrupted_image",
                   "off_topic_prompt"),
}
#: data shape -> the method to rank by: :func:`recommend_from` on the detection benchmark's dev split
RECOMMENDED: dict[str, str] = {"prompt_only": "saev_pair_agreement", "sft": "response_perplexity",
                               "preference": "response_perplexity"}
#: the same among the SAE-V methods (what the jobs compare the recommendation with): ``recommend_from(..., SAEV)``
RECOMMENDED_SAEV: dict[str, str] = {"prompt_only": "saev_pair_agreement", "sft": "saev_pair_agreement",
                                    "preference": "saev_token_readout_min_margin"}
#: the SAE-V families
SAEV = ("paper", "beyond_paper")


def find_method(name: str) -> Method | None:
    """The method called ``name`` (an alias, or a name without its ``saev_`` prefix, too), or None."""
    key = ALIASES.get(name, name)
    return METHODS.get(key) or METHODS.get(f"saev_{key}")


def get_method(name: str) -> Method:
    """The method called ``name`` (or an old alias); an unknown name is an error listing the table."""
    m = find_method(name)
    if m is None:
        import difflib

        close = difflib.get_close_matches(name, [*METHODS, *ALIASES], n=3)
        raise InputError(f"no method {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + f"; methods: {', '.join(METHODS)}")
    return m


def data_shape(columns: Iterable[str]) -> str:
    """``prompt_only``, ``sft`` or ``preference`` for a dataset with these columns (every row format of
    :mod:`saev_curate.vlm.rows`)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols or {"response_1", "response_2"} <= cols:
        return "preference"
    if "completion" in cols or "messages" in cols:
        return "sft"
    return "prompt_only"


def methods_for(shape: str, *, have: Iterable[str] = ("sae", "weights", "pairs", "readout", "control"),
                families: Iterable[str] = ("paper", "beyond_paper", "baseline")) -> list[str]:
    """The methods a ``shape`` of data allows, given the model-side inputs ``have``, in table order."""
    if shape not in SHAPES:
        raise InputError(f"data shape {shape!r}; use one of {', '.join(SHAPES)}")
    can = SHAPES[shape] | set(have)
    fams = set(families)
    return [m.name for m in METHODS.values() if m.needs <= can and m.family in fams]


def default_by(columns: Iterable[str] | None = None, shape: str | None = None, *, saev_only: bool = False) -> str:
    """The method every entry point ranks by when the user names none: :data:`RECOMMENDED` (or, ``saev_only``,
    :data:`RECOMMENDED_SAEV`) for the data's shape (from its ``columns``; preference rows when neither is known)."""
    if shape is None:
        shape = "preference" if columns is None else data_shape(columns)
    return (RECOMMENDED_SAEV if saev_only else RECOMMENDED)[shape]


def resolve_by(by: str) -> tuple[str, bool]:
    """``(column, higher_is_cleaner)`` for ``by``: a method name, an alias, a method's column (its table direction)
    or any other numeric column (higher kept)."""
    m = find_method(by)
    if m is None:
        m = next((m for m in METHODS.values() if m.column == by and m.family != "difficulty"), None)
        return (by, True) if m is None else (m.column, m.higher_is_cleaner)
    if m.column is None:
        raise InputError(f"by={by!r} needs no column; select(by='random') handles it")
    return m.column, m.higher_is_cleaner


def recommend_from(dev_auroc: Mapping[str, Mapping[str, float]],
                   families: Iterable[str] = ("paper", "beyond_paper", "baseline")) -> dict[str, str]:
    """The recommendation per data shape from the detection benchmark's dev-split AUROC (``{method: {kind:
    auroc}}``, ``results.json["dev_choices"][arch]["dev_auroc"]``): the method with the best mean AUROC over the
    kinds the shape can show, among the methods of ``families`` the shape allows (random excluded)."""
    out = {}
    for shape, kinds in SHAPE_KINDS.items():
        allowed = [m for m in methods_for(shape, families=families) if m in dev_auroc and m != "random"]
        if not allowed:
            raise InputError(f"the detection results score no method a {shape} dataset allows")
        out[shape] = max(allowed, key=lambda m: statistics.fmean(dev_auroc[m][k] for k in kinds))
    return out


def table_text() -> str:
    """The table as text (``saev-curate methods``): each method, its column, which way is cleaner, what it needs,
    its family, and which shapes recommend it."""
    rec = {}
    for shape, name in RECOMMENDED.items():
        rec.setdefault(name, []).append(shape)
    lines = [f"{'method':34} {'column':34} {'keeps':7} {'family':13} needs / what it is"]
    for m in METHODS.values():
        keeps = "-" if m.column is None else "highest" if m.higher_is_cleaner else "lowest"
        mark = f"  [recommended: {', '.join(rec[m.name])}]" if m.name in rec else ""
        lines.append(f"{m.name:34} {m.column or '-':34} {keeps:7} {m.family:13} "
                     f"{' '.join(sorted(m.needs)) or '-'}: {m.description}{mark}")
    return "\n".join(lines)

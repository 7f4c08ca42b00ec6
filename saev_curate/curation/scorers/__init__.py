"""Scorers: one :class:`~saev_curate.curation.scorers.base.Scorer` base and the library's scorers.

* :class:`SaevScorer` (``saev_score`` and friends: SAE-V stage 3);
* baselines the SAE-V paper compares against: :class:`ResponsePerplexityScorer` (``saev_ppl``),
  :class:`ClipScorer` (``saev_clip_score``);
* :class:`MethodScorer`: the columns of any methods of the table (:mod:`saev_curate.curation.methods`), each
  scorer they need run once per batch.
"""

from saev_curate.curation.scorers.base import Scorer, TypedColumn
from saev_curate.curation.scorers.clip import ClipScorer
from saev_curate.curation.scorers.method import DEFAULT_METHODS, MethodScorer
from saev_curate.curation.scorers.perplexity import ResponsePerplexityScorer
from saev_curate.curation.scorers.saev import SaevScorer, score_activations

__all__ = ["DEFAULT_METHODS", "ClipScorer", "MethodScorer", "ResponsePerplexityScorer", "SaevScorer", "Scorer",
           "TypedColumn", "score_activations"]

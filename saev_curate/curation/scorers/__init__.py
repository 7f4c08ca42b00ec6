"""Scorers: one :class:`~saev_curate.curation.scorers.base.Scorer` base and the library's scorers.

* :class:`SaevScorer` (``saev_score`` and friends: SAE-V stage 3);
* baselines the SAE-V paper compares against: :class:`ResponsePerplexityScorer` (``saev_ppl``),
  :class:`ClipScorer` (``saev_clip_score``); random, L0 and co-occurring L0 selection need no scorer of
  their own (``select(ds, by="random" | "l0" | "cooccur_l0")``).
"""

from saev_curate.curation.scorers.base import Scorer, TypedColumn, selection_methods
from saev_curate.curation.scorers.clip import ClipScorer
from saev_curate.curation.scorers.perplexity import ResponsePerplexityScorer
from saev_curate.curation.scorers.saev import SaevScorer, score_activations

__all__ = ["ClipScorer", "ResponsePerplexityScorer", "SaevScorer", "Scorer", "TypedColumn", "score_activations",
           "selection_methods"]

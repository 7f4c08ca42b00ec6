"""Cross-modal feature weights ω (stages 1-2 of SAE-V): the streaming fitter and the weights it produces."""

from saev_curate.curation.crossmodal.fitter import (
    CLASS_NAMES,
    CrossModalFitter,
    TokenBatch,
    flatten_tokens,
    token_keys,
    token_top_features,
)
from saev_curate.curation.crossmodal.weights import CrossModalWeights

__all__ = ["CLASS_NAMES", "CrossModalFitter", "CrossModalWeights", "TokenBatch", "flatten_tokens", "token_keys",
           "token_top_features"]

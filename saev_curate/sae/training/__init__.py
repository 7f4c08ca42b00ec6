"""Training SAEs on a VLM's activations: ``trainer`` (the recipe, on any activation source),
``activations`` (the stream of layer-L activations and its on-disk cache), ``pipeline`` (model + dataset
in, SAE out: what ``saev-curate train-sae`` runs)."""

from saev_curate.sae.training.activations import ActivationCache, ActivationStream, StreamConfig
from saev_curate.sae.training.pipeline import SaevTrainConfig, train_sae
from saev_curate.sae.training.trainer import TrainConfig, train_on_activations

__all__ = ["ActivationCache", "ActivationStream", "SaevTrainConfig", "StreamConfig", "TrainConfig",
           "train_on_activations", "train_sae"]

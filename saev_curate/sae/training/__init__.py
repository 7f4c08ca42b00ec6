"""Training SAEs on a VLM's activations: ``config`` (the options, torch-free), ``trainer`` (the recipe, on any
activation source), ``activations`` (the stream of layer-L activations and its on-disk cache), ``pipeline`` (model +
dataset in, SAE out: what ``saev-curate train-sae`` runs). Names load on first use (``saev_curate.core.lazy``)."""

from saev_curate.core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "saev_curate.sae.training.activations": ("ActivationCache", "ActivationStream", "StreamConfig"),
    "saev_curate.sae.training.config": ("SaevTrainConfig", "TrainConfig"),
    "saev_curate.sae.training.pipeline": ("train_sae",),
    "saev_curate.sae.training.trainer": ("train_on_activations",),
})

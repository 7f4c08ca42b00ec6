"""Train SAE-V end to end: a VLM and a local dataset in, an SAE in SAELens layout out."""

from __future__ import annotations

from dataclasses import dataclass, fields

from saev_curate.errors import InputError
from saev_curate.sae.model import SAE
from saev_curate.sae.train import TrainConfig, train_on_activations
from saev_curate.stream import ActivationCache, ActivationStream, StreamConfig


@dataclass
class SaevTrainConfig(TrainConfig):
    """TrainConfig (the SAE recipe) plus where its activations come from."""

    model: str = ""  # local VLM folder (or a hub id already in the cache)
    dataset: str = ""  # local dataset: save_to_disk folder, parquet, json/jsonl
    dataset_split: str | None = None
    max_rows: int | None = None
    layer: str = "middle"  # decoder layer: index, "middle", or a hook name (blocks.16.hook_resid_post)
    mode: str = "full"  # text shown with the images: prompt | chosen | rejected | full
    max_length: int | None = None
    model_batch_size: int = 8
    model_dtype: str | None = None
    exclude_special_tokens: bool = True
    max_image_text_ratio: float | None = None
    buffer_tokens: int = 65_536
    activation_cache: str | None = None  # folder: written on first use, reused (and resumed from) after
    cache_shard_tokens: int = 65_536

    def stream_config(self, layer: int) -> StreamConfig:
        names = {f.name for f in fields(StreamConfig)}
        values = {k: getattr(self, k) for k in names if hasattr(self, k) and k != "layer"}
        return StreamConfig(layer=layer, **values)

    def trainer_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


def resolve_layer_spec(model, spec: str | int) -> int:
    """'middle' -> n_layers // 2 (the paper's 16 of 32); otherwise an index or a hook name."""
    from saev_curate.vlm.capture import decoder_layers, resolve_layer

    if spec == "middle":
        return len(decoder_layers(model)) // 2
    return resolve_layer(model, spec)


def train_sae(config: SaevTrainConfig, *, model=None, processor=None, dataset=None, progress: bool = True) -> SAE:
    """Capture layer-L activations of `config.model` on `config.dataset` and train an SAE on them.

    Pass `model`/`processor`/`dataset` objects to skip loading. With `activation_cache`, one pass
    of activations goes to disk first; later runs (other widths, a resume) read it instead.
    """
    from saev_curate.data import load_local_dataset
    from saev_curate.vlm.load import load_vlm

    if model is None or processor is None:
        if not config.model:
            raise InputError("train_sae: set config.model to a local VLM folder (or pass model= and processor=)")
        model, processor = load_vlm(config.model, dtype=config.model_dtype, device=config.device)
    if dataset is None:
        if not config.dataset:
            raise InputError("train_sae: set config.dataset to a local dataset (or pass dataset=)")
        dataset = load_local_dataset(config.dataset, config.dataset_split)
    if config.max_rows is not None and hasattr(dataset, "select"):
        dataset = dataset.select(range(min(config.max_rows, len(dataset))))
    layer = resolve_layer_spec(model, config.layer)
    config.hook_layer = layer
    config.hook_name = config.hook_name or f"blocks.{layer}.hook_resid_post"
    config.model_name = config.model_name or config.model or getattr(model.config, "_name_or_path", None)
    config.dataset_path = config.dataset_path or config.dataset or None
    config.context_size = config.context_size or config.max_length
    stream = ActivationStream(model, processor, dataset, config.stream_config(layer))
    source = stream
    if config.activation_cache:
        try:
            source = ActivationCache(config.activation_cache)
            _check_cache(source, config, layer)
        except InputError as exc:
            if "not a finished activation cache" not in str(exc):
                raise
            source = ActivationCache.write(stream, config.activation_cache, shard_tokens=config.cache_shard_tokens,
                                           metadata={"model": config.model_name, "dataset": config.dataset_path},
                                           progress=progress)
    sae = train_on_activations(config.trainer_config(), source, progress=progress)
    if stream.row_errors:
        sae.cfg.extra["rows_skipped"] = len(stream.row_errors)
        sae.save(config.output_dir, sparsity=sae.sparsity)
    return sae


def _check_cache(cache: ActivationCache, config: SaevTrainConfig, layer: int) -> None:
    want = {"layer": layer, "model": config.model_name, "dataset": config.dataset_path}
    got = {"layer": cache.meta.get("layer"), "model": cache.meta.get("model"), "dataset": cache.meta.get("dataset")}
    if want != got:
        raise InputError(f"{cache.path}: activation cache was written for {got}, this run wants {want}; "
                         "use another activation_cache folder or delete this one")

"""Train SAE-V end to end: a VLM and a local dataset in, an SAE in SAELens layout out."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from saev_curate.errors import InputError
from saev_curate.sae.model import SAE
from saev_curate.sae.training.activations import ActivationCache, ActivationStream, StreamConfig
from saev_curate.sae.training.trainer import TrainConfig, train_on_activations


@dataclass
class SaevTrainConfig(TrainConfig):
    """TrainConfig (the SAE recipe) plus where its activations come from."""

    model: str = field(default="", metadata={'help': 'local VLM folder (or a hub id already in the cache)'})
    dataset: str = field(default="",
        metadata={'help': 'training rows: a save_to_disk folder, .parquet/.json/.jsonl/.csv files '
                  '(a file, folder or glob), or a cached hub id', 'aliases': ['--data']})
    dataset_split: str | None = field(default=None, metadata={'help': 'split of a DatasetDict (default train)'})
    max_rows: int | None = field(default=None, metadata={'help': 'use only the first N rows'})
    layer: str = field(default="middle",
        metadata={'help': "decoder layer: index, 'middle' (n_layers // 2) or a hook name (blocks.16.hook_resid_post)"})
    mode: str = field(default="full",
        metadata={'help': 'text shown with the images: prompt | chosen | rejected | full'})
    max_length: int | None = field(default=None,
        metadata={'help': 'tokens per row; text is truncated, image tokens never are'})
    model_batch_size: int = field(default=8, metadata={'help': 'rows per forward pass of the VLM'})
    model_dtype: str | None = field(default=None,
        metadata={'help': 'VLM dtype: float32, bfloat16, float16 (default: float32 on CPU)'})
    exclude_special_tokens: bool = field(default=True,
        metadata={'help': 'leave BOS/EOS/chat markers out of the training tokens'})
    max_image_text_ratio: float | None = field(default=None,
        metadata={'help': 'subsample image tokens to at most this many per text token'})
    buffer_tokens: int = field(default=65_536,
        metadata={'help': 'shuffle-buffer size: tokens from many rows mix before a batch is cut'})
    activation_cache: str | None = field(default=None,
        metadata={'help': 'folder for one pass of activations: written on first use, reused (and resumed from) after'})
    cache_shard_tokens: int = field(default=65_536, metadata={'help': 'tokens per activation-cache shard'})

    def stream_config(self, layer: int) -> StreamConfig:
        names = {f.name for f in fields(StreamConfig)}
        values = {k: getattr(self, k) for k in names if hasattr(self, k) and k != "layer"}
        return StreamConfig(layer=layer, **values)

    def trainer_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


def train_sae(config: SaevTrainConfig, *, model=None, processor=None, dataset=None, progress: bool = True) -> SAE:
    """Capture layer-L activations of `config.model` on `config.dataset` and train an SAE on them.

    Pass `model`/`processor`/`dataset` objects to skip loading. With `activation_cache`, one pass
    of activations goes to disk first; later runs (other widths, a resume) read it instead.
    """
    from saev_curate.io.datasets import load_local_dataset
    from saev_curate.vlm.layers import resolve_layer
    from saev_curate.vlm.load import load_vlm

    config = replace(config)  # the run's own copy: provenance fields are filled in below, never in the caller's

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
    layer = resolve_layer(model, config.layer)
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

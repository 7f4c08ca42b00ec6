"""Train SAE-V end to end: a VLM and a local dataset in, an SAE in SAELens layout out."""

from __future__ import annotations

import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from saev_curate.core.errors import InputError
from saev_curate.sae.model import SAE
from saev_curate.sae.training.activations import ActivationCache, ActivationStream
from saev_curate.sae.training.config import SaevTrainConfig, TrainConfig
from saev_curate.sae.training.distributed import Processes
from saev_curate.sae.training.trainer import train_on_activations


def train_sae(config: SaevTrainConfig, *, model=None, processor=None, dataset=None, progress: bool = True) -> SAE:
    """Capture layer-L activations of `config.model` on `config.dataset` and train an SAE on them.

    Pass `model`/`processor`/`dataset` objects to skip loading. With `activation_cache`, one pass
    of activations goes to disk first; later runs (other widths, a resume) read it instead.

    Under ``torchrun`` / ``accelerate launch`` (N processes) each process caches its own shards of the rows and
    training is data-parallel (see `ActivationCache.write`, `train_on_activations`); that needs
    `activation_cache`, so that the processes capture the activations once between them, not N times.
    """
    from saev_curate.core.processes import process_device, process_rank
    from saev_curate.sae.training.distributed import process_group

    config = replace(config)  # the run's own copy: provenance fields are filled in below, never in the caller's
    world = process_rank()[1]
    if world > 1 and not config.activation_cache:
        raise InputError(f"train-sae across {world} processes reads its activations from a cache: add "
                         "--activation_cache DIR (written by the processes together on first use, on a filesystem "
                         "every node sees), or run in one process")
    config.device = process_device(config.device)
    with process_group(config.device) as procs:
        return _train_sae(config, procs, model, processor, dataset, progress=progress)


def _train_sae(config: SaevTrainConfig, procs: Processes, model, processor, dataset, *, progress: bool) -> SAE:
    """`train_sae` in process `procs.rank` of `procs.world` (see there)."""
    from saev_curate.io.datasets import load_local_dataset
    from saev_curate.vlm.layers import resolve_layer
    from saev_curate.vlm.load import load_vlm

    if model is None or processor is None:
        if not config.model:
            raise InputError("train_sae: set config.model to a local VLM folder (or pass model= and processor=)")
        model, processor = load_vlm(config.model, dtype=config.model_dtype, device=config.device)
    loaded_dataset = dataset is None
    if dataset is None:
        if not config.dataset:
            raise InputError("train_sae: set config.dataset to a local dataset (or pass dataset=)")
        dataset = load_local_dataset(config.dataset, config.dataset_split)
    if len(dataset) == 0:
        raise InputError(f"{config.dataset or 'dataset='}: the dataset has no rows; an SAE needs activations to "
                         "train on")
    if config.max_rows is not None and hasattr(dataset, "select"):
        dataset = dataset.select(range(min(config.max_rows, len(dataset))))
    layer = resolve_layer(model, config.layer)
    config.hook_layer = layer
    config.hook_name = config.hook_name or f"blocks.{layer}.hook_resid_post"
    config.model_name = config.model_name or config.model or getattr(model.config, "_name_or_path", None)
    config.dataset_path = config.dataset_path or config.dataset or None
    config.context_size = config.context_size or config.max_length
    identity = run_identity(config, model, dataset, layer, loaded_dataset=loaded_dataset)
    state = _check_output_dir(Path(config.output_dir), identity)
    if state == "done":
        from saev_curate.sae.io import load_sae

        if procs.main:
            print(f"saev-curate: {config.output_dir} already holds the finished SAE of this run (same model, layer, "
                  f"dataset and SAE settings, {config.total_steps} steps): nothing to do. To train it again, delete "
                  f"{config.output_dir} or pass another --output_dir", file=sys.stderr)
        return load_sae(config.output_dir, device=config.device)
    procs.barrier()  # every process has read the output folder before process 0 writes to it
    if procs.main:
        _write_run(Path(config.output_dir), identity, finished=False)
    stream = ActivationStream(model, processor, dataset, config.stream_config(layer))
    source = stream
    if config.activation_cache:
        try:
            source = ActivationCache(config.activation_cache)
            _check_cache(source, config, layer)
        except InputError as exc:
            if "not a finished activation cache" not in str(exc):
                raise
            source = ActivationCache.write(stream, config.activation_cache, shard_rows=config.cache_shard_rows,
                                           metadata={"model": config.model_name, "dataset": config.dataset_path},
                                           progress=progress)
    sae = train_on_activations(config.trainer_config(), source, progress=progress)
    if stream.row_errors:
        from saev_curate.core.row_errors import summary, summary_line

        sae.cfg.extra["rows_skipped"] = len(stream.row_errors)
        sae.cfg.extra["row_errors"] = summary(len(dataset), stream.row_errors.values())
        if procs.main:
            sae.save(config.output_dir, sparsity=sae.sparsity)
            print(f"saev-curate: {summary_line(len(dataset), stream.row_errors.values())}", file=sys.stderr)
    if procs.main:
        _write_run(Path(config.output_dir), identity, finished=True)
    procs.barrier()
    return sae


# ------------------------------------------------------------------------------------------ run identity
RUN_FILE = "run.json"
#: identity key -> the flag that sets it (for "what changed" messages)
_FLAGS = {"model": "--model", "model_class": "--model", "layer": "--layer", "dataset": "--data",
          "dataset_split": "--dataset_split", "dataset_rows": "--data", "dataset_fingerprint": "--data (its content)",
          "max_rows": "--max_rows", "mode": "--mode", "max_length": "--max_length",
          "exclude_special_tokens": "--exclude_special_tokens", "max_image_text_ratio": "--max_image_text_ratio",
          "buffer_tokens": "--buffer_tokens"}
_NOT_IDENTITY = {"output_dir", "device", "checkpoint_every", "keep_checkpoints", "model_name", "hook_name",
                 "hook_layer", "dataset_path", "context_size", "activation_cache", "cache_shard_rows", "model",
                 "dataset", "dataset_split", "max_rows", "layer", "mode", "max_length", "exclude_special_tokens",
                 "max_image_text_ratio", "buffer_tokens", "model_dtype", "model_batch_size", "min_usable_share",
                 "max_image_pixels"}


def run_identity(config: SaevTrainConfig, model, dataset, layer: int, *, loaded_dataset: bool = True) -> dict:
    """What a training run depends on: model, layer, dataset, what the SAE sees, and the SAE settings."""
    from saev_curate.io.fingerprint import data_fingerprint

    ident = {"model": config.model_name, "model_class": type(model).__name__, "layer": layer,
             "dataset": config.dataset_path, "dataset_split": config.dataset_split, "dataset_rows": len(dataset),
             "max_rows": config.max_rows, "mode": config.mode, "max_length": config.max_length,
             "exclude_special_tokens": config.exclude_special_tokens,
             "max_image_text_ratio": config.max_image_text_ratio, "buffer_tokens": config.buffer_tokens}
    if loaded_dataset and getattr(dataset, "_fingerprint", None):
        ident["dataset_fingerprint"] = data_fingerprint(dataset)
    for f in fields(TrainConfig):
        if f.name not in _NOT_IDENTITY:
            ident[f.name] = getattr(config, f.name)
    return json.loads(json.dumps(ident, default=str))


def _check_output_dir(out: Path, identity: dict) -> str:
    """'fresh' (nothing of another run to keep), 'resume' (this run's checkpoints) or 'done' (this run's
    finished SAE); another run's checkpoints or SAE in ``out``: an error naming what changed."""
    from saev_curate.io.checked import read_json_object

    run_file = out / RUN_FILE
    has_ckpt = any((out / "checkpoints").glob("step_*.pt"))
    has_sae = (out / "cfg.json").is_file()
    if not run_file.is_file():
        return "resume" if has_ckpt else "fresh"
    saved = read_json_object(run_file, fix=f"delete {out} (or its {RUN_FILE} and checkpoints/) to start fresh")
    old = saved.get("identity", {})
    if old == identity:
        return "done" if saved.get("finished") and has_sae else ("resume" if has_ckpt else "fresh")
    if not has_ckpt and not has_sae:
        return "fresh"  # a run that stopped before its first checkpoint: nothing to keep
    keys = [k for k in dict.fromkeys([*old, *identity]) if old.get(k) != identity.get(k)]
    detail = "; ".join(f"{_FLAGS.get(k, '--' + k)}: {old.get(k)!r} -> {identity.get(k)!r}" for k in keys)
    what = "the finished SAE" if saved.get("finished") and has_sae else "checkpoints"
    raise InputError(f"{out} holds {what} of a different run ({detail}); it cannot be resumed with these settings. "
                     f"Pass another --output_dir, or delete {out} to start fresh")


def _write_run(out: Path, identity: dict, *, finished: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({"format": "saev-curate/sae-run", "identity": identity, "finished": finished},
                              indent=2, sort_keys=True))
    tmp.replace(out / RUN_FILE)


def _check_cache(cache: ActivationCache, config: SaevTrainConfig, layer: int) -> None:
    want = {"layer": layer, "model": config.model_name, "dataset": config.dataset_path}
    got = {"layer": cache.meta.get("layer"), "model": cache.meta.get("model"), "dataset": cache.meta.get("dataset")}
    if want != got:
        raise InputError(f"{cache.path}: activation cache was written for {got}, this run wants {want}; "
                         "use another activation_cache folder or delete this one")

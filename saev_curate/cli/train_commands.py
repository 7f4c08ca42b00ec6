"""`saev-curate train-sae | cache-activations | eval-sae`: SAE-V training and evaluation from the shell."""

from __future__ import annotations

import argparse
import sys

from saev_curate.cli.common import (
    DATA_FORMATS,
    batch_size_arg,
    check_known_flags,
    data_arg,
    layer_arg,
    load_rows,
    max_image_pixels_arg,
    max_length_arg,
    min_usable_share_arg,
    model_arg,
    out_arg,
    positive,
    traceback_arg,
)

MODES = ["prompt", "chosen", "rejected", "full"]


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train-sae", add_help=False, help="train an SAE on a VLM's layer-L activations "
                           "(flags or --config cfg.yaml; --help lists them)")
    train.set_defaults(func=_train, passthrough=True)

    cache = sub.add_parser("cache-activations", help="write one pass of layer-L activations to disk (resumable; "
                           "under torchrun each process writes its own shards)")
    model_arg(cache)
    data_arg(cache, help="dataset: " + DATA_FORMATS)
    out_arg(cache, help="cache folder to write")
    layer_arg(cache, default="middle", help="decoder layer: index, 'middle' (default) or hook name")
    cache.add_argument("--mode", default="full", choices=MODES, help="text shown with the images (default full)")
    cache.add_argument("--max-rows", type=int, help="use only the first N rows")
    cache.add_argument("--max-tokens", type=int, help="stop after N tokens")
    max_length_arg(cache)
    cache.add_argument("--max-image-text-ratio", type=float,
                       help="subsample image tokens to at most this many per text token")
    batch_size_arg(cache)
    cache.add_argument("--dtype", default="float32", help="storage dtype of the cached activations (default float32)")
    cache.add_argument("--shard-rows", type=int, default=64,
                       help="rows per shard: the unit the processes share and a rerun skips (default 64)")
    cache.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1 (default: a GPU when there is one; under torchrun each its own)")
    cache.add_argument("--model-dtype", default=None,
                       help="VLM dtype: float32, bfloat16, float16 (default: float32 on CPU)")
    min_usable_share_arg(cache)
    max_image_pixels_arg(cache)
    traceback_arg(cache)
    cache.set_defaults(func=_cache)

    ev = sub.add_parser("eval-sae", help="L0, explained variance, MSE, dead features and spliced CE, "
                        "per modality; prints a table and writes JSON")
    model_arg(ev)
    ev.add_argument("--sae", required=True, help="SAE folder (SAELens or sparsify layout)")
    data_arg(ev, help="evaluation rows: " + DATA_FORMATS)
    ev.add_argument("--split", help="split of a DatasetDict (default train)")
    layer_arg(ev, default=None, help="decoder layer or hook name (default: the SAE's own hook)")
    ev.add_argument("--mode", default="full", choices=MODES, help="text shown with the images (default full)")
    ev.add_argument("--max-rows", type=int, default=256, help="rows evaluated (default 256)")
    max_length_arg(ev)
    batch_size_arg(ev)
    ev.add_argument("--input-scale", type=float, help="for SAEs saved with an unfolded input scale")
    out_arg(ev, required=False, help="JSON file for the results (default: <sae>/eval.json)")
    min_usable_share_arg(ev)
    max_image_pixels_arg(ev)
    traceback_arg(ev)
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from trl import TrlParser

    from saev_curate.sae.training.config import SaevTrainConfig

    parser = TrlParser((SaevTrainConfig,), prog="saev-curate train-sae",
                       description="Train an SAE on a VLM's layer-L activations (flags or --config cfg.yaml).")
    check_known_flags("train-sae", parser, args.args, extra=("--config",))
    try:
        (config,) = parser.parse_args_and_config(args=args.args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:  # a bad --config file or value
        from saev_curate.core.errors import InputError

        raise InputError(f"train-sae: {exc}; `saev-curate train-sae --help` lists every option") from None
    from saev_curate.core.processes import process_rank
    from saev_curate.sae.training.pipeline import train_sae

    sae = train_sae(config)
    if process_rank()[0] == 0:  # process 0 reports for all
        print(f"saved {sae} to {config.output_dir}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from saev_curate.core.processes import process_device, process_rank
    from saev_curate.sae.training import ActivationCache, ActivationStream, StreamConfig
    from saev_curate.vlm.layers import resolve_layer
    from saev_curate.vlm.load import load_vlm

    for name in ("--max-rows", "--max-tokens", "--max-length", "--batch-size", "--shard-rows"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    dataset = load_rows(args.data)
    model, processor = load_vlm(args.model, dtype=args.model_dtype, device=process_device(args.device))
    if args.max_rows:
        dataset = dataset.select(range(min(args.max_rows, len(dataset))))
    layer = resolve_layer(model, args.layer)
    stream = ActivationStream(model, processor, dataset, StreamConfig(
        layer=layer, mode=args.mode, max_length=args.max_length, model_batch_size=args.batch_size,
        max_image_text_ratio=args.max_image_text_ratio, min_usable_share=args.min_usable_share))
    cache = ActivationCache.write(stream, args.out, shard_rows=args.shard_rows, max_tokens=args.max_tokens,
                                  dtype=args.dtype, metadata={"model": args.model, "dataset": args.data})
    if process_rank()[0] != 0:
        return 0  # process 0 reports for all
    meta = cache.meta
    print(f"wrote {meta['n_tokens']} tokens ({meta['n_image']} image) of layer {layer} in {len(cache.shards)} "
          f"shards to {args.out}; {len(meta['row_errors'])} rows skipped")
    if meta["row_errors"]:
        from saev_curate.core.row_errors import summary_line

        print(f"saev-curate: {summary_line(meta['rows'], meta['row_errors'].values())}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saev_curate.sae.evaluate import evaluate_sae, save_evaluation
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    for name in ("--max-rows", "--max-length", "--batch-size"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    dataset = load_rows(args.data, args.split)
    model, processor = load_vlm(args.model)
    sae = load_sae(args.sae, input_scale=args.input_scale)
    result = evaluate_sae(model, processor, sae, dataset, args.layer, mode=args.mode, batch_size=args.batch_size,
                          max_rows=args.max_rows, max_length=args.max_length, min_usable_share=args.min_usable_share)
    print(result.table())
    out = Path(args.out) if args.out else Path(args.sae) / "eval.json"
    save_evaluation(result, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0

"""`saev-curate train-sae | cache-activations | eval-sae`: SAE-V training and evaluation from the shell."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train-sae", add_help=False, help="train an SAE on a VLM's layer-L activations "
                           "(flags or --config cfg.yaml; --help lists them)")
    train.set_defaults(func=_train, passthrough=True)

    cache = sub.add_parser("cache-activations", help="write one pass of layer-L activations to disk")
    cache.add_argument("--model", required=True, help="local VLM folder")
    cache.add_argument("--dataset", required=True, help="local dataset (save_to_disk folder, parquet, json)")
    cache.add_argument("--output", required=True, help="cache folder to write")
    cache.add_argument("--layer", default="middle", help="index, 'middle', or hook name")
    cache.add_argument("--mode", default="full", choices=["prompt", "chosen", "rejected", "full"])
    cache.add_argument("--max-rows", type=int)
    cache.add_argument("--max-tokens", type=int)
    cache.add_argument("--max-length", type=int)
    cache.add_argument("--max-image-text-ratio", type=float)
    cache.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    cache.add_argument("--dtype", default="float32", help="storage dtype of the cached activations")
    cache.set_defaults(func=_cache)

    ev = sub.add_parser("eval-sae", help="L0, explained variance, MSE, dead features and spliced CE, "
                        "per modality; prints a table and writes JSON")
    ev.add_argument("--model", required=True)
    ev.add_argument("--sae", required=True, help="SAE folder (SAELens or sparsify layout)")
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--split")
    ev.add_argument("--layer", help="default: the SAE's own hook")
    ev.add_argument("--mode", default="full", choices=["prompt", "chosen", "rejected", "full"])
    ev.add_argument("--max-rows", type=int, default=256)
    ev.add_argument("--max-length", type=int)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--input-scale", type=float, help="for SAEs saved with an unfolded input scale")
    ev.add_argument("--output", help="JSON file for the results (default: <sae>/eval.json)")
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from trl import TrlParser

    from saev_curate.training import SaevTrainConfig, train_sae

    parser = TrlParser((SaevTrainConfig,), prog="saev-curate train-sae")
    (config,) = parser.parse_args_and_config(args=args.args)
    sae = train_sae(config)
    print(f"saved {sae} to {config.output_dir}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from saev_curate.data import load_local_dataset
    from saev_curate.stream import ActivationCache, ActivationStream, StreamConfig
    from saev_curate.training import resolve_layer_spec
    from saev_curate.vlm.load import load_vlm

    model, processor = load_vlm(args.model)
    dataset = load_local_dataset(args.dataset)
    if args.max_rows:
        dataset = dataset.select(range(min(args.max_rows, len(dataset))))
    layer = resolve_layer_spec(model, args.layer)
    stream = ActivationStream(model, processor, dataset, StreamConfig(
        layer=layer, mode=args.mode, max_length=args.max_length, model_batch_size=args.batch_size,
        max_image_text_ratio=args.max_image_text_ratio))
    cache = ActivationCache.write(stream, args.output, max_tokens=args.max_tokens, dtype=args.dtype,
                                  metadata={"model": args.model, "dataset": args.dataset})
    meta = cache.meta
    print(f"wrote {meta['n_tokens']} tokens ({meta['n_image']} image) of layer {layer} in {len(cache.shards)} "
          f"shards to {args.output}; {len(meta['row_errors'])} rows skipped")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saev_curate.data import load_local_dataset
    from saev_curate.evaluate import evaluate_sae, save_evaluation
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    model, processor = load_vlm(args.model)
    sae = load_sae(args.sae, input_scale=args.input_scale)
    dataset = load_local_dataset(args.dataset, args.split)
    result = evaluate_sae(model, processor, sae, dataset, args.layer, mode=args.mode, batch_size=args.batch_size,
                          max_rows=args.max_rows, max_length=args.max_length)
    print(result.table())
    out = Path(args.output) if args.output else Path(args.sae) / "eval.json"
    save_evaluation(result, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0

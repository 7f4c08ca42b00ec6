"""`saev-curate fit-weights | score | select`: the SAE-V data filter over local datasets.

Thin: arguments in, calls to the library out. The resumable sharded scoring engine is
:func:`saev_curate.curation.sharded.score_to_disk`; datasets load with
:func:`saev_curate.io.datasets.load_local_dataset`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saev_curate.cli.common import (
    DATA_FORMATS,
    batch_size_arg,
    data_arg,
    layer_arg,
    load_rows,
    max_image_pixels_arg,
    max_length_arg,
    min_usable_share_arg,
    model_arg,
    out_arg,
    parse_layer,
    positive,
    traceback_arg,
)
from saev_curate.core.errors import InputError
from saev_curate.curation.config import DEFAULT_CAPACITY, add_score_args, score_config_from_args


def _capacity(text: str) -> int | None:
    """``--pair-capacity``: an integer >= 2, or 'none' (exact counts)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a capacity: give an integer >= 2 (e.g. 33554432), "
                                         "or 'none' for exact counts")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser("fit-weights", help="fit SAE-V cross-modal feature weights on reference rows")
    _model_args(fit)
    data_arg(fit, help="reference dataset: " + DATA_FORMATS)
    out_arg(fit, help="folder for crossmodal_weights.{safetensors,json}")
    fit.add_argument("--n-reference", type=int, default=1000, help="rows sampled for the fit (default 1000, the paper's)")
    fit.add_argument("--seed", type=int, default=42, help="seed of the reference sample (default 42, the paper's)")
    batch_size_arg(fit)
    fit.add_argument("--top-features-per-token", type=int, default=50,
                     help="features recorded per token (default 50, the paper's)")
    fit.add_argument("--top-tokens-per-feature", type=int, default=30,
                     help="top tokens kept per feature (default 30, the paper's)")
    fit.add_argument("--tokens-per-modality", type=int, default=5,
                     help="text and image tokens per feature compared for omega (default 5, the paper's)")
    fit.add_argument("--pair-capacity", type=_capacity, default=DEFAULT_CAPACITY,
                     help=f"distinct pairs each pair / read-out table keeps (default {DEFAULT_CAPACITY:,}); beyond "
                          "it a lossy count whose worst undercount is saved with the weights. Feature pairs of an SAE "
                          "with d_sae^2 <= 4 x this (d_sae <= 11,585 by default) are counted exactly in a dense table. "
                          "'none': exact at any size, memory growing with the distinct pairs")
    max_length_arg(fit)
    min_usable_share_arg(fit)
    max_image_pixels_arg(fit)
    fit.set_defaults(func=_fit)

    score = sub.add_parser("score", help="add score columns of any methods of the table (resumable, sharded)")
    _model_args(score, sae_required=False)
    score.add_argument("--weights", default=None, help="folder written by fit-weights (with --sae)")
    data_arg(score, help="dataset to score: " + DATA_FORMATS)
    out_arg(score, help="output: a folder (save_to_disk), or a .parquet / .json / .jsonl file")
    score.add_argument("--methods", nargs="+", default=None,
                       help="methods of the table to compute (`saev-curate methods` lists them; default: every "
                            "SAE-V column of one pass and the likelihood columns the data's shape allows; without "
                            "--sae, the methods that need no SAE, e.g. response_perplexity)")
    score.add_argument("--shard-rows", type=int, default=1000, help="rows per resumable shard (default 1000)")
    add_score_args(score)
    min_usable_share_arg(score)
    score.set_defaults(func=_score)

    methods = sub.add_parser("methods", help="list the methods table: columns, which way is cleaner, what each needs")
    methods.set_defaults(func=_methods)

    sel = sub.add_parser("select", help="keep the top rows of a scored dataset")
    data_arg(sel, help="scored dataset: " + DATA_FORMATS)
    out_arg(sel, help="kept rows: a folder (save_to_disk), or a .parquet / .json / .jsonl file")
    sel.add_argument("--by", default=None,
                     help="method of the table (its direction decides: response_perplexity keeps the lowest), any "
                          "numeric column, random, or auto (the default): --check's recommendation for the data's "
                          "shape, else the methods table's")
    sel.add_argument("--check", default=None, help="a `saev-curate check` folder for --by auto")
    group = sel.add_mutually_exclusive_group(required=True)
    group.add_argument("--fraction", type=float, help="keep the top fraction of all rows, e.g. 0.5")
    group.add_argument("--threshold", type=float, help="keep rows whose value is at least this")
    sel.add_argument("--ascending", action="store_true",
                     help="keep the lowest values, whatever the method's direction")
    sel.add_argument("--stratify-by", default=None,
                     help="with --fraction: keep that fraction of each value of this column (a task or source "
                          "column), so the kept rows keep the data's mix")
    sel.add_argument("--seed", type=int, default=0, help="seed for --by random")
    sel.add_argument("--nulls", choices=("drop", "keep", "raise"), default="drop",
                     help="rows without a score: drop them (default), keep them, or fail")
    sel.add_argument("--report", default=None,
                     help="write one keep/drop reason per row here (.jsonl/.json/.parquet/.csv)")
    min_usable_share_arg(sel)
    traceback_arg(sel)
    sel.set_defaults(func=_select)


def _model_args(p: argparse.ArgumentParser, *, sae_required: bool = True) -> None:
    model_arg(p)
    p.add_argument("--sae", required=sae_required, help="SAE folder (SAELens or sparsify layout)")
    if sae_required:
        layer_arg(p, default=None, help="decoder layer or hook name (default: the SAE's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    p.add_argument("--dtype", default=None, help="model dtype: float32, bfloat16, float16 (default: float32 on CPU)")
    traceback_arg(p)



def _fit(args) -> int:
    from saev_curate.core.processes import process_device, process_rank
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.io.datasets import check_distinct_output, check_output_path
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    check_output_path(args.out)
    check_distinct_output(args.data, args.out)
    for name in ("--n-reference", "--batch-size", "--top-features-per-token", "--top-tokens-per-feature",
                 "--tokens-per-modality", "--max-length"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    ds = load_rows(args.data)
    model, processor = load_vlm(args.model, dtype=args.dtype, device=process_device(args.device))
    sae = load_sae(args.sae, device=model.device)
    w = CrossModalWeights.fit(model, processor, sae, ds, parse_layer(args.layer), n_reference=args.n_reference,
                              seed=args.seed, batch_size=args.batch_size,
                              top_features_per_token=args.top_features_per_token,
                              top_tokens_per_feature=args.top_tokens_per_feature,
                              tokens_per_modality=args.tokens_per_modality, max_length=args.max_length,
                              progress=True, min_usable_share=args.min_usable_share,
                              pair_capacity=args.pair_capacity)
    w.meta["model"]["path"] = str(args.model)
    w.meta["sae"]["path"] = str(args.sae)
    if process_rank()[0] == 0:  # under a launcher every process fits the same seeded rows: one writes
        w.save(args.out)
        print(json.dumps(w.summary(), indent=2))
    return 0


def _score(args) -> int:
    from saev_curate.core.processes import process_device, process_rank
    from saev_curate.curation.scorers import MethodScorer
    from saev_curate.curation.sharded import score_to_disk
    from saev_curate.io.datasets import check_distinct_output, check_output_holds, check_output_path

    check_output_path(args.out)
    check_distinct_output(args.data, args.out)
    positive("--shard-rows", args.shard_rows)
    config = score_config_from_args(args)
    if (args.sae is None) != (args.weights is None):
        raise InputError("--sae and --weights go together (the SAE and the cross-modal weights fitted for it); give "
                         "both, or neither to compute methods that need no SAE (--methods response_perplexity)")
    ds = load_rows(args.data)
    check_output_holds(ds, args.out)
    rank, world, _ = process_rank()
    device = process_device(args.device)
    scorer = MethodScorer(args.model, None, args.sae, args.weights, methods=args.methods, config=config,
                          device=device, dtype=args.dtype)
    scorer.methods_for(list(ds.column_names))  # a method the data's shape cannot give fails before any forward
    score_to_disk(scorer, ds, args.out, batch_size=config.score_batch_size, shard_rows=args.shard_rows,
                  rank=rank, world=world, progress=True, min_usable_share=args.min_usable_share)
    return 0


def _methods(args) -> int:
    from saev_curate.curation.methods import table_text

    print(table_text())
    return 0


def _select(args) -> int:
    from saev_curate.curation.selection import select
    from saev_curate.io.datasets import check_distinct_output, check_output_holds, check_output_path, save_dataset

    check_output_path(args.out)
    check_distinct_output(args.data, args.out)
    if args.report:
        check_output_path(args.report, "--report")
        check_distinct_output(args.data, args.report, "--report")
        out, rep = (Path(str(p)).expanduser().resolve() for p in (args.out, args.report))
        if out == rep or out in rep.parents or rep in out.parents:
            raise InputError(f"--report {args.report} is where --out {args.out} writes the kept rows: the report "
                             f"would overwrite them; give the report its own path (e.g. {out.name}-report.jsonl)")
    ds = load_rows(args.data)
    check_output_holds(ds, args.out)
    kept, report = select(ds, args.by, check=args.check, fraction=args.fraction, threshold=args.threshold,
                          descending=False if args.ascending else None, seed=args.seed, nulls=args.nulls,
                          return_report=True, min_usable_share=args.min_usable_share, stratify_by=args.stratify_by)
    save_dataset(kept, args.out)
    if args.report:
        save_dataset(report, args.report)
    print(f"kept {len(kept)} of {len(ds)} rows -> {args.out}", file=sys.stderr)
    return 0

"""`saev-curate patch-filter`: keep the top p% of each image's patches by an SAE feature set, blank the rest;
`saev-curate inspect`: a static, self-contained HTML site of the SAE's features and the rows' explanations.

Thin: arguments in, :func:`saev_curate.inspect.patch_filter.filter_dataset` /
:func:`saev_curate.jobs.inspect.run_inspect` out; datasets load and save with :mod:`saev_curate.io.datasets`.
"""

from __future__ import annotations

import argparse
import sys

from saev_curate.cli.common import (
    DATA_FORMATS,
    batch_size_arg,
    data_arg,
    layer_arg,
    load_rows,
    max_image_pixels_arg,
    min_usable_share_arg,
    model_arg,
    out_arg,
    parse_layer,
    positive,
    positive_int,
    traceback_arg,
)
from saev_curate.vlm.rows.conversations import MODES


def register(sub: argparse._SubParsersAction) -> None:
    _register_patch_filter(sub)
    _register_inspect(sub)


def _register_patch_filter(sub: argparse._SubParsersAction) -> None:
    pf = sub.add_parser("patch-filter", help="keep the top p%% of image patches by an SAE feature set, blank the rest")
    model_arg(pf)
    pf.add_argument("--sae", required=True, help="SAE folder (SAELens or sparsify layout)")
    pf.add_argument("--weights", default=None, help="folder written by fit-weights (needed for --by cross_modal)")
    data_arg(pf, help="dataset whose images to filter: " + DATA_FORMATS)
    out_arg(pf, help="filtered dataset: a folder (save_to_disk), or a .parquet / .json / .jsonl file")
    pf.add_argument("--keep-percent", type=float, required=True,
                    help="share of each image's patches kept, in percent (0 < p <= 100), e.g. 50")
    pf.add_argument("--by", default="l0",
                    help="feature set that ranks the patches: l0 (SAE features firing per patch, the default), "
                         "cross_modal (summed activation of the cross-modal features; needs --weights), "
                         "random, or one feature: feature:123")
    pf.add_argument("--fill", choices=("mean", "processor"), default="mean",
                    help="colour of blanked pixels: the image's mean colour (default) or the processor's image_mean")
    pf.add_argument("--seed", type=int, default=0, help="seed of the random order (--by random, and ties)")
    pf.add_argument("--mode", choices=MODES, default="prompt",
                    help="which text the activations are read with (default: the prompt)")
    layer_arg(pf, default=None, help="decoder layer or hook name (default: the SAE's own)")
    batch_size_arg(pf)
    pf.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    pf.add_argument("--dtype", default=None, help="model dtype: float32, bfloat16, float16 (default: float32 on CPU)")
    min_usable_share_arg(pf)
    max_image_pixels_arg(pf)
    traceback_arg(pf)
    pf.set_defaults(func=_patch_filter)


def _patch_filter(args) -> int:
    from saev_curate.core.row_errors import check_usable
    from saev_curate.inspect.patch_filter import ERROR_COLUMN, check_keep_percent, filter_dataset, parse_by
    from saev_curate.io.datasets import check_distinct_output, check_output_holds, check_output_path, save_dataset
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    check_output_path(args.out)
    check_distinct_output(args.data, args.out)
    check_keep_percent(args.keep_percent)
    by = parse_by(args.by)
    positive("--batch-size", args.batch_size)
    ds = load_rows(args.data)
    check_output_holds(ds, args.out)
    model, processor = load_vlm(args.model, dtype=args.dtype, device=args.device)
    sae = load_sae(args.sae, device=args.device or model.device)
    weights = None
    if args.weights is not None:
        from saev_curate.curation.crossmodal import CrossModalWeights

        weights = CrossModalWeights.load(args.weights)
    out = filter_dataset(model, processor, sae, ds, keep_percent=args.keep_percent, by=by, weights=weights,
                         layer=parse_layer(args.layer), fill=args.fill, seed=args.seed, batch_size=args.batch_size,
                         mode=args.mode)
    check_usable(len(out), out[ERROR_COLUMN], min_usable_share=args.min_usable_share, action="patch-filter",
                 result=out)
    save_dataset(out, args.out)
    print(f"filtered the images of {len(out)} rows (kept {args.keep_percent:g}% of patches by {by}) -> {args.out}",
          file=sys.stderr)
    return 0


def _register_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="write a static feature browser: an index of features, a page per feature "
                                       "(histogram, top rows with image heat maps, logits, pairs) and per row")
    model_arg(p, required=False, help="vision-language model folder (default: the embedded testbed, its cached SAE "
                                      "and held-out rows)")
    p.add_argument("--sae", default=None, help="SAE folder for that model")
    p.add_argument("--weights", default=None, help="cross-modal weights folder (default: fitted on --n-reference rows "
                                                   "of --data, saved to OUT/weights)")
    data_arg(p, help="the rows to inspect: " + DATA_FORMATS, required=False)
    out_arg(p, help="folder for the site (index.html, features/, rows/)", required=False, default="site")
    p.add_argument("--rows", type=positive_int, default=400, help="testbed rows when no --data (default 400)")
    p.add_argument("--architecture", choices=("topk", "standard"), default="topk",
                   help="the testbed SAE when no --sae (default topk)")
    p.add_argument("--top-k", type=positive_int, default=20, help="top rows per feature (default 20)")
    p.add_argument("--sample", type=int, default=20, help="rows per feature sampled for the quantile bands (default 20)")
    p.add_argument("--row-pages", type=int, default=8,
                   help="pages for the N lowest- and N highest-scoring rows (default 8)")
    p.add_argument("--by", default=None, help="method ranking the rows (default: the SAE-V method the table "
                                              "recommends for the data)")
    p.add_argument("--max-features", type=positive_int, default=None,
                   help="pages for the most frequent live features only (default: every live feature)")
    p.add_argument("--n-reference", type=positive_int, default=1000, help="rows for fitting ω when no --weights")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per forward pass (default 32)")
    traceback_arg(p)
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from saev_curate.jobs.inspect import run_inspect

    positive("--sample", args.sample, allow_zero=True)
    positive("--row-pages", args.row_pages, allow_zero=True)
    data = load_rows(args.data) if args.data is not None else None
    r = run_inspect(args.out, model=args.model, sae=args.sae, weights=args.weights, data=data, rows=args.rows,
                    n_reference=args.n_reference, architecture=args.architecture, top_k=args.top_k,
                    sample=args.sample, n_rows=args.row_pages, by=args.by, max_features=args.max_features,
                    batch_size=args.batch_size)
    print(f"{len(r.features)} feature pages, {len(r.rows)} row pages (rows ranked by {r.by}) over {r.n_rows} rows "
          f"in {r.seconds:.0f} s\nsite: {r.index}")
    return 0

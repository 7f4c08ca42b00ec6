"""`saev-curate patch-filter`: keep the top p% of each image's patches by an SAE feature set, blank the rest.

Thin: arguments in, :func:`saev_curate.inspect.patch_filter.filter_dataset` out; datasets load and save with
:mod:`saev_curate.io.datasets`.
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
    traceback_arg,
)
from saev_curate.vlm.rows.conversations import MODES


def register(sub: argparse._SubParsersAction) -> None:
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

"""`saev-curate inspect`: a static, self-contained HTML site of the SAE's features and the rows' explanations."""

from __future__ import annotations

import argparse

from saev_curate.cli.common import DATA_FORMATS, data_arg, model_arg, out_arg, positive_int, traceback_arg


def register(sub: argparse._SubParsersAction) -> None:
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
    from saev_curate.cli.common import load_rows, positive
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

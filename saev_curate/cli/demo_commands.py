"""`saev-curate demo`: the whole curation job on offline digits, ending in an HTML report."""

from __future__ import annotations

import argparse

from saev_curate.cli.common import layer_arg, model_arg, out_arg, traceback_arg


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the whole job offline: model, SAE, weights, scores, selection, report")
    out_arg(demo, required=False, default="saev-demo", help="output folder (default ./saev-demo)")
    model_arg(demo, required=False, help="local VLM folder (default: a tiny LLaVA built locally, random weights)")
    demo.add_argument("--sae", help="SAE folder for that model (default: train a small topk SAE first)")
    demo.add_argument("--rows", type=int, default=400, help="preference rows over real digits (default 400)")
    demo.add_argument("--sae-steps", type=int, default=400, help="training steps of the demo SAE (default 400)")
    demo.add_argument("--n-reference", type=int, default=200, help="reference rows for the weights (default 200)")
    demo.add_argument("--fraction", type=float, default=0.5, help="share of rows kept (default 0.5)")
    layer_arg(demo, default="middle", help="decoder layer when the SAE names none (default middle)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the rows, the model and the SAE (default 0)")
    traceback_arg(demo)
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from saev_curate.demo import run_demo

    r = run_demo(args.out, model=args.model, sae=args.sae, rows=args.rows, sae_steps=args.sae_steps,
                 n_reference=args.n_reference, fraction=args.fraction, layer=args.layer, seed=args.seed)
    print(f"\nscored {r.n_scored}/{r.n_rows} rows; AUC of saev_score for a true claim: {r.auc_matched:.3f} "
          f"(0.5 = chance)\nkept top {args.fraction:.0%}: {r.n_kept} rows, {r.kept_matched_share:.0%} with a true "
          f"claim (all rows: {r.all_matched_share:.0%})\nreport: {r.report}\nselected rows: {r.out_dir / 'selected'}")
    return 0

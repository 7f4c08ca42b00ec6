"""`saev-curate demo`: the main job on the embedded testbed (real images, tagged defects), ending in an HTML report."""

from __future__ import annotations

import argparse

from saev_curate.cli.common import model_arg, out_arg, positive_int, share, traceback_arg


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the main job offline on the testbed: model, SAE, weights, every "
                                       "method's scores, detection AUROC per defect kind, selection, report")
    out_arg(demo, required=False, default="saev-demo", help="output folder (default ./saev-demo)")
    model_arg(demo, required=False, help="local VLM folder (default: the testbed model, built and cached on first use)")
    demo.add_argument("--sae", help="SAE folder for that model (default: train one for the testbed, cached)")
    demo.add_argument("--rows", type=positive_int, default=600,
                      help="preference rows over held-out images (default 600)")
    demo.add_argument("--defect-rate", type=float, default=0.3, help="share of rows with a defect (default 0.3)")
    demo.add_argument("--sae-steps", type=positive_int, default=1000, help="training steps of the SAE, 1024 tokens each (default 1000)")
    demo.add_argument("--architecture", choices=("topk", "standard"), default="topk",
                      help="SAE architecture when one is trained (default topk; standard = the paper preset)")
    demo.add_argument("--n-reference", type=positive_int, default=1000,
                      help="reference rows for the cross-modal weights (default 1000, the paper's)")
    demo.add_argument("--fraction", type=share, default=0.5, help="share of rows kept (default 0.5)")
    demo.add_argument("--by", default=None,
                      help="method to rank by (default: the methods table's recommendation for preference rows; "
                           "`saev-curate methods` lists them)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the rows and the SAE (default 0)")
    traceback_arg(demo)
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from saev_curate.jobs.demo import run_demo

    r = run_demo(args.out, model=args.model, sae=args.sae, rows=args.rows, defect_rate=args.defect_rate,
                 sae_steps=args.sae_steps, architecture=args.architecture, n_reference=args.n_reference,
                 fraction=args.fraction, by=args.by, seed=args.seed)
    kinds = list(next(iter(r.auroc.values())))
    print("\nAUROC of clean rows against each defect kind (1.0 = perfect, 0.5 = chance):")
    print(f"{'method':28s}" + "".join(f"{k[:24]:>26s}" for k in kinds))
    for name, row in r.auroc.items():
        print(f"{name:28s}" + "".join(f"{row[k]:26.3f}" for k in kinds))
    print(f"\nkept top {args.fraction:.0%} by {r.by}: {r.n_kept} rows, {r.kept_defect_share:.0%} defective "
          f"(all rows: {r.all_defect_share:.0%})\nreport: {r.report}\nselected rows: {r.out_dir / 'selected'}\n"
          f"took {r.seconds:.0f} s")
    return 0

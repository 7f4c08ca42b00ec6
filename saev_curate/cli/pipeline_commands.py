"""`saev-curate pipeline`: the whole flow offline on the testbed (score, select, DPO, evaluate) into one report."""

from __future__ import annotations

import argparse

from saev_curate.cli.common import model_arg, out_arg, positive_int, traceback_arg


def _inner_share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a share in (0, 1)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from saev_curate.jobs.pipeline import DEFAULT_SEEDS, default_pipeline_by

    p = sub.add_parser("pipeline", help="the whole flow offline on the testbed: model, SAE, scores, selection, LoRA "
                                        "DPO on the selection / all rows / random rows per seed, the trained "
                                        "policies' hallucinations, one HTML report (a rerun reuses what is cached)")
    out_arg(p, required=False, default="saev-pipeline", help="output folder (default ./saev-pipeline)")
    model_arg(p, required=False, help="local VLM folder (default: the testbed's alignment base, built and cached on "
                                      "first use)")
    p.add_argument("--sae", help="SAE folder for that model (default: train one for the testbed, cached)")
    p.add_argument("--rows", type=positive_int, default=400,
                   help="preference rows over dev-split images to score and train on (default 400)")
    p.add_argument("--defect-rate", type=float, default=0.3, help="share of rows with a defect (default 0.3)")
    p.add_argument("--fraction", type=_inner_share, default=0.5, help="share of rows kept (default 0.5)")
    p.add_argument("--by", nargs="+", default=None,
                   help=f"method(s) to rank by, one selection each (default: {' '.join(default_pipeline_by())}: the "
                        "methods table's recommendations for preference rows, the best SAE-V method and the best "
                        "of any kind; auto: what `saev-curate check` on 200 of the rows measures best on this model)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                   help=f"training seeds: every DPO run once per seed (default {' '.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument("--dpo-steps", type=positive_int, default=80,
                   help="LoRA DPO optimizer steps, the same for every run (default 80)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="DPO batch size (default 8)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="DPO learning rate (default 1e-3)")
    p.add_argument("--sft-weight", type=float, default=1.0,
                   help="weight of the NLL term on the chosen response beside the DPO loss (default 1; 0 = pure DPO)")
    p.add_argument("--n-eval", type=positive_int, default=200, help="held-out images described per policy (default 200)")
    p.add_argument("--eval-per-type", type=positive_int, default=10,
                   help="held-out questions per question type (9 types; default 10)")
    p.add_argument("--sae-steps", type=positive_int, default=1000, help="training steps of the SAE, 1024 tokens each (default 1000)")
    p.add_argument("--architecture", choices=("topk", "standard"), default="topk",
                   help="SAE architecture when one is trained (default topk; standard = the paper preset)")
    p.add_argument("--n-reference", type=positive_int, default=1000,
                   help="reference rows for the cross-modal weights (default 1000, the paper's)")
    traceback_arg(p)
    p.set_defaults(func=_pipeline)


def _pipeline(args: argparse.Namespace) -> int:
    from saev_curate.jobs.pipeline import METRICS, headline, run_pipeline

    r = run_pipeline(args.out, model=args.model, sae=args.sae, rows=args.rows, defect_rate=args.defect_rate,
                     fraction=args.fraction, by=args.by, dpo_steps=args.dpo_steps, batch_size=args.batch_size,
                     learning_rate=args.learning_rate, sft_weight=args.sft_weight, n_eval=args.n_eval,
                     eval_per_type=args.eval_per_type, sae_steps=args.sae_steps, architecture=args.architecture,
                     n_reference=args.n_reference, seeds=args.seeds)
    print(f"\nheld-out scores of each policy (LoRA DPO, {r.steps} steps each; mean over seeds {r.seeds}):")
    print(f"  {'policy':38s} " + " ".join(f"{METRICS[m][0]:>19s}" for m in METRICS) + "  rows")
    for p in r.policies.values():
        share = "" if p.get("defect_share") is None else f", {p['defect_share']:.0%} defective"
        print(f"  {p['label']:38s} " + " ".join(f"{100 * p['mean'][m]:18.1f}%" for m in METRICS)
              + f"  {p['train_rows']}{share}")
    for b in r.by:
        print(headline(r, b))
    kinds = list(next(iter(r.auroc.values())))
    for b in r.by:
        print(f"detection AUROC of {b}: " + ", ".join(f"{k} {r.auroc[b][k]:.2f}" for k in kinds))
    print(f"report: {r.report}\ntook {r.seconds:.0f} s" + (f" (reused: {len(r.reused)} steps)" if r.reused else ""))
    return 0

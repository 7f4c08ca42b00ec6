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
    p = sub.add_parser("pipeline", help="the whole flow offline on the testbed: model, SAE, scores, selection, DPO "
                                        "with LoRA on the selection / all rows / random rows, held-out accuracy, "
                                        "one HTML report (a rerun reuses what is cached)")
    out_arg(p, required=False, default="saev-pipeline", help="output folder (default ./saev-pipeline)")
    model_arg(p, required=False, help="local VLM folder (default: the testbed model, built and cached on first use)")
    p.add_argument("--sae", help="SAE folder for that model (default: train one for the testbed, cached)")
    p.add_argument("--rows", type=positive_int, default=600,
                   help="preference rows over dev-split images to score and train on (default 600)")
    p.add_argument("--defect-rate", type=float, default=0.3, help="share of rows with a defect (default 0.3)")
    p.add_argument("--fraction", type=_inner_share, default=0.5, help="share of rows kept (default 0.5)")
    p.add_argument("--by", default=None, help="method to rank by (default: saev_pair_agreement, as saev-curate demo)")
    p.add_argument("--dpo-steps", type=positive_int, default=60,
                   help="LoRA DPO optimizer steps, the same for every subset (default 60)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="DPO batch size (default 8)")
    p.add_argument("--learning-rate", type=float, default=5e-4, help="DPO learning rate (default 5e-4)")
    p.add_argument("--eval-per-type", type=positive_int, default=30,
                   help="held-out questions per question type (9 types; default 30)")
    p.add_argument("--sae-steps", type=positive_int, default=1000, help="training steps of the SAE, 1024 tokens each (default 1000)")
    p.add_argument("--architecture", choices=("topk", "standard"), default="topk",
                   help="SAE architecture when one is trained (default topk; standard = the paper preset)")
    p.add_argument("--n-reference", type=positive_int, default=1000,
                   help="reference rows for the cross-modal weights (default 1000, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rows, the SAE, DPO and the questions (default 0)")
    traceback_arg(p)
    p.set_defaults(func=_pipeline)


def _pipeline(args: argparse.Namespace) -> int:
    from saev_curate.pipeline import run_pipeline

    r = run_pipeline(args.out, model=args.model, sae=args.sae, rows=args.rows, defect_rate=args.defect_rate,
                     fraction=args.fraction, by=args.by, dpo_steps=args.dpo_steps, batch_size=args.batch_size,
                     learning_rate=args.learning_rate, eval_per_type=args.eval_per_type, sae_steps=args.sae_steps,
                     architecture=args.architecture, n_reference=args.n_reference, seed=args.seed)
    print(f"\nheld-out accuracy (likelihood over the answer options), DPO with LoRA, {r.steps} steps each:")
    full = r.accuracies["full"]["acc"]
    for name in ("selected", "full", "random", "base"):
        a = r.accuracies[name]
        share = "" if a.get("defect_share") is None else f", {a['defect_share']:.0%} defective"
        delta = "" if name == "full" else f"  ({100 * (a['acc'] - full):+.1f} points vs all rows)"
        print(f"  {a['label']:32s} {a['acc']:.3f} ± {a['acc_stderr']:.3f}  [{a['train_rows']} rows{share}]{delta}")
    kinds = list(next(iter(r.auroc.values())))
    row = r.auroc[r.by]
    print(f"detection AUROC of {r.by}: " + ", ".join(f"{k} {row[k]:.2f}" for k in kinds))
    print(f"report: {r.report}\ntook {r.seconds:.0f} s" + (f" (reused: {', '.join(r.reused)})" if r.reused else ""))
    return 0

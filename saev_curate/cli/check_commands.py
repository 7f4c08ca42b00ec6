"""`saev-curate check`: which score works on your model and data (defects planted in your own rows)."""

from __future__ import annotations

import argparse
import json

from saev_curate.cli.common import DATA_FORMATS, data_arg, model_arg, out_arg, positive, traceback_arg
from saev_curate.core.errors import InputError
from saev_curate.curation.config import add_score_args, score_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="plant known defects in a sample of your rows and measure every method on your "
                                     "model: AUROC per method x kind, the recommended --by, a page")
    model_arg(p, required=False, help="vision-language model folder (default: the embedded testbed, with its SAE and "
                                      "clean test-split rows unless --sae / --data are given)")
    p.add_argument("--sae", default=None, help="SAE folder (without one: only the methods that need no SAE)")
    p.add_argument("--weights", default=None,
                   help="cross-modal weights folder (default: fitted on --n-reference rows of --data)")
    data_arg(p, help="your dataset: " + DATA_FORMATS, required=False)
    out_arg(p, help="folder for check.json, report.html and the scored rows", required=False, default="saev-check")
    p.add_argument("--rows", type=int, default=400, help="rows sampled (seeded); each gets one planted copy "
                                                          "(default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the planting and the bootstrap")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to measure (default: every method of the table the data allow)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--n-reference", type=int, default=1000, help="rows for fitting ω when no --weights")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    p.add_argument("--dtype", default=None, help="model dtype (default: float32 on CPU)")
    add_score_args(p)
    traceback_arg(p)
    p.set_defaults(func=_check)


def _check(args) -> int:
    from saev_curate.cli.common import load_rows
    from saev_curate.core.processes import process_device, process_rank
    from saev_curate.io.datasets import check_distinct_output, check_output_path
    from saev_curate.jobs.check import check

    check_output_path(args.out)
    if args.data is not None:
        check_distinct_output(args.data, args.out)
    for name in ("--rows", "--n-reference"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    positive("--bootstrap", args.bootstrap, allow_zero=True)
    config = score_config_from_args(args)
    if args.model is None:  # the embedded default: the testbed model, its SAE, clean held-out rows
        import datasets

        from saev_curate.jobs.detection import testbed_sae
        from saev_curate.testbed import build_testbed
        from saev_curate.testbed.data import defect_rows
        from saev_curate.vlm.load import load_vlm

        args.model = str(build_testbed())
        if args.sae is None:
            args.sae = str(testbed_sae(args.model, *load_vlm(args.model))[1])
        if args.data is None:
            ds = datasets.Dataset.from_list(defect_rows(max(args.rows, 10), defect_rate=0.0, split="test", seed=5))
    elif args.data is None:
        raise InputError("--data: give your dataset (or leave --model out to check the embedded testbed)")
    if args.data is not None:
        ds = load_rows(args.data)
    rank, world, _ = process_rank()
    device = process_device(args.device)
    result = check(args.model, args.sae, args.weights, ds, args.out, n=args.rows, seed=args.seed, methods=args.methods,
                   config=config, n_boot=args.bootstrap, n_reference=args.n_reference,
                   batch_size=config.score_batch_size, device=device, dtype=args.dtype, rank=rank, world=world)
    if result is not None:
        print(json.dumps({"recommended": result.recommended, "check": f"{args.out}/check.json",
                          "report": f"{args.out}/report.html"}, indent=2))
    return 0

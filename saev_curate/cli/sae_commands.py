"""`saev-curate sae ...`: look at SAE checkpoints."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sae = sub.add_parser("sae", help="inspect SAE checkpoints")
    sae_sub = sae.add_subparsers(dest="sae_command", metavar="<sae command>")
    info = sae_sub.add_parser("info", help="print an SAE's architecture, sizes and metadata")
    info.add_argument("path", help="SAE folder (SAELens v6, SAELens pre-6, or sparsify) or hub repo id")
    info.add_argument("--input-scale", type=float, default=None,
                      help="input scale for checkpoints saved with an unfolded 'expected_average_only_in'")
    info.add_argument("--traceback", action="store_true", help="show full Python tracebacks for errors")
    info.set_defaults(func=_info)
    sae.set_defaults(func=lambda args: sae.print_help() or 2)


def _info(args: argparse.Namespace) -> int:
    from saev_curate.sae.io import describe, inspect_checkpoint, load_sae

    info = inspect_checkpoint(args.path)
    sae = load_sae(info.path, input_scale=args.input_scale)
    print(describe(info, sae))
    return 0

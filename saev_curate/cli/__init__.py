"""`saev-curate` console script: one subcommand group per module, heavy imports deferred to the handler."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines `register(subparsers)` adding its subcommands; each subcommand sets `func`.
COMMAND_MODULES = [
    "saev_curate.cli.sae_commands",
    "saev_curate.cli.train_commands",
    "saev_curate.cli.demo_commands",
    "saev_curate.cli.score_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saev-curate",
        description="Curate multimodal alignment data with SAE-V cross-modal features.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):  # commands with their own parser (TrlParser) take the rest
        args.args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # user-facing errors: one clear line, no traceback unless asked
        from saev_curate.errors import SaevError

        if isinstance(exc, SaevError) and not getattr(args, "traceback", False):
            print(f"saev-curate: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

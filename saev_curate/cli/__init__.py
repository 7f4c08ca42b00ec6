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
    "saev_curate.cli.pipeline_commands",
    "saev_curate.cli.score_commands",
    "saev_curate.cli.check_commands",
    "saev_curate.cli.inspect_commands",
]


def _version() -> str:
    """The installed package's version, read from its metadata (importing the package would import torch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saev-curate")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saev-curate",
        description="Curate multimodal alignment data with SAE-V cross-modal features.",
    )
    parser.add_argument("--version", action="version", version=f"saev-curate {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def one_dialect(argv: list[str]) -> list[str]:
    """``--flag_name`` and ``--flag-name`` both work everywhere: long option names are read with hyphens (the
    spelling ``--help`` shows); values, and everything after a bare ``--``, are left as they are. The recipes'
    TrlParser already takes both spellings."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (a bad path, flag, file or data) prints one line naming the problem
    and the fix and returns 1; ``--traceback`` (on any command) shows the Python traceback instead."""
    argv = one_dialect(list(sys.argv[1:] if argv is None else argv))
    want_traceback = "--traceback" in argv
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if getattr(args, "passthrough", False):  # commands with their own parser (TrlParser) take the rest
            args.args = [a for a in rest if a != "--traceback"]
        elif rest:
            from saev_curate.cli.common import check_known_flags

            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
            check_known_flags(args.command, sub, rest)
            sub.error(f"unrecognized arguments: {' '.join(rest)}")  # not a flag: a stray value
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if getattr(args, "max_image_pixels", None) is None:
            return int(args.func(args) or 0)
        from saev_curate.vlm.rows.images import max_image_pixels_set

        with max_image_pixels_set(args.max_image_pixels):  # for this command only
            return int(args.func(args) or 0)
    except Exception as exc:  # user-facing errors: one clear line, no traceback unless asked
        if want_traceback:
            raise
        from saev_curate.core.errors import error_line

        print(f"saev-curate: error: {error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The flag vocabulary shared by every command: ``--data`` (input dataset), ``--out`` (what a command
writes), ``--model``, ``--layer``, ``--batch-size``, ``--max-length``. Older spellings (``--dataset``,
``--output``, ``--output_dir``) stay as aliases for one release."""

from __future__ import annotations

import argparse

DATA_FORMATS = ("a save_to_disk folder, .parquet/.json/.jsonl/.csv files (a file, folder or glob), "
                "or a hub id in the local cache")


def data_arg(p: argparse.ArgumentParser, *, help: str, required: bool = True) -> None:
    p.add_argument("--data", "--dataset", dest="data", required=required, help=help + " (alias: --dataset)")


def out_arg(p: argparse.ArgumentParser, *, help: str, required: bool = True, default: str | None = None) -> None:
    p.add_argument("--out", "--output", dest="out", required=required, default=default,
                   help=help + " (alias: --output)")


def model_arg(p: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    p.add_argument("--model", required=required,
                   help=help or "vision-language model folder (save_pretrained layout) or a cached hub id")


def layer_arg(p: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    p.add_argument("--layer", default=default, help=help)


def batch_size_arg(p: argparse.ArgumentParser, default: int = 8) -> None:
    p.add_argument("--batch-size", type=int, default=default, help=f"rows per forward pass (default {default})")


def max_length_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per row; text is truncated, image tokens never are (default: no limit)")


def traceback_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traceback", action="store_true", help="show full Python tracebacks for errors")


def parse_layer(value):
    """A --layer value: an int when it is one, else the string (a hook name or "middle"); None stays None."""
    if value is None:
        return None
    return int(value) if str(value).lstrip("-").isdigit() else value

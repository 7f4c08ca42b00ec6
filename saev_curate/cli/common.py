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


def min_usable_share_arg(p: argparse.ArgumentParser) -> None:
    from saev_curate.core.row_errors import DEFAULT_MIN_USABLE_SHARE

    p.add_argument("--min-usable-share", type=float, default=None,
                   help="fail when fewer than this share of the rows can be used; the error names the most "
                        f"common row errors (default {DEFAULT_MIN_USABLE_SHARE}; 0: fail only when no row can)")


def max_image_pixels_arg(p: argparse.ArgumentParser) -> None:
    from saev_curate.vlm.rows.images import DEFAULT_MAX_IMAGE_PIXELS

    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="images with more pixels are that row's error, not decoded (decompression bombs; "
                        f"default {DEFAULT_MAX_IMAGE_PIXELS:,})")


def load_rows(path, split: str | None = None):
    """The command's input dataset; an empty one is refused with its path."""
    from saev_curate.io.datasets import load_local_dataset, require_rows

    ds = load_local_dataset(path, split)
    require_rows(ds, path)
    return ds


def positive(name: str, value, *, allow_zero: bool = False) -> None:
    from saev_curate.core.errors import InputError

    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise InputError(f"{name} {value} must be {'at least 0' if allow_zero else 'positive'}")


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def share(text: str) -> float:
    """argparse type: a share in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a share in (0, 1]")
    return value


def check_known_flags(command: str, parser: argparse.ArgumentParser, argv: list[str], extra: tuple[str, ...] = ()) -> None:
    """Unknown flags of ``command`` are one clear error naming the closest known ones and the command's own
    ``--help`` (not the top-level usage, not a traceback)."""
    import difflib

    from saev_curate.core.errors import InputError

    known = {o for a in parser._actions for o in a.option_strings} | {"--help", *extra}
    unknown = [a.split("=", 1)[0] for a in argv if a.startswith("--") and a.split("=", 1)[0] not in known]
    if not unknown:
        return
    hints = []
    for flag in unknown:
        close = difflib.get_close_matches(flag, sorted(known), n=2, cutoff=0.5)
        close = close or [k for k in sorted(known) if flag.strip("-") in k][:2]
        hints.append(f"{flag} (did you mean {' or '.join(close)}?)" if close else flag)
    raise InputError(f"{command}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                     f"`saev-curate {command} --help` lists every option")

"""The one dataset loader of every command and function: local datasets in the formats people keep them.

``load_local_dataset(path, split)`` reads, without touching the network:

* a ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict``: ``split``, default ``"train"``);
* a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, a folder of such files, or a glob
  (``data/*.parquet``); one format per dataset;
* a hub id (``owner/name``) already in the local ``datasets`` cache.

Relative image paths in a data file (an ``image`` string column, or an ``images`` list of strings)
are resolved against the file's folder, not the current directory.

``save_dataset(ds, path)`` writes a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file by the
extension of ``path``, otherwise a ``save_to_disk`` folder.  ``raw_rows(ds, indices)`` reads rows with
``datasets.Image`` values undecoded (``{"bytes", "path"}`` dicts), so the library decodes each image
itself and a corrupt one is that row's error, not the run's.
"""

from __future__ import annotations

import re
from pathlib import Path

from saev_curate.core.errors import InputError

__all__ = ["check_distinct_output", "check_output_holds", "has_image_feature", "load_local_dataset", "raw_rows", "save_dataset"]

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SAVE_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv")
# suffixes that name a file format save_dataset cannot write (instead of silently making a folder)
_FILE_SUFFIXES = (".tsv", ".txt", ".xlsx", ".xls", ".arrow", ".feather", ".pkl", ".pickle", ".npz", ".npy", ".h5",
                  ".hdf5", ".tar", ".zip", ".gz", ".avro", ".orc", ".html", ".md", ".yaml", ".yml")
_FORMATS = "a save_to_disk folder, .parquet/.json/.jsonl/.csv files (a file, a folder or a glob) or a cached hub id"


def load_local_dataset(path: str | Path, split: str | None = None):
    """Open a local dataset (see the module docstring); a DatasetDict gives ``split`` (default 'train')."""
    import datasets

    text = str(path)
    p = Path(text).expanduser()
    if p.is_dir() and any((p / m).exists() for m in _SAVED_MARKERS):
        if _saved_without_rows(p):
            raise InputError(f"{p}: the dataset has no rows (a save_to_disk folder without data files); check "
                             "the filter or split that produced it")
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:  # noqa: BLE001 - a damaged folder: say so, not a datasets traceback
            raise InputError(f"{p}: not a readable save_to_disk dataset ({type(exc).__name__}: {str(exc)[:200]}); "
                             "write it again with Dataset.save_to_disk") from None
    elif p.exists() or "*" in p.name or not _HUB_ID.match(text):
        files = _data_files(p)
        builders = {_BUILDERS[f.suffix] for f in files}
        if len(builders) > 1:
            raise InputError(f"{p}: mixes file types ({', '.join(sorted(builders))}); keep one format per dataset")
        empty = [f for f in files if f.stat().st_size == 0]
        if empty:
            raise InputError(f"{empty[0]}: the file is empty; a dataset needs at least one row")
        try:
            ds = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
        except Exception as exc:  # noqa: BLE001 - unreadable or empty files: one clear line
            raise InputError(f"{p}: could not be read as a dataset ({type(exc).__name__}: {str(exc)[:200]}); "
                             f"expected {_FORMATS}") from None
        ds = _resolve_relative_images(ds, files[0].parent)
    else:
        ds = _from_hub_cache(text, split)
    if isinstance(ds, datasets.DatasetDict):
        want = split or "train"
        if want not in ds:
            raise InputError(f"{p}: has splits {sorted(ds)}, not {want!r}; pass the split to use")
        ds = ds[want]
    elif split not in (None, "train"):
        raise InputError(f"{p}: is a single dataset with no split {split!r}")
    return ds


def _saved_without_rows(p: Path) -> bool:
    """A save_to_disk folder of a 0-row Dataset (``datasets`` cannot load it back: IndexError)."""
    import json

    state = p / "state.json"
    if not state.is_file():
        return False
    try:
        return json.loads(state.read_text()).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def require_rows(ds, path) -> None:
    """Refuse an empty dataset with a message naming it (every command needs rows)."""
    if len(ds) == 0:
        raise InputError(f"{path}: the dataset has no rows; check the path, the split and any filter that "
                         "produced it")


def check_distinct_output(data, out, flag: str = "--out") -> None:
    """Refuse writing a dataset onto the dataset being read (found before the job, not after it)."""
    a, b = Path(str(data)).expanduser().resolve(), Path(str(out)).expanduser().resolve()
    if a == b or a in b.parents:
        raise InputError(f"{flag} {out} is the input dataset (--data {data}); a dataset cannot be overwritten "
                         f"while it is read: write to another path (e.g. {b.name}-out), then move it")


def _data_files(p: Path) -> list[Path]:
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
    elif "*" in p.name:
        files = sorted(p.parent.glob(p.name))
    elif p.exists():
        files = [p]
    else:
        raise InputError(f"{p}: no such file or folder (expected {_FORMATS})")
    found = [f for f in files if f.suffix in _BUILDERS]
    if not found:
        raise InputError(f"{p}: not a dataset; expected {_FORMATS}")
    return found


def _from_hub_cache(repo_id: str, split: str | None):
    import datasets

    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable offline
        raise InputError(f"{repo_id}: not a local path, and not usable as a hub dataset from the local cache "
                         f"({type(exc).__name__}: {str(exc)[:200]}); expected {_FORMATS}") from None


def check_output_path(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output name whose extension is a file format :func:`save_dataset` does not write."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in _FILE_SUFFIXES:
        raise InputError(f"{flag} {path}: cannot write {suffix} files; use .parquet, .json, .jsonl or .csv, or a "
                         "name without an extension for a save_to_disk folder")


def check_output_holds(ds, path: str | Path, flag: str = "--out") -> None:
    """Refuse a text format (``.csv`` / ``.json`` / ``.jsonl``) for a dataset with image columns, before any work:
    CSV would write the image bytes as text, JSON fails on them; Parquet and save_to_disk folders keep them."""
    suffix = Path(str(path)).suffix.lower()
    features = getattr(ds, "features", None) or {}
    images = [name for name, f in features.items() if has_image_feature(f)]
    if suffix in (".csv", ".json", ".jsonl") and images:
        raise InputError(f"{flag} {path}: a {suffix} file cannot hold the image column(s) {images}; write "
                         f"{Path(str(path)).with_suffix('.parquet').name} or a folder (a path without an extension)")


def save_dataset(ds, path: str | Path) -> None:
    """Write ``ds`` to a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, or (a name without one of
    those extensions) a save_to_disk folder; other file extensions (``.tsv``, ``.txt``, ...) are refused, and so
    are text formats for image columns (:func:`check_output_holds`)."""
    check_output_path(path)
    check_output_holds(ds, path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _SAVE_SUFFIXES:
        p.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".parquet":
            ds.to_parquet(str(p))
        elif suffix == ".csv":
            ds.to_csv(str(p), index=False)
        else:
            ds.to_json(str(p))
    else:
        ds.save_to_disk(str(p))


# ------------------------------------------------------------------------------------------ images
def has_image_feature(feature) -> bool:
    """Whether a ``datasets`` feature is, or holds, an ``Image``."""
    from datasets import Image

    if isinstance(feature, Image):
        return True
    if isinstance(feature, dict):
        return any(has_image_feature(v) for v in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(has_image_feature(v) for v in feature)
    inner = getattr(feature, "feature", None)
    return inner is not None and has_image_feature(inner)


def raw_rows(ds, indices) -> list[dict]:
    """Rows ``indices`` (a list or a range/slice) of ``ds`` as dicts, with ``datasets.Image`` values left
    undecoded (``{"bytes", "path"}``): :func:`~saev_curate.vlm.rows.images.load_image` decodes them per row."""
    import datasets

    idx = list(range(len(ds))[indices]) if isinstance(indices, slice) else list(indices)
    if isinstance(ds, datasets.Dataset):
        feats = ds.features
        image_cols = [c for c, f in feats.items() if has_image_feature(f)]
        if not image_cols:
            return [ds[i] for i in idx] if len(idx) == 1 else _rows_from_columns(ds[idx], len(idx))
        table = ds.with_format("arrow")[idx]
        rows = _rows_from_columns(ds.select_columns([c for c in ds.column_names if c not in image_cols])[idx],
                                  len(idx)) if len(image_cols) < len(ds.column_names) else [{} for _ in idx]
        raw = {c: table.column(c).to_pylist() for c in image_cols}
        out = []
        for k, row in enumerate(rows):
            full = {c: (raw[c][k] if c in raw else row[c]) for c in ds.column_names}
            out.append(full)
        return out
    return [ds[i] for i in idx]


def _rows_from_columns(batch: dict, n: int) -> list[dict]:
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _resolve_relative_images(ds, base: Path):
    """Relative paths in an ``image`` string column or an ``images`` list-of-strings column, resolved
    against the data file's folder (as a JSONL's author means them), never the current directory."""
    from datasets import Value

    cols = []
    for c in ("image", "images"):
        f = ds.features.get(c)
        inner = getattr(f, "feature", None)
        if (isinstance(f, Value) and f.dtype in ("string", "large_string")) or (
                isinstance(inner, Value) and inner.dtype in ("string", "large_string")):
            cols.append(c)
    if not cols or len(ds) == 0:
        return ds
    base = base.resolve()

    def fix(value):
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str) and value and not value.startswith(("http://", "https://", "/", "~")):
            return str(base / value)
        return value

    def needs(value) -> bool:
        if isinstance(value, list):
            return any(needs(v) for v in value)
        return isinstance(value, str) and bool(value) and not value.startswith(("http://", "https://", "/", "~"))

    if not any(needs(v) for c in cols for v in ds[c]):
        return ds
    return ds.map(lambda row: {c: fix(row[c]) for c in cols}, desc="resolving image paths")

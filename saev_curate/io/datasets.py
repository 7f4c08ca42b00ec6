"""The one dataset loader of every command and function: local datasets in the formats people keep them.

``load_local_dataset(path, split)`` reads, without touching the network:

* a ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict``: ``split``, default ``"train"``);
* a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, a folder of such files, or a glob
  (``data/*.parquet``); one format per dataset;
* a hub id (``owner/name``) already in the local ``datasets`` cache.

Relative image paths in a data file (an ``image`` string column, or an ``images`` list of strings)
are resolved against the file's folder, not the current directory.

``save_dataset(ds, path)`` writes a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file by the
extension of ``path`` (whole or not at all: written beside it, then renamed), otherwise a ``save_to_disk``
folder.

Images in JSON Lines.  A ``datasets.Image`` column (or a list of them) goes to ``.json`` / ``.jsonl`` as
one JSON object per image, the ``datasets.Image`` storage with the bytes in base64::

    {"image": {"bytes": "<base64 of the encoded file, e.g. PNG>", "path": "cat.png"}, ...}

``bytes`` is the image file as stored (not re-encoded; an image kept only as a local path is read and
embedded, so the file is self-contained); ``path`` is the original file name or ``null``.  A missing
image is ``null``.  :func:`load_local_dataset` reads such a column (an object with exactly the keys
``bytes`` and ``path``, or a list of them) back as a ``datasets.Image`` column: the same image bytes and
the same other columns.  An object with ``"bytes": null`` is an image by ``path`` (relative paths resolve
against the file's folder).  CSV cannot hold images: a ``.csv`` output with an image column is refused
(:func:`check_output_holds`), as is an image nested deeper than a list (write ``.parquet`` for those).

``raw_rows(ds, indices)`` reads rows with ``datasets.Image`` values undecoded (``{"bytes", "path"}`` dicts), so
the library decodes each image itself and a corrupt one is that row's error, not the run's.
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
        ds = _resolve_relative_images(_decode_json_images(ds, files[0].parent), files[0].parent)
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
    """Refuse, before any work, an output format that cannot hold the dataset's image columns: ``.csv`` (it would
    write the image bytes as text) and, for an image nested deeper than a list, ``.json`` / ``.jsonl``.  Image
    columns and lists of images go to JSON Lines in base64 (see the module docstring); Parquet and
    save_to_disk folders keep every shape."""
    suffix = Path(str(path)).suffix.lower()
    features = getattr(ds, "features", None) or {}
    images = [name for name, f in features.items() if has_image_feature(f)]
    if suffix == ".csv":
        refused = images
    elif suffix in (".json", ".jsonl"):
        refused = [name for name in images if _image_level(features[name]) is None]
    else:
        refused = []
    if not refused:
        return
    target = Path(str(path))
    if suffix == ".csv":
        raise InputError(f"{flag} {path}: a .csv file cannot hold the image column(s) {refused}; write "
                         f"{target.with_suffix('.parquet').name}, {target.with_suffix('.jsonl').name} (images in "
                         "base64) or a folder (a path without an extension)")
    raise InputError(f"{flag} {path}: a {suffix} file cannot hold the image column(s) {refused} (images nested "
                     f"deeper than a list); write {target.with_suffix('.parquet').name} or a folder (a path "
                     "without an extension)")


def save_dataset(ds, path: str | Path) -> None:
    """Write ``ds`` to a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, or (a name without one of
    those extensions) a save_to_disk folder; other file extensions (``.tsv``, ``.txt``, ...) are refused, and so
    is CSV for image columns (:func:`check_output_holds`).  Image columns go to JSON Lines in base64 (the module
    docstring).  A file is written beside ``path`` and renamed when complete."""
    import os

    check_output_path(path)
    check_output_holds(ds, path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _SAVE_SUFFIXES:
        ds.save_to_disk(str(p))
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        if suffix == ".parquet":
            ds.to_parquet(str(tmp))
        elif suffix == ".csv":
            ds.to_csv(str(tmp), index=False)
        elif any(has_image_feature(f) for f in ds.features.values()):
            _to_json_with_images(ds, tmp)
        else:
            ds.to_json(str(tmp))
        tmp.replace(p)  # a finished file or none: never a half-written one under the name asked for
    finally:
        tmp.unlink(missing_ok=True)


def _image_level(feature) -> int | None:
    """0 for an ``Image`` feature, 1 for a list of them, None for any other shape (JSON Lines holds those two)."""
    from datasets import Image

    if isinstance(feature, Image):
        return 0
    inner = getattr(feature, "feature", None)
    if isinstance(feature, (list, tuple)) and len(feature) == 1:
        inner = feature[0]
    return 1 if isinstance(inner, Image) else None


def _to_json_with_images(ds, path: Path, batch_size: int = 256) -> None:
    """JSON Lines with each image as ``{"bytes": <base64>, "path": ...}`` (the module docstring's encoding);
    the other columns are written by ``datasets`` itself, as :meth:`datasets.Dataset.to_json` writes them."""
    import base64

    import datasets

    feats = ds.features
    levels = {c: _image_level(f) for c, f in feats.items() if has_image_feature(f)}
    as_text = {"bytes": datasets.Value("string"), "path": datasets.Value("string")}
    out_feats = datasets.Features({c: (f if c not in levels else as_text if levels[c] == 0 else
                                       datasets.List(as_text)) for c, f in feats.items()})

    def encode(value):
        if value is None:
            return None
        data, name = value.get("bytes"), value.get("path")
        if data is None and name and Path(name).is_file():
            data = Path(name).read_bytes()  # an image kept by local path: embedded, the file stands alone
        return {"bytes": None if data is None else base64.b64encode(data).decode("ascii"), "path": name}

    with open(path, "wb") as fh:
        for table in ds.with_format("arrow").iter(batch_size=batch_size):  # Image storage: undecoded bytes/path
            batch = table.to_pydict()
            for c, level in levels.items():
                batch[c] = [encode(v) if level == 0 else (None if v is None else [encode(x) for x in v])
                            for v in batch[c]]
            datasets.Dataset.from_dict(batch, features=out_feats).to_json(fh)


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


def _is_image_struct(feature) -> bool:
    """An object with exactly the keys ``bytes`` and ``path``, both text or null: an image as JSON holds it."""
    from datasets import Value

    return (isinstance(feature, dict) and set(feature) == {"bytes", "path"}
            and all(isinstance(v, Value) and v.dtype in ("string", "large_string", "null") for v in feature.values()))


def _decode_json_images(ds, base: Path):
    """Columns in the JSON Lines image encoding (the module docstring) back to ``datasets.Image`` columns:
    base64 bytes decoded; a relative path without bytes resolved against the data file's folder."""
    import base64

    import datasets

    feats = ds.features
    cols = {c: 0 if _is_image_struct(f) else 1 for c, f in feats.items()
            if _is_image_struct(f) or _is_image_struct(getattr(f, "feature", None))}
    if not cols or len(ds) == 0:
        return ds
    base = base.resolve()

    def decode(value):
        if value is None:
            return None
        data, name = value.get("bytes"), value.get("path")
        if data is not None:
            try:
                return {"bytes": base64.b64decode(data, validate=True), "path": name}
            except ValueError:
                raise InputError(f"{base}: the image column's bytes are not base64 (got {data[:20]!r}...); JSON "
                                 "Lines images are {\"bytes\": <base64>, \"path\": ...} objects") from None
        if name and not name.startswith(("http://", "https://", "/", "~")):
            name = str(base / name)
        return {"bytes": None, "path": name}

    def fix(batch):
        return {c: [decode(v) if level == 0 else (None if v is None else [decode(x) for x in v])
                    for v in batch[c]] for c, level in cols.items()}

    new = datasets.Features({c: (f if c not in cols else datasets.Image() if cols[c] == 0 else
                                 datasets.List(datasets.Image())) for c, f in feats.items()})
    return ds.map(fix, batched=True, features=new, desc="decoding images")


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

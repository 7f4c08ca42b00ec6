"""The one dataset loader of every command and function: local datasets in the formats people keep them.

``load_local_dataset(path, split)`` reads, without touching the network:

* a ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict``: ``split``, default ``"train"``);
* a ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, a folder of such files, or a glob
  (``data/*.parquet``); one format per dataset;
* a hub id (``owner/name``) already in the local ``datasets`` cache.

``save_dataset(ds, path)`` writes a ``.parquet`` / ``.json`` / ``.jsonl`` file by the extension of
``path``, otherwise a ``save_to_disk`` folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from saev_curate.errors import InputError

__all__ = ["load_local_dataset", "save_dataset"]

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FORMATS = "a save_to_disk folder, .parquet/.json/.jsonl/.csv files (a file, a folder or a glob) or a cached hub id"


def load_local_dataset(path: str | Path, split: str | None = None):
    """Open a local dataset (see the module docstring); a DatasetDict gives ``split`` (default 'train')."""
    import datasets

    text = str(path)
    p = Path(text).expanduser()
    if p.is_dir() and any((p / m).exists() for m in _SAVED_MARKERS):
        ds = datasets.load_from_disk(str(p))
    elif p.exists() or "*" in p.name or not _HUB_ID.match(text):
        files = _data_files(p)
        builders = {_BUILDERS[f.suffix] for f in files}
        if len(builders) > 1:
            raise InputError(f"{p}: mixes file types ({', '.join(sorted(builders))}); keep one format per dataset")
        ds = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
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


def save_dataset(ds, path: str | Path) -> None:
    """Write ``ds`` to a ``.parquet`` / ``.json`` / ``.jsonl`` file, or (any other name) a save_to_disk folder."""
    p = Path(path)
    if p.suffix == ".parquet":
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(p))
    elif p.suffix in (".json", ".jsonl"):
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(p))
    else:
        ds.save_to_disk(str(p))

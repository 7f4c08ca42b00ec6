"""Local datasets in the formats people keep them: `save_to_disk` folders, parquet, JSON/JSONL, CSV."""

from __future__ import annotations

from pathlib import Path

from saev_curate.errors import InputError

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_local_dataset(path: str | Path, split: str | None = None):
    """Open a local dataset without touching the hub; a DatasetDict gives `split` (default 'train')."""
    import datasets

    p = Path(path).expanduser()
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()
                       or (p / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(p))
    else:
        files = sorted(p.iterdir()) if p.is_dir() else sorted(p.parent.glob(p.name)) if "*" in p.name else [p]
        files = [f for f in files if f.suffix in _BUILDERS]
        if not files:
            if not p.exists() and "*" not in p.name:
                raise InputError(f"{p}: no such file or folder")
            raise InputError(f"{p}: not a dataset; expected a save_to_disk folder or "
                             f"{', '.join(sorted(_BUILDERS))} files")
        builders = {_BUILDERS[f.suffix] for f in files}
        if len(builders) > 1:
            raise InputError(f"{p}: mixes file types ({', '.join(sorted(builders))}); keep one format per dataset")
        ds = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
    if isinstance(ds, datasets.DatasetDict):
        want = split or "train"
        if want not in ds:
            raise InputError(f"{p}: has splits {sorted(ds)}, not {want!r}; pass the split to use")
        ds = ds[want]
    elif split not in (None, "train"):
        raise InputError(f"{p}: is a single dataset with no split {split!r}")
    return ds

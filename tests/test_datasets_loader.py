"""The one dataset loader every command uses: folders, parquet, JSON/JSONL, CSV, globs, splits, clear errors."""

from __future__ import annotations

import json

import datasets
import pytest

from saev_curate.core.errors import InputError
from saev_curate.io.datasets import load_local_dataset, save_dataset


def test_every_local_format(tmp_path):
    ds = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "v": [1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict(train=ds, test=ds.select([0])).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "pq").mkdir()
    ds.select([0, 1]).to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    ds.select([2]).to_parquet(str(tmp_path / "pq" / "part-1.parquet"))
    save_dataset(ds, tmp_path / "rows.jsonl")
    (tmp_path / "rows.json").write_text("\n".join(json.dumps(r) for r in ds))
    ds.to_csv(str(tmp_path / "rows.csv"), index=False)
    for path in ("saved", "dict", "pq", "pq/*.parquet", "pq/part-0.parquet", "rows.jsonl", "rows.json", "rows.csv"):
        got = load_local_dataset(tmp_path / path)
        want = 2 if path == "pq/part-0.parquet" else 3
        assert len(got) == want and got["prompt"][:2] == ["a", "b"], path
    assert len(load_local_dataset(tmp_path / "dict", "test")) == 1
    with pytest.raises(InputError, match="splits"):
        load_local_dataset(tmp_path / "dict", "validation")
    with pytest.raises(InputError, match="no such file"):
        load_local_dataset(tmp_path / "missing")
    (tmp_path / "mixed").mkdir()
    ds.to_csv(str(tmp_path / "mixed" / "a.csv"), index=False)
    ds.to_parquet(str(tmp_path / "mixed" / "b.parquet"))
    with pytest.raises(InputError, match="mixes file types"):
        load_local_dataset(tmp_path / "mixed")
    with pytest.raises(InputError, match="cache"):
        load_local_dataset("nobody/no-such-dataset")

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


# ------------------------------------------------------------------- images in JSON Lines (issue 24, item 1)
def _png(seed: int, size: tuple[int, int] = (5, 4)) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_image_columns_round_trip_through_json_lines(tmp_path, suffix):
    import base64

    import numpy as np
    from PIL import Image

    on_disk = tmp_path / "pictures" / "kept-by-path.png"
    on_disk.parent.mkdir()
    on_disk.write_bytes(_png(9))
    rows = [
        {"prompt": "a", "score": 0.5, "image": {"bytes": _png(1), "path": "one.png"},
         "images": [{"bytes": _png(2), "path": None}, {"bytes": _png(3), "path": None}],
         "chosen": [{"role": "assistant", "content": "yes"}]},
        {"prompt": "b", "score": None, "image": None, "images": [],
         "chosen": [{"role": "assistant", "content": "no"}]},
        {"prompt": "c", "score": -1.25, "image": {"bytes": None, "path": str(on_disk)},
         "images": [{"bytes": _png(4), "path": "four.png"}], "chosen": []},
    ]
    feats = datasets.Features({"prompt": datasets.Value("string"), "score": datasets.Value("float64"),
                               "image": datasets.Image(), "images": datasets.List(datasets.Image()),
                               "chosen": datasets.List({"role": datasets.Value("string"),
                                                        "content": datasets.Value("string")})})
    ds = datasets.Dataset.from_list(rows, features=feats)
    out = tmp_path / f"rows{suffix}"
    save_dataset(ds.select([0, 1, 2]), out)
    on_disk.unlink()  # the file is self-contained: an image kept by path was embedded
    # the documented encoding, read with json alone
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in lines] == ["a", "b", "c"]
    assert base64.b64decode(lines[0]["image"]["bytes"]) == _png(1) and lines[0]["image"]["path"] == "one.png"
    assert [base64.b64decode(x["bytes"]) for x in lines[0]["images"]] == [_png(2), _png(3)]
    assert lines[1]["image"] is None and lines[1]["images"] == []
    assert base64.b64decode(lines[2]["image"]["bytes"]) == _png(9)
    # loaded back: the same rows, images as images
    back = load_local_dataset(out)
    assert back.features["image"] == datasets.Image()
    assert back.features["images"] == datasets.List(datasets.Image())
    assert back["prompt"] == ["a", "b", "c"] and back["score"] == [0.5, None, -1.25]
    assert back["chosen"] == [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}], []]
    raw = back.cast_column("image", datasets.Image(decode=False)).cast_column(
        "images", datasets.List(datasets.Image(decode=False)))
    assert raw[0]["image"]["bytes"] == _png(1) and raw[2]["image"]["bytes"] == _png(9) and raw[1]["image"] is None
    assert [x["bytes"] for x in raw[0]["images"]] == [_png(2), _png(3)] and raw[1]["images"] == []
    assert [x["bytes"] for x in raw[2]["images"]] == [_png(4)]
    import io

    want = np.asarray(Image.open(io.BytesIO(_png(3))))
    assert np.array_equal(np.asarray(back[0]["images"][1]), want)


def test_json_lines_image_by_relative_path_and_bad_base64(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png(5))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "p", "image": {"bytes": None, "path": "imgs/a.png"}})
                                         + "\n")
    back = load_local_dataset(tmp_path / "rows.jsonl")
    assert back.features["image"] == datasets.Image()
    assert back.cast_column("image", datasets.Image(decode=False))[0]["image"]["path"] == str(
        (tmp_path / "imgs" / "a.png").resolve())
    assert back[0]["image"].size == (5, 4)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": {"bytes": "not base64!", "path": None}}) + "\n")
    with pytest.raises(InputError, match="not base64"):
        load_local_dataset(tmp_path / "bad.jsonl")


def test_csv_refuses_image_columns_and_writes_nothing(tmp_path):
    ds = datasets.Dataset.from_list([{"image": {"bytes": _png(1), "path": None}}]).cast_column("image",
                                                                                                 datasets.Image())
    with pytest.raises(InputError, match=r"cannot hold the image column\(s\) \['image'\].*rows\.jsonl"):
        save_dataset(ds, tmp_path / "rows.csv")
    assert list(tmp_path.iterdir()) == []

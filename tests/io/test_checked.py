"""Checked reads of the library's own files (saev_curate.io.checked): what safetensors/json wrote comes back
unchanged, and every damaged file is one CheckpointError naming the file, the problem and the fix, never a
traceback from deep inside a parser and never an unpickled object."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from saev_curate.core.errors import CheckpointError
from saev_curate.io.checked import check_tensors, looks_like_pickle, read_json_object, read_safetensors

FIX = "re-run fit-weights"


class _Trap:
    """Unpickling it creates a file: proof that a reader unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_round_trips_of_what_safetensors_and_json_wrote(tmp_path):
    tensors = {"omega": torch.linspace(-1, 1, 7), "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "half": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    back = read_safetensors(tmp_path / "w.safetensors", fix=FIX)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    doc = {"d_sae": 64, "classes": ["image", "text"], "nested": {"delta": 1.0, "none": None}}
    (tmp_path / "meta.json").write_text(json.dumps(doc))
    assert read_json_object(tmp_path / "meta.json", fix=FIX) == doc


def _error(fn, *args, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args, **kw)
    return str(info.value)


def test_a_missing_or_damaged_json_is_named_with_the_fix(tmp_path):
    path = tmp_path / "meta.json"
    msg = _error(read_json_object, path, fix=FIX)
    assert msg == f"{path}: missing; {FIX}"
    path.write_text('{"d_sae": 64,')  # truncated
    msg = _error(read_json_object, path, fix=FIX)
    assert msg.startswith(f"{path}: not readable JSON") and "damaged" in msg and msg.endswith(FIX)
    path.write_bytes(b"\xff\xfe\x00garbage")  # not text at all
    assert _error(read_json_object, path, fix=FIX).startswith(f"{path}: not readable JSON")
    path.write_text("[1, 2]")  # valid JSON, not an object
    assert _error(read_json_object, path, fix=FIX) == f"{path}: expected a JSON object, found list; {FIX}"


def test_a_pickle_under_a_safetensors_name_is_named_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    for how, path in (("torch.save", tmp_path / "a.safetensors"), ("pickle", tmp_path / "b.safetensors")):
        if how == "torch.save":
            torch.save({"w": torch.ones(2), "trap": _Trap(marker)}, path)
            assert looks_like_pickle(path) == "a torch.save (zip of pickles) file"
        else:
            path.write_bytes(pickle.dumps(_Trap(marker), protocol=4))
            assert looks_like_pickle(path) == "a Python pickle"
        msg = _error(read_safetensors, path, fix=FIX)
        assert msg.startswith(f"{path}: looks like {looks_like_pickle(path)}, not safetensors") and msg.endswith(FIX)
        assert "pickles are never loaded" in msg
    assert not marker.exists()  # neither file was unpickled
    save_file({"w": torch.ones(2)}, str(tmp_path / "real.safetensors"))
    assert looks_like_pickle(tmp_path / "real.safetensors") is None
    assert looks_like_pickle(tmp_path / "absent") is None


def test_a_missing_truncated_or_empty_safetensors_file_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    assert _error(read_safetensors, path, fix=FIX) == f"{path}: missing; {FIX}"
    save_file({"w": torch.randn(100, 10)}, str(path))
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"\x00" * 16):
        path.write_bytes(damaged)
        msg = _error(read_safetensors, path, fix=FIX)
        assert msg.startswith(f"{path}: not a readable safetensors file (") and msg.endswith(FIX), msg
    (tmp_path / "folder.safetensors").mkdir()  # a folder under the file's name
    assert _error(read_safetensors, tmp_path / "folder.safetensors", fix=FIX).endswith(f"missing; {FIX}")


def test_check_tensors_names_the_first_broken_rule(tmp_path):
    good = {"omega": torch.zeros(5), "pairs": torch.zeros(5, 2), "extra": torch.zeros(3)}
    rules = {"required": {"omega": 1}, "optional": {"pairs": 2}, "same_first_dim": True, "finite": ("omega",), "fix": FIX}
    check_tensors(tmp_path, good, **rules)  # passes: an unknown tensor beside them is allowed
    check_tensors(tmp_path, {"omega": torch.zeros(5)}, **rules)  # an optional tensor may be absent
    msg = _error(check_tensors, tmp_path, {"pairs": torch.zeros(5, 2)}, **rules)
    assert msg == f"{tmp_path}: missing tensors ['omega'] (has ['pairs']); {FIX}"
    msg = _error(check_tensors, tmp_path, {**good, "pairs": torch.zeros(5)}, **rules)
    assert msg == f"{tmp_path}: tensor 'pairs' has shape (5,), expected 2 dimension(s); {FIX}"
    msg = _error(check_tensors, tmp_path, {**good, "pairs": torch.zeros(4, 2)}, **rules)
    assert msg == f"{tmp_path}: tensor 'pairs' has 4 rows but 'omega' has 5; {FIX}"
    check_tensors(tmp_path, {**good, "pairs": torch.zeros(4, 2)}, **{**rules, "same_first_dim": False})
    for bad in (float("nan"), float("inf"), -float("inf")):
        omega = torch.zeros(5)
        omega[3] = bad
        msg = _error(check_tensors, tmp_path, {**good, "omega": omega}, **rules)
        assert msg == f"{tmp_path}: tensor 'omega' holds NaN/inf values; {FIX}"
    pairs = torch.zeros(5, 2)
    pairs[0, 0] = float("nan")
    check_tensors(tmp_path, {**good, "pairs": pairs}, **rules)  # only the `finite` tensors are checked for NaN

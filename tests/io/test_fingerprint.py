"""Content fingerprints (saev_curate.io.fingerprint) against hashlib over the same bytes: the same content hashes
alike wherever it lives, any change of content, name or place in a folder changes the hash."""

from __future__ import annotations

import hashlib
import shutil

import torch

from saev_curate.io.fingerprint import module_fingerprint, path_fingerprint, sae_fingerprint, tensor_bytes


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:32]


def test_a_file_hashes_its_name_size_and_bytes_and_copies_hash_alike(tmp_path):
    data = bytes(range(256)) * 3
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "w.bin"
    f.write_bytes(data)
    assert path_fingerprint(f) == _sha(b"w.bin:768", data)  # independent: hashlib over the documented stream
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    copy = tmp_path / "b" / "deeper" / "w.bin"
    shutil.copy(f, copy)
    assert path_fingerprint(copy) == path_fingerprint(f) == path_fingerprint(str(f))  # another folder, same hash
    for i in (0, 400, len(data) - 1):  # any one byte changed: another hash
        changed = bytearray(data)
        changed[i] ^= 1
        copy.write_bytes(bytes(changed))
        assert path_fingerprint(copy) != path_fingerprint(f), i
    copy.write_bytes(data + b"\0")  # one byte appended
    assert path_fingerprint(copy) != path_fingerprint(f)


def test_a_folder_hashes_relative_paths_in_sorted_order_and_skips_hidden_files(tmp_path):
    files = {"cfg.json": b'{"d": 4}', "sub/x.safetensors": b"\x01\x02\x03", "b.txt": b""}
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    expected = []
    for rel in sorted(files):  # the same order as sorted Paths here: no name is a prefix of another
        name = rel.split("/")[-1]
        expected += [rel.encode(), f"{name}:{len(files[rel])}".encode(), files[rel]]
    assert path_fingerprint(src) == _sha(*expected)
    dst = tmp_path / "elsewhere" / "copy"
    shutil.copytree(src, dst)
    assert path_fingerprint(dst) == path_fingerprint(src)
    (dst / ".DS_Store").write_bytes(b"junk")  # hidden files are not content
    assert path_fingerprint(dst) == path_fingerprint(src)
    (dst / "sub" / "x.safetensors").rename(dst / "x.safetensors")  # same bytes, another place in the folder
    assert path_fingerprint(dst) != path_fingerprint(src)
    (dst / "x.safetensors").rename(dst / "sub" / "x.safetensors")
    assert path_fingerprint(dst) == path_fingerprint(src)
    (dst / "sub" / "y").write_bytes(b"")  # an empty file added
    assert path_fingerprint(dst) != path_fingerprint(src)


def test_a_large_file_hashes_three_samples_as_documented(tmp_path):
    mib = 1 << 20
    size = 9 * mib  # over the 8 MiB full-hash limit
    data = bytearray(i % 251 for i in range(size))
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(data))
    mid = size // 2
    expected = _sha(f"big.bin:{size}".encode(), bytes(data[:mib]), bytes(data[mid:mid + mib]),
                    bytes(data[size - mib:]))
    assert path_fingerprint(f) == expected
    for i in (5, mid + 10, size - 1):  # inside a sample: another hash
        changed = bytearray(data)
        changed[i] ^= 0xFF
        f.write_bytes(bytes(changed))
        assert path_fingerprint(f) != expected, i
    changed = bytearray(data)
    changed[2 * mib] ^= 0xFF  # between the samples: not read, by design
    f.write_bytes(bytes(changed))
    assert path_fingerprint(f) == expected


def test_a_name_that_is_not_a_local_path_hashes_as_its_string(tmp_path):
    assert path_fingerprint("org/model-7b") == _sha(b"name:org/model-7b")
    assert path_fingerprint("org/model-7b") != path_fingerprint("org/model-13b")


def test_tensor_bytes_are_the_dtype_and_the_raw_little_endian_values():
    t = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    assert tensor_bytes(t) == b"torch.float32" + t.numpy().astype("<f4").tobytes()
    # a strided view hashes as its values, not its storage
    assert tensor_bytes(t.T) == tensor_bytes(t.T.contiguous()) == b"torch.float32" + t.numpy().T.astype("<f4").tobytes()
    # same values, another dtype: other bytes
    assert tensor_bytes(t.double()) != tensor_bytes(t)
    assert tensor_bytes(torch.tensor([1, 2], dtype=torch.int64)) == b"torch.int64" + bytes([1] + [0] * 7 + [2] + [0] * 7)


def test_module_fingerprint_is_hashlib_over_sorted_state_and_ignores_registration_order():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    state = lin.state_dict()
    expected = _sha(*(part for name in sorted(state) for part in (name.encode(), tensor_bytes(state[name]))))
    assert module_fingerprint(lin) == expected

    class AB(torch.nn.Module):
        def __init__(self, first: str):
            super().__init__()
            for name in (first, "b" if first == "a" else "a"):
                self.register_buffer(name, torch.arange(3.0) if name == "a" else torch.ones(2))

    assert module_fingerprint(AB("a")) == module_fingerprint(AB("b"))
    other = torch.nn.Linear(3, 2)
    other.load_state_dict(state)
    assert module_fingerprint(other) == expected  # a copy of the weights
    with torch.no_grad():
        other.bias[1] += 1e-6
    assert module_fingerprint(other) != expected


def test_sae_fingerprint_is_blind_to_float32_vs_bfloat16_but_sees_a_real_change():
    from saev_curate.sae.model import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g).to(torch.bfloat16).float())  # exactly representable in bf16
    fp = sae_fingerprint(sae)
    assert sae_fingerprint(sae.copy().to(torch.bfloat16)) == fp
    nudged = sae.copy()
    with torch.no_grad():
        nudged.W_enc[0, 0] *= 1 + 2 ** -12  # below bfloat16's precision: the same bf16 value
    assert nudged.W_enc[0, 0] != sae.W_enc[0, 0] and sae_fingerprint(nudged) == fp
    with torch.no_grad():
        nudged.W_enc[0, 0] *= 1.5
    assert sae_fingerprint(nudged) != fp
    k5 = SAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=5))
    k5.load_state_dict(sae.state_dict())
    assert sae_fingerprint(k5) != fp  # same weights, another k: another SAE


def test_source_fingerprint_reads_python_source_only(tmp_path, monkeypatch):
    """Two copies of a package hash alike, compiled files and other folders' names aside; one changed line changes it."""
    import importlib
    import sys

    from saev_curate.io.fingerprint import source_fingerprint

    for name in ("a", "b"):
        pkg = tmp_path / name / "pkg_x"
        (pkg / "sub").mkdir(parents=True)
        (pkg / "__init__.py").write_text("X = 1\n")
        (pkg / "sub" / "m.py").write_text("def f():\n    return 2\n")
    (tmp_path / "b" / "pkg_x" / "__pycache__").mkdir()
    (tmp_path / "b" / "pkg_x" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"compiled, with a timestamp")

    def load(root):
        monkeypatch.syspath_prepend(str(root))
        sys.modules.pop("pkg_x", None)
        return importlib.import_module("pkg_x")

    a = source_fingerprint(load(tmp_path / "a"))
    b = source_fingerprint(load(tmp_path / "b"))
    assert a == b and len(a) == 32
    (tmp_path / "b" / "pkg_x" / "sub" / "m.py").write_text("def f():\n    return 3\n")
    changed = source_fingerprint(sys.modules["pkg_x"])
    assert changed != a
    import saev_curate.io as io_package

    assert source_fingerprint(sys.modules["pkg_x"], io_package) not in (a, changed)  # several packages, all read
    sys.modules.pop("pkg_x", None)

"""benchmarks/gpu_check.py: a clean skip without CUDA, and every code path once at toy shapes on CPU."""

from __future__ import annotations

import json

import torch

from benchmarks import gpu_check


def test_skips_cleanly_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [printed[0]] and printed[0].startswith("gpu_check: SKIP no CUDA device")
    result = json.loads(out.read_text())
    assert result["status"] == "skipped" and "no CUDA device" in result["reason"]


def test_cpu_refuses_real_shapes(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "x.json"), "--device", "cpu"]) == 2
    assert not (tmp_path / "x.json").exists()


def _errors(node, path=()):
    if isinstance(node, dict):
        if "error" in node:
            yield "/".join(path), node["error"]
        for key, value in node.items():
            yield from _errors(value, path + (key,))


def test_tiny_run_on_cpu_measures_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--tiny", "--dtypes", "fp32"]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "done"
    assert list(_errors(result)) == []
    sae = result["sae"]["fp32"]
    assert set(sae) == {"topk_256", "standard_256", "topk_512", "standard_512"}
    assert all(v["max_abs_diff_vs_sae_lens"] < 1e-4 and v["ours_vec_per_s"]["median"] > 0 for v in sae.values())
    train = result["train"]["fp32"]["d_sae_256"]
    assert set(train) == {"topk vs sparsify", "standard vs sae-lens", "topk vs sae-lens"}
    assert train["topk vs sparsify"]["ours/sparsify"]["median"] > 0
    # the tiny vision tower: 32 and 64 pixel images in 8-pixel patches give (32/8)^2 and (64/8)^2 image tokens
    for tokens in (16, 64):
        shape = result["vlm"]["fp32"][f"{tokens}_image_tokens"]
        assert shape["rows"]["image_tokens_per_row"] == tokens
        assert shape["capture"]["rows_per_s"]["median"] > 0 and shape["floor_bare_forward"]["peak_gib"] > 0
        for sub in ("standard_512", "topk_512", "standard_256", "topk_256"):
            assert shape[sub]["score"]["rows_per_s"]["median"] > 0, sub
            assert shape[sub]["score"]["first_rows"]["saev_error"] == [None, None], sub
            assert shape[sub]["fit"]["pairs"] is True, sub  # pairs counted by default, as the default scorer reads them

"""A fresh user's SAE-V path through the CLI: cache, train, crash, resume, load, evaluate."""

from __future__ import annotations

import json

import pytest
import torch

from saev_curate import load_sae
from saev_curate.cli import main
from saev_curate.sae.training import trainer as train_module


@pytest.fixture(scope="module")
def local_files(tmp_path_factory, images):
    import datasets

    from saev_curate.testing import save_tiny_vlm

    root = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny_vlm("llava", root / "model")
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                                         {"type": "text", "text": f"what is in picture {i}?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": f"shapes number {i % 5}"}]}],
             "images": [images[i % len(images)]]} for i in range(16)]
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "data"))
    return root, str(model_dir), str(root / "data")


def _train_args(model, data, out, cache):
    return ["train-sae", "--model", model, "--dataset", data, "--layer", "blocks.2.hook_resid_post",
            "--activation_cache", cache, "--output_dir", out, "--architecture", "topk", "--k", "8",
            "--expansion_factor", "4", "--total_steps", "24", "--batch_size", "64", "--checkpoint_every", "8",
            "--lr", "1e-3"]


def test_train_resume_load_and_evaluate_from_the_cli(local_files, monkeypatch, capsys):
    root, model, data = local_files
    cache = str(root / "acts")
    assert main(["cache-activations", "--model", model, "--dataset", data, "--output", cache, "--layer", "2"]) == 0
    assert "rows skipped" in capsys.readouterr().out

    assert main(_train_args(model, data, str(root / "straight"), cache)) == 0
    straight = load_sae(root / "straight")

    # a run killed right after its second checkpoint, then the same command again
    real_save = train_module._save_checkpoint
    saved = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saved.append(args[1])
        if len(saved) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(_train_args(model, data, str(root / "resumed"), cache))
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    assert main(_train_args(model, data, str(root / "resumed"), cache)) == 0
    resumed = load_sae(root / "resumed")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(straight, name), getattr(resumed, name)), name
    assert resumed.cfg.hook_layer == 2 and resumed.cfg.model_name == model and resumed.cfg.dataset_path == data
    assert resumed.cfg.extra["tokens_seen"] == 24 * 64

    assert main(["eval-sae", "--model", model, "--sae", str(root / "resumed"), "--dataset", data,
                 "--max-rows", "8"]) == 0
    table = capsys.readouterr().out
    assert "CE recovered" in table and "image" in table and "text" in table
    result = json.loads((root / "resumed" / "eval.json").read_text())
    assert result["image"]["n_tokens"] > 0 and result["text"]["n_tokens"] > 0
    assert 0 <= result["all"]["dead_fraction"] <= 1


def test_train_cli_yaml_config_and_clear_errors(local_files, tmp_path, capsys):
    root, model, data = local_files
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {model}\ndataset: {data}\nlayer: '1'\noutput_dir: {tmp_path / 'out'}\n"
                   "architecture: standard\nexpansion_factor: 2\ntotal_steps: 6\nbatch_size: 32\n"
                   "checkpoint_every: 0\nbuffer_tokens: 128\n")
    assert main(["train-sae", "--config", str(cfg)]) == 0
    assert load_sae(tmp_path / "out").cfg.hook_layer == 1
    assert main(["train-sae", "--config", str(cfg), "--layer", "40"]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(["train-sae", "--config", str(cfg), "--dataset", str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err

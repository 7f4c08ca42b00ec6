"""Every broken checkpoint gives an error that names the file and the problem."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from saev_curate import SAE, SAEConfig, load_sae
from saev_curate.cli import main as cli_main
from saev_curate.core.errors import CheckpointError


@pytest.fixture
def saved(tmp_path):
    sae = SAE.init_paper(SAEConfig(d_in=8, d_sae=32, hook_name="blocks.2.hook_resid_post"), seed=0)
    sae.save(tmp_path / "sae")
    return tmp_path / "sae"


def _edit_cfg(path, **updates):
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(updates)
    (path / "cfg.json").write_text(json.dumps(cfg))


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"no_such_dir: no such file or folder"):
        load_sae(tmp_path / "no_such_dir")


def test_missing_cfg(saved):
    (saved / "cfg.json").unlink()
    with pytest.raises(CheckpointError, match=r"cfg\.json: missing"):
        load_sae(saved)


def test_missing_weights(saved):
    (saved / "sae_weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights file.*sae_weights\.safetensors"):
        load_sae(saved)


def test_unreadable_cfg(saved):
    (saved / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cfg\.json: not a readable JSON config"):
        load_sae(saved)


def test_truncated_weights(saved):
    data = (saved / "sae_weights.safetensors").read_bytes()
    (saved / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: not a readable safetensors file"):
        load_sae(saved)


def _rewrite_weights(path, edit):
    """Re-save the folder's tensors after `edit(dict_of_tensors)` changed them in place."""
    sae = load_sae(path)
    tensors = {name: getattr(sae, name).detach().clone() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))


def test_wrong_shape_names_tensor_and_expectation(saved):
    _rewrite_weights(saved, lambda t: t.update(W_enc=t["W_enc"].T))
    with pytest.raises(CheckpointError, match=r"tensor W_enc has shape \[32, 8\], expected \[8, 32\].*transposed"):
        load_sae(saved)


def test_wrong_names_listed(saved):
    _rewrite_weights(saved, lambda t: t.update(encoder=t.pop("W_enc")))
    with pytest.raises(CheckpointError, match=r"missing \['W_enc'\], unexpected \['encoder'\]"):
        load_sae(saved)


def test_jumprelu_without_threshold(saved):
    _edit_cfg(saved, architecture="jumprelu")
    with pytest.raises(CheckpointError, match=r"missing \['threshold'\]"):
        load_sae(saved)


def test_unknown_architecture(saved):
    _edit_cfg(saved, architecture="gated")
    with pytest.raises(CheckpointError, match=r"cfg\.json: architecture 'gated' is not supported"):
        load_sae(saved)


def test_topk_without_k(saved):
    _edit_cfg(saved, architecture="topk")
    with pytest.raises(CheckpointError, match=r"cfg\.json: .*topk SAE needs an integer k"):
        load_sae(saved)


def test_nan_in_weights(saved):
    def poison(t):
        t["W_dec"][3, 1] = float("nan")
        t["W_dec"][4, 0] = float("inf")

    _rewrite_weights(saved, poison)
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: tensor W_dec holds 2 NaN/inf values"):
        load_sae(saved)


def test_pickle_folder_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    # a pickle whose loading would run code: it must never be opened as a pickle
    (folder / "sae.pt").write_bytes(pickle.dumps({"W_enc": [1, 2]}))
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 32, "architecture": "standard"}))

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(CheckpointError, match=r"sae\.pt: a pickled checkpoint; saev-curate never unpickles"):
        load_sae(folder)
    with pytest.raises(CheckpointError, match=r"sae\.pt: a pickled checkpoint"):
        load_sae(folder / "sae.pt")


def test_unsupported_normalization(saved):
    _edit_cfg(saved, normalize_activations="layer_norm")
    with pytest.raises(CheckpointError, match=r"normalize_activations='layer_norm' is not supported"):
        load_sae(saved)


def test_hub_id_offline_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"not a local folder, and fetching it as a hub repo failed"):
        load_sae("someone/some-sae/layer_16")


def test_cli_info_prints_summary_and_errors_cleanly(saved, capsys):
    assert cli_main(["sae", "info", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "standard" in out and "8 x 32" in out and "blocks.2.hook_resid_post (layer 2)" in out
    (saved / "cfg.json").unlink()
    assert cli_main(["sae", "info", str(saved)]) == 1
    assert "cfg.json: missing" in capsys.readouterr().err

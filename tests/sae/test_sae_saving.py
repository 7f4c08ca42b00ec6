"""Writing the SAELens v6 layout (saev_curate.sae.saving), read back with safetensors and json directly (names,
shapes, dtypes, values, config keys) and through the library's loader."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saev_curate.sae.io import load_sae
from saev_curate.sae.model import SAE, SAEConfig
from saev_curate.sae.saving import is_v6, save_sae

D_IN, D_SAE = 6, 10


def _sae(arch: str, *, seed: int = 0, **kw) -> SAE:
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=3 if arch == "topk" else None,
                    model_name="tiny-llava", hook_name="blocks.3.hook_resid_post", hook_layer=3, context_size=64,
                    dataset_path="local/prefs", **kw)
    sae = SAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return sae


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_the_folder_holds_the_saelens_files_names_shapes_and_values(tmp_path, arch):
    sae = _sae(arch, apply_b_dec_to_input=True, extra={"tokens_seen": 1234, "notes": "run 7"})
    assert save_sae(sae, tmp_path / "out") == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    tensors = load_file(str(tmp_path / "out" / "sae_weights.safetensors"))
    shapes = {"W_enc": (D_IN, D_SAE), "b_enc": (D_SAE,), "W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)}
    if arch == "jumprelu":
        shapes["threshold"] = (D_SAE,)
    assert {n: tuple(t.shape) for n, t in tensors.items()} == shapes
    for name, t in tensors.items():
        assert t.dtype == torch.float32 and torch.equal(t, getattr(sae, name).detach()), name
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    expected = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
                "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
                "metadata": {"tokens_seen": 1234, "notes": "run 7", "model_name": "tiny-llava",
                             "hook_name": "blocks.3.hook_resid_post", "hook_layer": 3, "context_size": 64,
                             "dataset_path": "local/prefs", "sae_lens_version": "6.0.0",
                             "sae_lens_training_version": None}}
    if arch == "topk":
        expected.update(k=3, rescale_acts_by_decoder_norm=False)
    assert cfg == expected

    back = load_sae(tmp_path / "out")  # and through the library: the same SAE
    assert back.cfg.architecture == arch and back.cfg.k == sae.cfg.k and back.cfg.apply_b_dec_to_input
    assert (back.cfg.model_name, back.cfg.hook_layer, back.cfg.context_size) == ("tiny-llava", 3, 64)
    assert back.cfg.extra["tokens_seen"] == 1234 and back.cfg.extra["notes"] == "run 7"
    for name in shapes:
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(back(x), sae(x), rtol=0, atol=0)


def test_sparsity_is_its_own_file_and_a_wrong_shape_is_refused(tmp_path):
    sae = _sae("standard")
    density = torch.linspace(-6, 0, D_SAE, dtype=torch.float64)
    save_sae(sae, tmp_path, sparsity=density)
    stored = load_file(str(tmp_path / "sparsity.safetensors"))
    assert list(stored) == ["sparsity"] and stored["sparsity"].dtype == torch.float32
    assert torch.equal(stored["sparsity"], density.float())
    torch.testing.assert_close(load_sae(tmp_path).sparsity, density.float())
    with pytest.raises(ValueError, match=rf"sparsity must have shape \[{D_SAE}\], got \({D_SAE - 1},\)"):
        save_sae(sae, tmp_path / "bad", sparsity=torch.zeros(D_SAE - 1))
    assert not (tmp_path / "bad").exists()  # refused before writing: no loadable folder without its sparsity


def test_bfloat16_weights_are_stored_as_bfloat16(tmp_path):
    sae = _sae("topk").to(torch.bfloat16)
    save_sae(sae, tmp_path)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "cfg.json").read_text())["dtype"] == "bfloat16"
    assert torch.equal(tensors["W_dec"], sae.W_dec.detach())
    assert load_sae(tmp_path).dtype == torch.bfloat16


def test_an_input_scale_is_folded_into_the_saved_copy_only(tmp_path):
    s = 2.5
    sae = _sae("standard", input_scale=s, apply_b_dec_to_input=True)
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    save_sae(sae, tmp_path)
    assert sae.cfg.input_scale == s and all(torch.equal(p, before[n]) for n, p in sae.named_parameters())
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    # by hand: f = relu((s x - b_dec) W_enc + b_enc) = relu((x - b_dec / s)(s W_enc) + b_enc), and
    # x_hat = (f W_dec + b_dec) / s = f (W_dec / s) + b_dec / s
    torch.testing.assert_close(tensors["W_enc"], before["W_enc"] * s)
    torch.testing.assert_close(tensors["W_dec"], before["W_dec"] / s)
    torch.testing.assert_close(tensors["b_dec"], before["b_dec"] / s)
    assert torch.equal(tensors["b_enc"], before["b_enc"])
    meta = json.loads((tmp_path / "cfg.json").read_text())["metadata"]
    assert meta["folded_input_scale"] == s
    x = torch.randn(5, D_IN)
    with torch.no_grad():
        f = torch.relu((x * s - before["b_dec"]) @ before["W_enc"] + before["b_enc"])
        back = load_sae(tmp_path)
        assert back.cfg.input_scale == 1.0
        torch.testing.assert_close(back.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(x), (f @ before["W_dec"] + before["b_dec"]) / s, rtol=1e-5, atol=1e-5)


def test_the_saelens_version_is_raised_to_6_and_a_newer_one_kept(tmp_path):
    for stored, written in (("3.1.1", "6.0.0"), (None, "6.0.0"), ("6.4.2", "6.4.2"), ("10.0", "10.0")):
        save_sae(_sae("standard", extra={"sae_lens_version": stored}), tmp_path / str(stored))
        meta = json.loads((tmp_path / str(stored) / "cfg.json").read_text())["metadata"]
        assert meta["sae_lens_version"] == written, stored
    assert [is_v6(v) for v in ("6", "6.0.0", "12.1", "5.99", "v6", "", None)] == [True, True, True, False, False,
                                                                                   False, False]


def test_saving_over_an_older_folder_leaves_no_stale_sparsity(tmp_path):
    save_sae(_sae("standard"), tmp_path, sparsity=torch.zeros(D_SAE))
    wider = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE + 2))
    save_sae(wider, tmp_path)  # a new SAE in the same folder, saved without sparsity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    back = load_sae(tmp_path)
    assert back.cfg.d_sae == D_SAE + 2 and back.sparsity is None

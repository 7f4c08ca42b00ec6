"""Round trips through the real libraries: sae-lens (v6 and pre-6 configs) and EleutherAI sparsify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from saev_curate import SAE, SAEConfig, load_sae

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

D_IN, D_SAE = 24, 96
FIXTURES = Path(__file__).parent / "fixtures"


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            value = torch.randn(param.shape, generator=gen) * 0.3
            if "threshold" in name:
                value = value.abs() * 0.5  # a positive threshold, so it actually gates some features
            param.copy_(value)


def _make_sae_lens(arch: str, **extra):
    cls = {"standard": sae_lens.StandardSAE, "topk": sae_lens.TopKSAE, "jumprelu": sae_lens.JumpReLUSAE}[arch]
    cfg_cls = {"standard": sae_lens.StandardSAEConfig, "topk": sae_lens.TopKSAEConfig,
               "jumprelu": sae_lens.JumpReLUSAEConfig}[arch]
    meta = SAEMetadata(model_name="tiny-llava", hook_name="blocks.3.hook_resid_post", context_size=128,
                       dataset_path="local/obelics-mini")
    theirs = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=meta, **extra))
    _randomize(theirs, seed=hash(arch) % 1000)
    return theirs.eval()


CASES = [
    ("standard", {"apply_b_dec_to_input": True}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 8}),
    ("topk", {"k": 8, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
]


@pytest.mark.parametrize("arch,extra", CASES, ids=[f"{a}-{'-'.join(map(str, e.values()))}" for a, e in CASES])
def test_sae_lens_saved_loads_with_same_outputs(tmp_path, arch, extra):
    theirs = _make_sae_lens(arch, **extra)
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.cfg.architecture == arch
    x = torch.randn(5, 7, D_IN)
    with torch.no_grad():
        f_theirs, f_ours = theirs.encode(x), ours.encode(x)
        torch.testing.assert_close(f_ours, f_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(f_theirs), theirs.decode(f_theirs), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        assert (f_ours != 0).any() and (f_ours == 0).any()  # a real sparse code, not a degenerate one
    assert ours.cfg.model_name == "tiny-llava"
    assert ours.cfg.hook_name == "blocks.3.hook_resid_post" and ours.cfg.hook_layer == 3
    assert ours.cfg.context_size == 128 and ours.cfg.dataset_path == "local/obelics-mini"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("b_dec_in", [False, True])
def test_ours_saved_loads_in_sae_lens_with_same_outputs(tmp_path, arch, b_dec_in):
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=8 if arch == "topk" else None,
                    apply_b_dec_to_input=b_dec_in, model_name="tiny-llava", hook_name="blocks.3.hook_resid_post",
                    context_size=64, dataset_path="local/obelics-mini", extra={"tokens_seen": 12345})
    ours = SAE(cfg)
    _randomize(ours, seed=7)
    ours.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.architecture() == arch
    x = torch.randn(3, 4, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    assert theirs.cfg.metadata.model_name == "tiny-llava"
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    # and back: metadata survives our own round trip, extra keys included
    again = load_sae(tmp_path)
    assert again.cfg.extra["tokens_seen"] == 12345 and again.cfg.context_size == 64


def test_unfolded_input_scale_is_folded_on_save_and_sae_lens_agrees(tmp_path):
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="standard", input_scale=3.5)
    ours = SAE(cfg)
    _randomize(ours, seed=3)
    x = torch.randn(10, D_IN)
    with torch.no_grad():
        expected_f = torch.relu((x * 3.5) @ ours.W_enc + ours.b_enc)  # hand computation of the scaled SAE
        expected_recon = (expected_f @ ours.W_dec + ours.b_dec) / 3.5
        torch.testing.assert_close(ours.encode(x), expected_f)
        torch.testing.assert_close(ours(x), expected_recon)
    ours.save(tmp_path)
    assert ours.cfg.input_scale == 3.5  # saving folds a copy, never the live SAE
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), expected_f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), expected_recon, atol=1e-5, rtol=1e-5)
    assert load_sae(tmp_path).cfg.extra["folded_input_scale"] == 3.5


# ------------------------------------------------------------------------------------------ pre-6.0 configs
def _write_legacy(tmp_path: Path, cfg_updates: dict, weights: dict[str, torch.Tensor]) -> Path:
    cfg = json.loads((FIXTURES / "sae-v-release-cfg.json").read_text())
    cfg.update(d_in=D_IN, d_sae=D_SAE, device="cpu", **cfg_updates)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(tmp_path / "sae_weights.safetensors"))
    return tmp_path


def _legacy_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.3, "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
            "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.3, "b_dec": torch.randn(D_IN, generator=g)}


def test_sae_v_release_config_needs_input_scale_and_then_matches_hand_computation(tmp_path):
    w = _legacy_weights()
    path = _write_legacy(tmp_path, {}, w)  # the release config: expected_average_only_in, unfolded
    with pytest.raises(Exception, match="input_scale"):
        load_sae(path)
    s = 0.125
    sae = load_sae(path, input_scale=s)
    assert sae.cfg.hook_name == "blocks.16.hook_resid_post" and sae.cfg.hook_layer == 16
    assert sae.cfg.model_name == "llava-hf/llava-v1.6-mistral-7b-hf" and sae.cfg.context_size == 4096
    assert sae.cfg.dataset_path == "obelics100k-tokenized-llava4096_4image"
    assert not sae.cfg.apply_b_dec_to_input
    x = torch.randn(6, D_IN) * 20
    f = torch.relu((x * s) @ w["W_enc"] + w["b_enc"])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), (f @ w["W_dec"] + w["b_dec"]) / s, atol=1e-4, rtol=1e-5)


def test_oldest_key_names_and_finetuning_scale_fold(tmp_path):
    w = _legacy_weights(1)
    ft = torch.rand(D_SAE) + 0.5
    cfg = json.loads((FIXTURES / "sae-v-release-cfg.json").read_text())
    for new, old in [("hook_name", "hook_point"), ("hook_layer", "hook_point_layer"),
                     ("hook_head_index", "hook_point_head_index"), ("activation_fn_str", "activation_fn")]:
        cfg[old] = cfg.pop(new)
    cfg.pop("architecture")
    cfg.update(d_in=D_IN, d_sae=D_SAE, normalize_activations=False, finetuning_scaling_factor=True,
               apply_b_dec_to_input=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file({**w, "scaling_factor": ft}, str(tmp_path / "sae_weights.safetensors"))
    sae = load_sae(tmp_path)
    assert sae.cfg.hook_name == "blocks.16.hook_resid_post" and sae.cfg.hook_layer == 16
    x = torch.randn(4, D_IN)
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), (f * ft) @ w["W_dec"] + w["b_dec"], atol=1e-5, rtol=1e-5)


def test_legacy_topk_config_agrees_with_sae_lens_own_loader(tmp_path):
    w = _legacy_weights(2)
    path = _write_legacy(tmp_path, {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6},
                                    "normalize_activations": "none"}, w)
    ours = load_sae(path)
    theirs = sae_lens.SAE.load_from_disk(path)
    assert ours.cfg.architecture == "topk" and ours.cfg.k == 6
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ sparsify
def test_sparsify_saved_loads_with_same_outputs(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=8))
    _randomize(coder, seed=11)
    folder = tmp_path / "layers.6"
    coder.save_to_disk(folder)
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny-llava", "dataset": "local/mini", "ctx_len": 256}))
    ours = load_sae(folder)
    assert ours.cfg.architecture == "topk" and ours.cfg.k == 8 and ours.cfg.d_sae == D_SAE
    assert ours.cfg.hook_name == "layers.6" and ours.cfg.hook_layer == 6
    assert ours.cfg.model_name == "tiny-llava" and ours.cfg.context_size == 256
    x = torch.randn(10, D_IN)  # sparsify's decoder takes 2-D batches only
    with torch.no_grad():
        top_acts, top_idx, _ = coder.encode(x)
        dense = torch.zeros(10, D_SAE).scatter_(-1, top_idx, top_acts)
        torch.testing.assert_close(ours.encode(x), dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), coder.decode(top_acts, top_idx), atol=1e-5, rtol=1e-5)
    # and what we save from it is a SAELens folder that sae-lens reads with the same outputs
    ours.save(tmp_path / "converted")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "converted")
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)


def test_sparsify_bf16_checkpoint_keeps_its_dtype(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4), dtype=torch.bfloat16)
    _randomize(coder, seed=5)
    coder.save_to_disk(tmp_path / "layers.2")
    sae = load_sae(tmp_path / "layers.2")
    assert sae.dtype == torch.bfloat16 and sae.cfg.dtype == "bfloat16"
    assert load_sae(tmp_path / "layers.2", dtype="float32").dtype == torch.float32
    with pytest.raises(Exception, match="several SAEs.*layers.2"):
        load_sae(tmp_path)

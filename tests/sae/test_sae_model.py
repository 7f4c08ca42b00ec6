"""SAE architectures against hand computations and a dense brute-force reference."""

from __future__ import annotations

import pytest
import torch

from saev_curate import SAE, SAEConfig, estimate_input_scale, load_sae


def _random_sae(arch: str, d_in=16, d_sae=64, k=5, seed=0, **kw) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g).abs() * 0.2 if name == "threshold" else torch.randn(p.shape, generator=g) * 0.3)
    return sae


def _brute_force(sae: SAE, x: torch.Tensor):
    """Per-vector loops over features: the obviously-correct definition of each architecture."""
    W_enc, b_enc, W_dec, b_dec = (t.detach().double() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    codes, recons = [], []
    for v in x.reshape(-1, x.shape[-1]).double():
        v = v * sae.cfg.input_scale
        if sae.cfg.apply_b_dec_to_input:
            v = v - b_dec
        pre = [float(v @ W_enc[:, j] + b_enc[j]) for j in range(sae.cfg.d_sae)]
        if sae.cfg.architecture == "standard":
            f = [max(p, 0.0) for p in pre]
        elif sae.cfg.architecture == "jumprelu":
            f = [p if p > float(sae.threshold[j].detach()) and p > 0 else 0.0 for j, p in enumerate(pre)]
        else:
            keep = sorted(range(len(pre)), key=lambda j: -pre[j])[: sae.cfg.k]
            f = [max(pre[j], 0.0) if j in keep else 0.0 for j in range(len(pre))]
        f = torch.tensor(f, dtype=torch.float64)
        codes.append(f)
        recons.append((f @ W_dec + b_dec) / sae.cfg.input_scale)
    shape = x.shape[:-1]
    return torch.stack(codes).reshape(*shape, -1), torch.stack(recons).reshape(*shape, -1)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("shape", [(16,), (9, 16), (2, 3, 16)])
def test_encode_decode_match_brute_force(arch, shape):
    sae = _random_sae(arch, apply_b_dec_to_input=arch == "jumprelu", input_scale=1.0 if arch != "topk" else 2.0)
    x = torch.randn(*shape)
    code, recon = _brute_force(sae, x)
    with torch.no_grad():
        assert sae.encode(x).shape == (*shape[:-1], 64)
        torch.testing.assert_close(sae.encode(x).double(), code, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x).double(), recon, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)).double(), recon, atol=1e-5, rtol=1e-5)


def test_hand_computed_standard_sae():
    # two features: one reads +x0, one reads -x0; decoder writes them back; b_enc = -0.5 gates small inputs
    cfg = SAEConfig(d_in=2, d_sae=2)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        sae.b_enc.fill_(-0.5)
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [-2.0, 0.0]]))
        sae.b_dec.copy_(torch.tensor([0.0, 1.0]))
        x = torch.tensor([[3.0, 7.0], [-1.0, 0.0], [0.2, 0.0]])
        assert sae.encode(x).tolist() == [[2.5, 0.0], [0.0, 0.5], [0.0, 0.0]]
        assert sae(x).tolist() == [[5.0, 1.0], [-1.0, 1.0], [0.0, 1.0]]


def test_topk_keeps_exactly_k_and_decodes_without_dense_matmul(monkeypatch):
    sae = _random_sae("topk", d_sae=256, k=7)
    x = torch.randn(50, 16) * 5
    with torch.no_grad():
        code = sae.encode(x)
        assert ((code != 0).sum(-1) <= 7).all() and ((code != 0).sum(-1) == 7).float().mean() > 0.9
        dense_ref = code @ sae.W_dec + sae.b_dec

        real_addmm, real_matmul = torch.addmm, torch.matmul

        def guard(real):
            def checked(*args, **kwargs):
                if any(a is sae.W_dec for a in args):
                    raise AssertionError("dense d_sae x d_in decoder product used on the topk path")
                return real(*args, **kwargs)
            return checked

        monkeypatch.setattr(torch, "addmm", guard(real_addmm))
        monkeypatch.setattr(torch, "matmul", guard(real_matmul))
        torch.testing.assert_close(sae(x), dense_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(code), dense_ref, atol=1e-5, rtol=1e-5)


def test_topk_decode_of_an_edited_code_with_more_than_k_features_is_exact():
    sae = _random_sae("topk", k=3)
    code = torch.zeros(4, 64)
    code[:, :10] = torch.rand(4, 10)  # a steering edit: 10 active features, more than k
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(code), code @ sae.W_dec + sae.b_dec, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_low_precision_runs_and_stays_close(arch, dtype):
    sae = _random_sae(arch)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))  # fixed: topk in bf16 may flip a selection
    with torch.no_grad():
        ref = sae(x)
        low = sae.copy().to(dtype)
        assert low.cfg.dtype == str(dtype).removeprefix("torch.")
        out = low(x.to(dtype))
    assert out.dtype == dtype
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, f"{dtype} reconstruction differs from fp32 by {rel:.3f}"


def test_fold_input_scale_keeps_outputs():
    sae = _random_sae("jumprelu", input_scale=0.25, apply_b_dec_to_input=True)
    x = torch.randn(20, 16) * 10
    with torch.no_grad():
        before_f, before = sae.encode(x), sae(x)
        sae.fold_input_scale()
        assert sae.cfg.input_scale == 1.0
        torch.testing.assert_close(sae.encode(x), before_f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), before, atol=1e-5, rtol=1e-5)


def test_estimate_input_scale_gives_norm_sqrt_d():
    x = torch.randn(1000, 64) * 7
    s = estimate_input_scale(x)
    assert abs(float((x * s).norm(dim=-1).mean()) - 8.0) < 1e-3


def test_paper_init():
    sae = SAE.init_paper(SAEConfig(d_in=16, d_sae=64), seed=1)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((64,), 0.1))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert (sae.b_enc == 0).all() and (sae.b_dec == 0).all()
    assert not torch.equal(SAE.init_paper(sae.cfg, seed=2).W_dec, sae.W_dec)


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects inputs \[\.\.\., 16\]"):
        _random_sae("standard").encode(torch.randn(3, 15))


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_sparsity_and_dtype_round_trip(tmp_path, arch):
    sae = _random_sae(arch).to(torch.bfloat16)
    density = torch.linspace(-8, 0, 64)
    sae.save(tmp_path, sparsity=density)
    back = load_sae(tmp_path)
    assert back.dtype == torch.bfloat16
    torch.testing.assert_close(back.sparsity, density)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_cuda_matches_cpu(tmp_path, arch):
    sae = _random_sae(arch)
    x = torch.randn(64, 16)
    with torch.no_grad():
        ref = sae(x)
        sae.save(tmp_path)
        gpu = load_sae(tmp_path, device="cuda")
        torch.testing.assert_close(gpu(x.cuda()).cpu(), ref, atol=1e-4, rtol=1e-4)

"""Sparse TopK autograd functions against plain dense autograd (float64, exact up to rounding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saev_curate.sae import sparse
from saev_curate.sae.sparse import sparse_decode, topk_encode


@pytest.mark.parametrize("chunk", [1 << 24, 7])  # 7 elements forces one k-slot per chunk
@pytest.mark.parametrize("with_aux", [False, True])
def test_gradients_equal_dense_autograd(monkeypatch, chunk, with_aux):
    monkeypatch.setattr(sparse, "_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(9, 6, dtype=torch.float64, generator=g)
    params = [torch.randn(s, dtype=torch.float64, generator=g, requires_grad=True)
              for s in [(6,), (6, 30), (30,), (30, 6)]]  # b_dec (subtracted from input), W_enc, b_enc, W_dec
    dead = torch.arange(30) >= 24

    def loss(encode, decode):
        b_dec, W_enc, b_enc, W_dec = params
        x = x0 - b_dec
        values, indices, pre = encode(x, W_enc, b_enc)
        out = decode(indices, values, W_dec) + b_dec
        total = ((out - x0) ** 2).sum()
        if with_aux:
            av, ai = pre.masked_fill(~dead, -torch.inf).topk(3, dim=-1)
            total = total + (decode(ai, av, W_dec) ** 2).sum()
        return total

    def dense_encode(x, W, b):
        pre = x @ W + b
        v, i = pre.topk(4, dim=-1, sorted=False)
        return v.relu(), i, pre

    def dense_decode(i, v, W):
        return F.embedding_bag(i, W, per_sample_weights=v, mode="sum")

    expected = torch.autograd.grad(loss(dense_encode, dense_decode), params)
    got = torch.autograd.grad(loss(lambda x, W, b: topk_encode(x, W, b, 4), sparse_decode), params)
    for name, e, o in zip(["b_dec", "W_enc", "b_enc", "W_dec"], expected, got):
        torch.testing.assert_close(o, e, atol=1e-10, rtol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("with_aux", [False, True])
def test_bf16_autocast_matches_dense_autograd_and_keeps_fp32_gradients(with_aux):
    """Under bf16 autocast (what sparsify always does on CUDA, and the GPU check's bf16 training), the
    encoder product runs in bf16, the decoder and the gradients in the weights' fp32: the same numbers as
    plain autograd of the same math under the same autocast."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, generator=g)
    params = [torch.randn(s, generator=g, requires_grad=True) for s in [(8, 40), (40,), (40, 8)]]
    dead = torch.arange(40) >= 30

    def loss(encode, decode):
        W_enc, b_enc, W_dec = params
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values, indices, pre = encode(x, W_enc, b_enc)
            out = decode(indices, values, W_dec)
            total = ((out - x) ** 2).sum()
            if with_aux:
                av, ai = pre.masked_fill(~dead, -torch.inf).topk(3, dim=-1)
                total = total + (decode(ai, av, W_dec) ** 2).sum()
        return total

    def dense_encode(x, W, b):
        pre = torch.addmm(b, x, W)  # bf16 under autocast
        v, i = pre.topk(4, dim=-1, sorted=False)
        return v.relu(), i, pre

    def dense_decode(i, v, W):
        return F.embedding_bag(i, W, per_sample_weights=v.float(), mode="sum")

    expected = torch.autograd.grad(loss(dense_encode, dense_decode), params)
    got = torch.autograd.grad(loss(lambda x, W, b: topk_encode(x, W, b, 4), sparse_decode), params)
    for name, e, o in zip(["W_enc", "b_enc", "W_dec"], expected, got):
        assert o.dtype == torch.float32, name
        # the dense reference rounds its products to bf16, ours accumulates in fp32: agree to bf16 precision
        assert float((o - e).norm() / e.norm()) < 1e-2, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_scatter_rows_equals_a_loop(dtype):
    """Both paths (the sparse product for fp32/fp64, chunked index_add_ otherwise) against a plain loop,
    with repeated latents within and across vectors."""
    g = torch.Generator().manual_seed(2)
    indices = torch.randint(0, 6, (5, 4), generator=g)
    weights = torch.randn(5, 4, generator=g).to(dtype)
    rows = torch.randn(5, 3, generator=g).to(dtype)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for n in range(5):
        for s in range(4):
            expected[indices[n, s]] += weights[n, s].double() * rows[n].double()
    target = torch.zeros(6, 3, dtype=dtype)
    sparse._scatter_rows(target, indices, weights, rows)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(target.double(), expected, atol=tol, rtol=tol)

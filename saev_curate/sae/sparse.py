"""TopK encoder and decoder whose backward passes touch only the k selected latents per vector.

A TopK code has k non-zeros out of d_sae, so the gradients of W_enc, b_enc and W_dec are non-zero in
at most k rows per vector: computing them with `index_add_` costs O(N k d_in) instead of the dense
O(N d_sae d_in) that autograd would spend. Work is chunked over the k slots to bound memory.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 24  # temporary [N * slots, d] buffers stay under 64 MiB of fp32


def _slot_chunks(n: int, k: int, d: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, n * d))
    return [(s, min(k, s + step)) for s in range(0, k, step)]


def _scatter_rows(target: Tensor, indices: Tensor, weights: Tensor, rows: Tensor) -> None:
    """target[indices[n, s]] += weights[n, s] * rows[n]  for all n, s.

    In fp32/fp64 this is one sparse x dense product, (latents x vectors, N k non-zeros) @ rows, which
    neither materialises the N k weighted rows nor serialises on repeated latents as `index_add_` does;
    other dtypes take the `index_add_` path, chunked over the k slots.
    """
    n, k = indices.shape
    if rows.dtype in (torch.float32, torch.float64) and target.dtype == rows.dtype:
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)  # by latent, vectors ascending within one: a canonical CSR layout
        crow = torch.zeros(target.shape[0] + 1, dtype=torch.long, device=flat.device)
        torch.cumsum(torch.bincount(flat, minlength=target.shape[0]), 0, out=crow[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            latents_by_vectors = torch.sparse_csr_tensor(crow, order // k, weights.reshape(-1)[order].to(rows.dtype),
                                                         size=(target.shape[0], n), check_invariants=False)
            target.add_(latents_by_vectors @ rows)
        return
    for lo, hi in _slot_chunks(n, k, rows.shape[1]):
        contrib = weights[:, lo:hi, None] * rows[:, None, :]
        target.index_add_(0, indices[:, lo:hi].reshape(-1), contrib.reshape(-1, rows.shape[1]))


class TopKEncode(torch.autograd.Function):
    """(x [N, d_in], W_enc [d_in, d_sae], b_enc) -> ReLU'd top-k values, their indices, and pre-activations.

    The pre-activations are returned for the AuxK loss; a gradient flowing into them (only when
    dead latents exist) takes the dense path, everything else stays sparse. Under autocast the forward
    product runs in the autocast dtype and the gradients are accumulated in the weights' dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int):
        pre = torch.addmm(b_enc, x, W_enc)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        active = values > 0
        ctx.save_for_backward(x, W_enc, indices, active)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(indices)
        return values * active, indices, pre

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_pre):
        x, W_enc, indices, active = ctx.saved_tensors
        d_in, d_sae = W_enc.shape
        grad_x = grad_W = grad_b = None
        grad_W_t = W_enc.new_zeros(d_sae, d_in) if ctx.needs_input_grad[1] else None
        if grad_values is not None:
            g = (grad_values * active).to(W_enc.dtype)
            if ctx.needs_input_grad[0]:
                grad_x = F.embedding_bag(indices, W_enc.T, per_sample_weights=g, mode="sum")
            if grad_W_t is not None:
                _scatter_rows(grad_W_t, indices, g, x)
            if ctx.needs_input_grad[2]:
                grad_b = W_enc.new_zeros(d_sae).index_add_(0, indices.reshape(-1), g.reshape(-1))
        if grad_pre is not None:  # AuxK: a dense gradient, only on steps with dead latents
            grad_pre = grad_pre.to(W_enc.dtype)
            if ctx.needs_input_grad[0]:
                dense_x = grad_pre @ W_enc.T
                grad_x = dense_x if grad_x is None else grad_x + dense_x
            if grad_W_t is not None:
                grad_W_t.add_(grad_pre.T @ x)
            if ctx.needs_input_grad[2]:
                grad_b = grad_pre.sum(0) if grad_b is None else grad_b + grad_pre.sum(0)
        if grad_W_t is not None:
            grad_W = grad_W_t.T
        return grad_x, grad_W, grad_b, None


class SparseDecode(torch.autograd.Function):
    """(indices [N, k], values [N, k], W_dec [d_sae, d_in]) -> sum_s values[n, s] * W_dec[indices[n, s]].

    Computed in W_dec's dtype (values from an autocast encoder are cast to it, as sparsify's decoder does).
    """

    @staticmethod
    def forward(ctx, indices: Tensor, values: Tensor, W_dec: Tensor):
        values = values.to(W_dec.dtype)
        ctx.save_for_backward(indices, values, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        indices, values, W_dec = ctx.saved_tensors
        grad_values = grad_W = None
        if ctx.needs_input_grad[1]:
            # grad_values[n, s] = W_dec[indices[n, s]] . grad_out[n], by embedding_bag's own per-sample-weights
            # backward: fused, ~10x faster on a CPU than gathering the [N, k, d_in] rows for an einsum
            with torch.enable_grad():
                weights = values.detach().requires_grad_()
                out = F.embedding_bag(indices, W_dec.detach(), per_sample_weights=weights, mode="sum")
                (grad_values,) = torch.autograd.grad(out, weights, grad_out)
        if ctx.needs_input_grad[2]:
            grad_W = torch.zeros_like(W_dec)
            _scatter_rows(grad_W, indices, values, grad_out)
        return None, grad_values, grad_W


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    return TopKEncode.apply(x, W_enc, b_enc, k)


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor) -> Tensor:
    return SparseDecode.apply(indices, values, W_dec)

"""Encoding many tokens with bounded memory: the dense code of one token is ``d_sae`` floats, so a row of
2,304 image tokens through a 65k-feature SAE is 600 MB in fp32 (twice that while the pre-activations live).
Everything that encodes a variable number of tokens goes through :func:`encode_chunks`, whose chunks hold at
most :data:`ENCODE_BUDGET` code entries (64 MiB of fp32), and reduces each chunk before taking the next.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator

import torch
from torch import Tensor

from saev_curate.core.devices import module_device

__all__ = ["ENCODE_BUDGET", "chunk_tokens", "encode_chunks", "feature_max", "segment_maxima"]

#: code entries (tokens x d_sae) one encoded chunk may hold: 2^24 = 64 MiB of fp32
ENCODE_BUDGET = 1 << 24


def chunk_tokens(d_sae: int, max_tokens: int | None = None, budget: int | None = None) -> int:
    """Tokens per encoded chunk: ``budget // d_sae`` (at least 1; ``budget`` None: :data:`ENCODE_BUDGET` as it is
    when called), at most ``max_tokens``."""
    n = max(1, int(ENCODE_BUDGET if budget is None else budget) // max(1, int(d_sae)))
    return n if max_tokens is None else max(1, min(n, int(max_tokens)))


def encode_chunks(sae, x: Tensor, *, max_tokens: int | None = None, budget: int | None = None
                  ) -> Iterator[tuple[int, Tensor]]:
    """``(start, sae.encode(x[start:start + n]))`` over ``x [N, d_in]`` in chunks of :func:`chunk_tokens`
    tokens, on the SAE's device, without gradients."""
    dev = module_device(sae)
    step = chunk_tokens(int(sae.cfg.d_sae), max_tokens, budget)
    for s in range(0, x.shape[0], step):
        with torch.no_grad():
            yield s, sae.encode(x[s:s + step].to(dev))


def feature_max(sae, x: Tensor, *, budget: int | None = None) -> Tensor:
    """Each feature's maximum activation over the tokens ``x [N, d_in]`` (N >= 1), as ``sae.encode(x).amax(0)``
    without holding ``[N, d_sae]``."""
    out = None
    for _, z in encode_chunks(sae, x, budget=budget):
        m = z.amax(0)
        out = m if out is None else torch.maximum(out, m)
    if out is None:
        raise ValueError("feature_max needs at least one token")
    return out


@torch.no_grad()
def segment_maxima(sae, x: Tensor, segment: Tensor, n_segments: int, *, max_tokens: int | None = None,
                   budget: int | None = None, each=None) -> tuple[Tensor, Tensor, Tensor]:
    """Encode ``x [N, d_in]`` chunk by chunk and reduce per segment (``segment [N]`` in ``0..n_segments-1``).

    Returns ``(maxima [n_segments, d_sae] float32, active [n_segments] float64, tokens [n_segments] float64)``:
    each feature's maximum activation over the segment's tokens (-inf for an empty segment), the sum over its
    tokens of their number of active (> 0) features, and its token count.  ``each(start, z)`` is called on every
    encoded chunk (a second consumer of the same codes, so nothing is encoded twice).
    """
    dev = module_device(sae)
    d_sae = int(sae.cfg.d_sae)
    maxima = torch.full((n_segments, d_sae), -math.inf, dtype=torch.float32, device=dev)
    active = torch.zeros(n_segments, dtype=torch.float64, device=dev)
    tokens = torch.zeros(n_segments, dtype=torch.float64, device=dev)
    segment = segment.to(dev)
    for s, z in encode_chunks(sae, x, max_tokens=max_tokens, budget=budget):
        z = z.float()
        sg = segment[s:s + z.shape[0]]
        # segment maxima with one segment_reduce over runs of equal segments (index_reduce_(amax) took ~0.6 s per
        # 256 x 65,536 chunk on a CPU, a loop over runs more); a segment in several runs: sort the chunk first
        seg_ids, lengths = torch.unique_consecutive(sg, return_counts=True)
        zs = z
        if len(seg_ids) != len(torch.unique(seg_ids)):
            order = torch.argsort(sg, stable=True)
            zs = z[order]
            seg_ids, lengths = torch.unique_consecutive(sg[order], return_counts=True)
        with warnings.catch_warnings():  # "segment_reduce is in beta"
            warnings.simplefilter("ignore", UserWarning)
            run_max = torch.segment_reduce(zs, "max", lengths=lengths, axis=0)
        maxima[seg_ids] = torch.maximum(maxima[seg_ids], run_max)
        active.index_add_(0, sg, (z > 0).float().sum(-1).double())  # float sum: 4x faster than bool sum on CPU
        tokens.index_add_(0, sg, torch.ones_like(sg, dtype=torch.float64))
        if each is not None:
            each(s, z)
    return maxima, active, tokens

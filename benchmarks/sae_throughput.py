"""Encode+decode throughput of saev_curate.SAE vs sae-lens on identical weights and inputs (CPU).

Runs are interleaved (ours, theirs, ours, theirs, ...) in one process so machine noise hits both
alike; prints median vectors/s and the ratio ours / sae-lens per architecture.
Targets (issue 2): >= 1.0x for standard, >= 1.5x for topk (k=32).

    python benchmarks/sae_throughput.py [--vectors 65536] [--repeats 5] [--batch 4096]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from saev_curate import SAE, SAEConfig, load_sae


def build_pair(arch: str, d_in: int, d_sae: int, k: int, seed: int = 0):
    """Our SAE with random weights, saved and read back by sae-lens: the very same numbers in both."""
    import sae_lens

    ours = SAE.init_paper(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None),
                          seed=seed)
    with torch.no_grad():
        ours.b_enc.normal_(0, 0.01)
        ours.b_dec.normal_(0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save(tmp)
        theirs = sae_lens.SAE.load_from_disk(tmp).eval()
        ours = load_sae(tmp).eval()
    return ours, theirs


def throughput(sae, x: torch.Tensor, batch: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            sae(x[i : i + batch])
        return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.vectors, args.d_in)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.vectors} vectors of {args.d_in} "
          f"-> {args.d_sae} features, batch {args.batch}, {args.repeats} interleaved repeats")
    for arch in ("standard", "topk"):
        ours, theirs = build_pair(arch, args.d_in, args.d_sae, args.k)
        with torch.inference_mode():  # same outputs, or the timing means nothing
            torch.testing.assert_close(ours(x[:256]), theirs(x[:256]), atol=1e-4, rtol=1e-4)
        throughput(ours, x[: args.batch], args.batch)  # warm-up both
        throughput(theirs, x[: args.batch], args.batch)
        ours_runs, theirs_runs, ratios = [], [], []
        for _ in range(args.repeats):
            a = throughput(ours, x, args.batch)
            b = throughput(theirs, x, args.batch)
            ours_runs.append(a)
            theirs_runs.append(b)
            ratios.append(a / b)
        label = f"{arch} (k={args.k})" if arch == "topk" else arch
        print(f"{label:<14} ours {statistics.median(ours_runs):>9,.0f} vec/s   sae-lens "
              f"{statistics.median(theirs_runs):>9,.0f} vec/s   ratio ours/sae-lens: median "
              f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()

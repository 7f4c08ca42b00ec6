"""SAE training throughput: saev-curate vs sae-lens (standard, topk) and vs eai-sparsify (topk), CPU.

All trainers see the same cached activations, width, batch and step count; runs are interleaved
in one process and each is timed from its third step on (warm-up excluded). Prints median
vectors/s and ratios. Targets (issue 5): >= 1.5x sae-lens for topk, >= 1.0x for standard.

    python benchmarks/train_throughput.py [--activations acts.safetensors] [--steps 30] [--repeats 3]

Without --activations it draws a synthetic sparse-plus-dense mixture of the right width (the
throughput of these trainers does not depend on the values); pass a cache file written by
`saev-curate cache-activations` (key "activations") to time on real model activations.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time

import torch

WARMUP = 2


class StepClock:
    """Timestamps each step; throughput from step WARMUP on."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self, *_args) -> None:
        self.times.append(time.perf_counter())

    def vectors_per_s(self, batch: int) -> float:
        t = self.times[WARMUP:]
        return batch * (len(t) - 1) / (t[-1] - t[0])


def batches(acts: torch.Tensor, batch: int, clock: StepClock):
    i = 0
    while True:
        clock.tick()
        start = (i * batch) % (len(acts) - batch)
        yield acts[start : start + batch]
        i += 1


def run_ours(arch: str, acts, args) -> float:
    from saev_curate.sae.training import TrainConfig, train_on_activations

    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(output_dir=tmp, architecture=arch, d_sae=args.d_sae, k=args.k, total_steps=args.steps,
                          batch_size=args.batch, checkpoint_every=None, scale_estimation_batches=1,
                          normalize_decoder=False)  # sae-lens does not renormalise the decoder either
        train_on_activations(cfg, acts, progress=False, on_step=clock.tick)
    return clock.vectors_per_s(args.batch)


def run_sae_lens(arch: str, acts, args) -> float:
    import sae_lens
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = acts.shape[1]
    if arch == "topk":
        sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k))
    else:
        sae = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae,
                                                                              l1_coefficient=5.0))
    clock = StepClock()
    cfg = SAETrainerConfig(total_training_samples=args.steps * args.batch, train_batch_size_samples=args.batch,
                           lr=5e-5, lr_end=5e-6, device="cpu")
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        SAETrainer(cfg, sae, batches(acts, args.batch, clock)).fit()
    return clock.vectors_per_s(args.batch)


def run_sparsify(acts, args) -> float:
    """sparsify's Trainer only hooks live models; this is its per-step work on cached activations."""
    import sparsify

    coder = sparsify.SparseCoder(acts.shape[1], sparsify.SparseCoderConfig(num_latents=args.d_sae, k=args.k))
    opt = torch.optim.Adam(coder.parameters(), lr=5e-5)
    since_fired = torch.zeros(args.d_sae, dtype=torch.long)
    clock = StepClock()
    data = batches(acts, args.batch, clock)
    for _ in range(args.steps):
        x = next(data)
        out = coder(x, dead_mask=since_fired > 1000)
        (out.fvu + out.auxk_loss / 32).backward()
        since_fired += 1
        since_fired[out.latent_indices.flatten()] = 0
        coder.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(coder.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        coder.set_decoder_norm_to_unit_norm()
    clock.tick()
    return clock.vectors_per_s(args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", help="safetensors file with an [N, d_in] tensor 'activations'")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if args.activations:
        from safetensors.torch import load_file

        acts = load_file(args.activations)["activations"].float()
        source = args.activations
    else:
        g = torch.Generator().manual_seed(0)
        n = args.batch * 8
        dictionary = torch.randn(4 * args.d_in, args.d_in, generator=g)
        codes = (torch.rand(n, 4 * args.d_in, generator=g) < 0.01) * torch.rand(n, 4 * args.d_in, generator=g)
        acts = codes @ dictionary + 0.1 * torch.randn(n, args.d_in, generator=g)
        source = "synthetic"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; activations: {source} {tuple(acts.shape)}; "
          f"d_sae {args.d_sae}, k {args.k}, batch {args.batch}, {args.steps} steps, {args.repeats} interleaved repeats")

    runners = {
        "standard": {"ours": lambda: run_ours("standard", acts, args),
                     "sae-lens": lambda: run_sae_lens("standard", acts, args)},
        "topk": {"ours": lambda: run_ours("topk", acts, args), "sae-lens": lambda: run_sae_lens("topk", acts, args),
                 "sparsify": lambda: run_sparsify(acts, args)},
    }
    for arch, contenders in runners.items():
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, run in contenders.items():
                results[name].append(run())
        medians = {name: statistics.median(v) for name, v in results.items()}
        line = "  ".join(f"{name} {value:,.0f} vec/s" for name, value in medians.items())
        print(f"{arch:<9} {line}")
        for other in contenders:
            if other != "ours":
                ratios = [a / b for a, b in zip(results["ours"], results[other])]
                print(f"{'':<9} ours/{other}: median {statistics.median(ratios):.2f}x "
                      f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()

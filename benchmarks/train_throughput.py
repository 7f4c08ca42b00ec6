"""SAE training throughput: saev-curate vs sae-lens (standard, topk) and vs eai-sparsify (topk).

All trainers see the same activations, width, k, batch and step count, on the same device and in one
process (so with the same torch threads; `--threads` sets them). Runs are interleaved, with the order
reversed every other repeat, so a slow moment on a shared machine hits every trainer alike. Each run
times every step; a run's throughput is batch / (its median step time), the first `--warmup` steps
excluded. Printed: median vectors/s over repeats, and per-repeat ratios (median, min, max).

    python benchmarks/train_throughput.py [--against sparsify sae-lens] [--steps 20] [--repeats 7]

Same work per step, trainer by trainer:
  vs sparsify (topk): loss = FVU-scaled MSE + AuxK / 32, the decoder gradient's component along each
    (unit-norm) decoder row removed, grad-norm clip 1.0, Adam, decoder rows renormalised. sparsify's
    Trainer only hooks live models, so its per-step work is replayed here on cached activations with its
    own `SparseCoder` (this is the loop of `sparsify.Trainer.fit`, plus the clip ours does).
    AuxK: no latent can be dead within the timed steps in either (ours: 10M tokens, sparsify here: 1000
    steps), so neither computes it. When latents are dead the two differ by design: sparsify's fused
    encoder drops the AuxK gradient to the encoder (its backward ignores `grad_preacts`); ours keeps it.
  vs sae-lens: its own `SAETrainer` with its default per-step work; ours without decoder
    renormalisation (sae-lens does not renormalise either).

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
from dataclasses import dataclass

import torch


@dataclass
class Setting:
    """What every trainer gets: shapes, steps, device, and whether the forward runs under bf16 autocast."""

    d_sae: int = 8192
    k: int = 32
    batch: int = 4096
    steps: int = 20
    warmup: int = 3
    device: str = "cpu"
    autocast_bf16: bool = False

    def autocast(self):
        """bf16 autocast on the setting's device, or nothing."""
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)


class StepClock:
    """Timestamps each step (synchronising the device first); throughput from the median step time."""

    def __init__(self, device: str) -> None:
        self.times: list[float] = []
        self.cuda = torch.device(device).type == "cuda"

    def tick(self, *_args) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def vectors_per_s(self, batch: int, warmup: int) -> float:
        steps = [b - a for a, b in zip(self.times[warmup:], self.times[warmup + 1:])]
        if not steps:
            raise ValueError(f"no timed steps: raise --steps above --warmup ({warmup})")
        return batch / statistics.median(steps)


def batches(acts: torch.Tensor, batch: int, clock: StepClock | None = None):
    i = 0
    while True:
        if clock is not None:
            clock.tick()
        start = (i * batch) % (len(acts) - batch + 1)
        yield acts[start : start + batch]
        i += 1


def run_ours(arch: str, acts: torch.Tensor, s: Setting, *, normalize_decoder: bool) -> float:
    """saev-curate's own `train_on_activations` (clock ticks after each step)."""
    from saev_curate.sae.training import TrainConfig, train_on_activations

    clock = StepClock(s.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(output_dir=tmp, architecture=arch, d_sae=s.d_sae, k=s.k, total_steps=s.steps,
                          batch_size=s.batch, checkpoint_every=None, scale_estimation_batches=1,
                          normalize_decoder=normalize_decoder, device=s.device)
        clock.tick()
        with s.autocast():
            train_on_activations(cfg, acts, progress=False, on_step=clock.tick)
    return clock.vectors_per_s(s.batch, s.warmup)


def run_sae_lens(arch: str, acts: torch.Tensor, s: Setting) -> float:
    """sae-lens's `SAETrainer.fit` on the same batches (clock ticks as each batch is drawn)."""
    import sae_lens
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = acts.shape[1]
    if arch == "topk":
        sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=s.d_sae, k=s.k,
                                                                      device=s.device))
    else:
        sae = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(d_in=d_in, d_sae=s.d_sae,
                                                                              l1_coefficient=5.0, device=s.device))
    clock = StepClock(s.device)
    cfg = SAETrainerConfig(total_training_samples=s.steps * s.batch, train_batch_size_samples=s.batch,
                           lr=5e-5, lr_end=5e-6, device=s.device, autocast=s.autocast_bf16)
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        SAETrainer(cfg, sae, batches(acts, s.batch, clock)).fit()
    return clock.vectors_per_s(s.batch, s.warmup)


def run_sparsify(acts: torch.Tensor, s: Setting) -> float:
    """sparsify's per-step work (`Trainer.fit`'s loop) with its own SparseCoder on cached activations.

    On CUDA, `SparseCoder.forward` always runs under bf16 autocast when the card supports it (a
    decorator in sparsify), whatever `s.autocast_bf16` says.
    """
    import sparsify

    coder = sparsify.SparseCoder(acts.shape[1], sparsify.SparseCoderConfig(num_latents=s.d_sae, k=s.k),
                                 device=s.device)
    opt = torch.optim.Adam(coder.parameters(), lr=5e-5)
    since_fired = torch.zeros(s.d_sae, dtype=torch.long, device=s.device)
    clock = StepClock(s.device)
    data = batches(acts, s.batch, clock)
    for _ in range(s.steps):
        x = next(data)
        with s.autocast():
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
    return clock.vectors_per_s(s.batch, s.warmup)


def contenders(against: list[str], acts: torch.Tensor, s: Setting) -> dict[str, dict]:
    """{comparison: {trainer name: zero-argument runner}}; "ours" first in each."""
    out: dict[str, dict] = {}
    if "sparsify" in against:
        out["topk vs sparsify"] = {"ours": lambda: run_ours("topk", acts, s, normalize_decoder=True),
                                   "sparsify": lambda: run_sparsify(acts, s)}
    if "sae-lens" in against:
        for arch in ("standard", "topk"):
            out[f"{arch} vs sae-lens"] = {"ours": lambda a=arch: run_ours(a, acts, s, normalize_decoder=False),
                                          "sae-lens": lambda a=arch: run_sae_lens(a, acts, s)}
    return out


def interleave(runners: dict, repeats: int, on_result=None) -> dict[str, list[float]]:
    """Run every runner `repeats` times, interleaved, the order reversed every other repeat."""
    results: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(runners[name]())
            if on_result is not None:
                on_result(name, results[name][-1])
    return results


def summarise(results: dict[str, list[float]]) -> dict:
    """Median and range of each trainer's vectors/s, and of ours / the other per repeat."""
    out: dict = {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
                 for name, v in results.items()}
    for other in results:
        if other != "ours":
            ratios = [a / b for a, b in zip(results["ours"], results[other])]
            out[f"ours/{other}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                    "runs": ratios}
    return out


def synthetic_activations(n: int, d_in: int, seed: int = 0) -> torch.Tensor:
    """A sparse-plus-dense mixture: sparse codes over a random dictionary, plus noise."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(4 * d_in, d_in, generator=g)
    codes = (torch.rand(n, 4 * d_in, generator=g) < 0.01) * torch.rand(n, 4 * d_in, generator=g)
    return codes @ dictionary + 0.1 * torch.randn(n, d_in, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", help="safetensors file with an [N, d_in] tensor 'activations'")
    parser.add_argument("--against", nargs="+", default=["sparsify", "sae-lens"], choices=["sparsify", "sae-lens"])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first steps of each run left out of its timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every trainer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.activations:
        from safetensors.torch import load_file

        acts = load_file(args.activations)["activations"].float()
        source = args.activations
    else:
        acts = synthetic_activations(args.batch * 8, args.d_in)
        source = "synthetic"
    s = Setting(d_sae=args.d_sae, k=args.k, batch=args.batch, steps=args.steps, warmup=args.warmup)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (all trainers); activations: {source} "
          f"{tuple(acts.shape)}; d_sae {s.d_sae}, k {s.k}, batch {s.batch}, {s.steps} steps ({s.warmup} warm-up "
          f"left out), {args.repeats} interleaved repeats")
    for label, runners in contenders(args.against, acts, s).items():
        summary = summarise(interleave(runners, args.repeats))
        line = "  ".join(f"{name} {summary[name]['median']:,.0f} vec/s ({summary[name]['min']:,.0f}-"
                         f"{summary[name]['max']:,.0f})" for name in runners)
        print(f"{label:<18} {line}")
        for other in runners:
            if other != "ours":
                r = summary[f"ours/{other}"]
                print(f"{'':<18} ours/{other}: median {r['median']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f}; "
                      f"{args.repeats} repeats)")


if __name__ == "__main__":
    main()

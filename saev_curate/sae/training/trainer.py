"""SAE training: the SAE-V paper recipe (ReLU + decoder-norm-weighted L1) and TopK with AuxK.

Inputs come from an `ActivationSource` (anything that yields `[batch, d_in]` tensors reproducibly
for a seed and a start step), so a run killed mid-way resumes from its last checkpoint to the same
result as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from tqdm.auto import tqdm

from saev_curate.core.errors import InputError
from saev_curate.sae.model import SAE, SAEConfig
from saev_curate.sae.sparse import sparse_decode, topk_encode
from saev_curate.sae.training.config import TrainConfig
from saev_curate.sae.training.distributed import Processes, data_parallel_loss, process_group, rank_slices


class ActivationSource(Protocol):
    """Yields `[batch_size, d_in]` float tensors; the same (seed, start_step) gives the same batches."""

    d_in: int

    def iter_batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]: ...


class InMemoryActivations:
    """Activations held in one `[N, d_in]` tensor, reshuffled each epoch (seeded per epoch)."""

    def __init__(self, activations: torch.Tensor) -> None:
        if activations.ndim != 2 or len(activations) == 0:
            raise InputError(f"activations must be a non-empty [N, d_in] tensor, got shape {tuple(activations.shape)}")
        self.activations = activations
        self.d_in = activations.shape[1]

    def iter_batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        n = len(self.activations)
        per_epoch = max(n // batch_size, 1)
        step = start_step
        while True:
            epoch, offset = divmod(step, per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            for i in range(offset, per_epoch):
                yield self.activations[perm[i * batch_size : (i + 1) * batch_size]]
            step = (epoch + 1) * per_epoch


@dataclass
class StepStats:
    loss: float
    mse: float
    aux: float
    l0: float
    fvu: float


# ------------------------------------------------------------------------------------------ schedules
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Warm-up, constant, then linear decay to 0 over the last `lr_decay_fraction` of training."""
    if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
        return (step + 1) / cfg.lr_warmup_steps
    decay_start = int(cfg.total_steps * (1 - cfg.lr_decay_fraction))
    if step >= decay_start and cfg.lr_decay_fraction > 0:
        return max(0.0, (cfg.total_steps - step) / (cfg.total_steps - decay_start))
    return 1.0


def l1_coefficient_at(step: int, cfg: TrainConfig) -> float:
    warm = int(cfg.total_steps * cfg.l1_warmup_fraction)
    return cfg.l1_coefficient * min(1.0, (step + 1) / warm) if warm > 0 else cfg.l1_coefficient


# ------------------------------------------------------------------------------------------ the step
def training_loss(sae: SAE, x: torch.Tensor, cfg: TrainConfig, step: int, dead: torch.Tensor | None):
    """Loss terms and per-latent firing counts for one batch of (already scaled) inputs.

    topk decodes through the k active rows only (`embedding_bag`), never a dense d_sae product.
    """
    x_in = x - sae.b_dec if cfg.apply_b_dec_to_input else x
    if cfg.architecture == "topk":
        values, indices, pre = topk_encode(x_in, sae.W_enc, sae.b_enc, cfg.k)
        recon = sparse_decode(indices, values, sae.W_dec) + sae.b_dec
        counts = torch.bincount(indices[values > 0], minlength=sae.cfg.d_sae)
        l0 = (values > 0).sum(-1).float().mean()
    else:
        f = torch.addmm(sae.b_enc, x_in, sae.W_enc).relu()
        recon = torch.addmm(sae.b_dec, f, sae.W_dec)
        with torch.no_grad():
            active = f > 0
            counts = active.sum(0)
            l0 = active.sum(-1).float().mean()
    err = recon - x
    mse = err.pow(2).sum(-1).mean()
    if cfg.architecture == "standard":
        aux = (f @ sae.W_dec.norm(dim=-1)).mean() * l1_coefficient_at(step, cfg)
    else:
        aux = _aux_k_loss(sae, pre, err, dead, cfg)
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
    return mse + aux, mse, aux, l0, mse.detach() / total_var.clamp_min(1e-12), counts


# AuxK decodes k_aux = d_in/2 latents: past this share of d_sae a dense product beats gathering rows
# (measured on CPU at 576 -> 9216, k_aux 288: 0.97 vs 1.48 s per step; the main k-sparse path stays sparse)
DENSE_AUX_FRACTION = 1 / 64


def _aux_k_loss(sae: SAE, pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor | None, cfg: TrainConfig):
    """AuxK (Gao et al. 2024): the top dead latents learn to predict the live latents' residual."""
    n_dead = int(dead.sum()) if dead is not None else 0
    if n_dead == 0 or cfg.aux_k_coefficient == 0:
        return pre.new_zeros(())
    k_aux = min(sae.cfg.d_in // 2, n_dead)
    scale = min(n_dead / (sae.cfg.d_in // 2), 1.0)
    values, indices = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1, sorted=False)
    if k_aux > sae.cfg.d_sae * DENSE_AUX_FRACTION:
        e_hat = torch.zeros_like(pre).scatter(-1, indices, values) @ sae.W_dec
    else:
        e_hat = sparse_decode(indices, values, sae.W_dec)
    return cfg.aux_k_coefficient * scale * (e_hat + err.detach()).pow(2).sum(-1).mean()


# ------------------------------------------------------------------------------------------ the loop
def train_on_activations(
    cfg: TrainConfig,
    source: ActivationSource | torch.Tensor,
    *,
    resume: bool = True,
    on_step: Callable[[int, StepStats], None] | None = None,
    progress: bool = True,
) -> SAE:
    """Train an SAE on `source`, checkpointing to `cfg.output_dir/checkpoints`; save it in SAELens layout.

    With `resume`, the newest checkpoint in `output_dir` is picked up and training continues from it.
    Under ``torchrun`` / ``accelerate launch`` training is data-parallel: `cfg.batch_size` is the global
    batch, each process trains on its own slice of it and the gradients are averaged (torch DDP), so the
    result matches a one-process run up to float rounding; process 0 writes the checkpoints (which resume on
    any number of processes) and the SAE. `cfg.device` ``cuda`` means each process's own GPU; `on_step`
    sees each process's own share.
    """
    from saev_curate.core.processes import process_device

    device = torch.device(process_device(cfg.device))
    with process_group(device) as procs:
        return _train(cfg, source, procs, device, resume=resume, on_step=on_step, progress=progress)


def _train(cfg: TrainConfig, source: ActivationSource | torch.Tensor, procs: Processes, device: torch.device, *,
           resume: bool, on_step: Callable[[int, StepStats], None] | None, progress: bool) -> SAE:
    """`train_on_activations` in process `procs.rank` of `procs.world` (see there)."""
    if isinstance(source, torch.Tensor):
        source = InMemoryActivations(source)
    out = Path(cfg.output_dir)
    d_sae = cfg.d_sae or source.d_in * cfg.expansion_factor
    normalize_decoder = cfg.normalize_decoder if cfg.normalize_decoder is not None else cfg.architecture == "topk"
    dead_steps = max(1, cfg.dead_after_tokens // cfg.batch_size)

    state = _latest_checkpoint(out) if resume else None
    procs.agree(state and state["step"], "the checkpoint to resume from (its step)")
    if state is not None:
        _check_same_run(state["config"], cfg)
        sae = SAE(SAEConfig(**state["sae_config"]), device=device)
        sae.load_state_dict(state["sae"])
        start, scale = state["step"], state["input_scale"]
        since_fired, fire_counts = state["since_fired"].to(device), state["fire_counts"].to(device)
    else:
        scale = _estimate_scale(source, cfg) if cfg.normalize_input else 1.0
        sae_cfg = SAEConfig(d_in=source.d_in, d_sae=d_sae, architecture=cfg.architecture,
                            k=cfg.k if cfg.architecture == "topk" else None,
                            apply_b_dec_to_input=cfg.apply_b_dec_to_input, model_name=cfg.model_name,
                            hook_name=cfg.hook_name, hook_layer=cfg.hook_layer, context_size=cfg.context_size,
                            dataset_path=cfg.dataset_path)
        sae = SAE.init_paper(sae_cfg, seed=cfg.seed, device=device)
        if normalize_decoder:
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        start = 0
        since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        fire_counts = torch.zeros(d_sae, dtype=torch.float64, device=device)

    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    batches = rank_slices(source.iter_batches(cfg.batch_size, cfg.seed, start), procs)
    step_loss = data_parallel_loss(sae, lambda m, x, step, dead: training_loss(m, x, cfg, step, dead), procs)
    bar = tqdm(total=cfg.total_steps, initial=start, desc=f"train {cfg.architecture} SAE",
               disable=not (progress and procs.main), unit="step", dynamic_ncols=True)
    sae.train()
    for step in range(start, cfg.total_steps):
        x = next(batches).to(device=device, dtype=sae.dtype, non_blocking=True) * scale
        dead = since_fired > dead_steps if cfg.architecture == "topk" else None
        loss, mse, aux, l0, fvu, counts = step_loss(x, step, dead)
        procs.sum_(counts)  # firing counts of the whole global batch: the same dead latents everywhere
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if normalize_decoder:
            _remove_parallel_grad(sae)
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if normalize_decoder:
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        since_fired += 1
        since_fired[counts > 0] = 0
        fire_counts += counts  # tokens on which each latent fired
        stats = StepStats(*(float(v.detach()) for v in (loss, mse, aux, l0, fvu)))
        if on_step is not None:
            on_step(step, stats)
        if step % 10 == 0 or step == cfg.total_steps - 1:
            bar.set_postfix(loss=f"{stats.loss:.4g}", L0=f"{stats.l0:.1f}", FVU=f"{stats.fvu:.3f}", refresh=False)
        bar.update(1)
        done = step + 1
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.total_steps and procs.main:
            _save_checkpoint(out, done, cfg, sae, optimizer, scheduler, scale, since_fired, fire_counts,
                             world_size=procs.world)
    bar.close()
    sae.eval()
    return _finish(sae, cfg, scale, fire_counts, out, procs)


def _remove_parallel_grad(sae: SAE) -> None:
    """Keep unit-norm decoder rows on the sphere: drop the gradient component along each row."""
    if sae.W_dec.grad is not None:
        with torch.no_grad():
            parallel = (sae.W_dec.grad * sae.W_dec).sum(-1, keepdim=True)
            sae.W_dec.grad.sub_(parallel * sae.W_dec)


def _estimate_scale(source: ActivationSource, cfg: TrainConfig) -> float:
    """s = sqrt(d_in) / E||x||, from a few batches drawn with a seed of their own."""
    norms = []
    for i, batch in enumerate(source.iter_batches(cfg.batch_size, cfg.seed + 7919, 0)):
        norms.append(batch.float().norm(dim=-1))
        if i + 1 >= cfg.scale_estimation_batches:
            break
    mean = float(torch.cat(norms).mean())
    if not mean > 0:
        raise InputError("train: the activations have zero norm; check the hook and the data")
    return source.d_in ** 0.5 / mean


def _finish(sae: SAE, cfg: TrainConfig, scale: float, fire_counts: torch.Tensor, out: Path,
            procs: Processes = Processes()) -> SAE:
    """Fold the input scale, attach provenance (with the number of processes) and feature density, save in
    SAELens layout (process 0; the others wait for it)."""
    sae.cfg.input_scale = scale
    sae.fold_input_scale()
    sae.cfg.extra.update(tokens_seen=cfg.total_steps * cfg.batch_size, training_steps=cfg.total_steps,
                         trained_with="saev-curate",
                         training_config=_jsonable({**asdict(cfg), "world_size": procs.world}))
    density = (fire_counts / (cfg.total_steps * cfg.batch_size)).float()
    sparsity = torch.log10(density.clamp_min(1e-10)).cpu()  # SAELens convention: log10 firing rate per token
    sae.sparsity = sparsity
    if procs.main:
        sae.save(out, sparsity=sparsity)
    procs.barrier()
    return sae


# ------------------------------------------------------------------------------------------ checkpoints
_CKPT_PREFIX = "step_"


def _save_checkpoint(out: Path, step, cfg, sae, optimizer, scheduler, scale, since_fired, fire_counts, *,
                     world_size: int = 1) -> None:
    """The whole training state at `step` (SAE, Adam, schedule, input scale, dead-latent counters; the data
    position is `step` itself, batches being a function of seed and step), written atomically. Everything in
    it is global, the same in every process, so it resumes on any number of processes."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_{_CKPT_PREFIX}{step:09d}.pt"
    state = {
        "step": step, "config": _jsonable(asdict(cfg)), "sae_config": asdict(sae.cfg), "sae": sae.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "input_scale": scale,
        "since_fired": since_fired.cpu(), "fire_counts": fire_counts.cpu(), "world_size": world_size,
    }
    torch.save(state, tmp)
    os.replace(tmp, root / f"{_CKPT_PREFIX}{step:09d}.pt")  # atomic: a kill never leaves half a checkpoint
    for old in sorted(root.glob(f"{_CKPT_PREFIX}*.pt"))[: -cfg.keep_checkpoints]:
        old.unlink()


def _latest_checkpoint(out: Path) -> dict[str, Any] | None:
    found = sorted((out / "checkpoints").glob(f"{_CKPT_PREFIX}*.pt"))
    if not found:
        return None
    # our own files, tensors and plain containers only: weights_only refuses anything executable
    try:
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file: name it and the way out
        from saev_curate.core.errors import CheckpointError

        raise CheckpointError(f"{found[-1]}: unreadable training checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); delete this file to resume from the one before it (or delete "
                              f"{out / 'checkpoints'} to start over)") from None
    need = ("step", "config", "sae_config", "sae", "optimizer", "scheduler", "input_scale", "since_fired",
            "fire_counts")
    if not isinstance(state, dict) or any(k not in state for k in need):
        from saev_curate.core.errors import CheckpointError

        raise CheckpointError(f"{found[-1]}: not a saev-curate training checkpoint (missing "
                              f"{[k for k in need if not isinstance(state, dict) or k not in state]}); delete it")
    return state


_RESUME_MUST_MATCH = ("architecture", "expansion_factor", "d_sae", "k", "total_steps", "batch_size", "lr", "seed",
                      "l1_coefficient", "apply_b_dec_to_input", "normalize_input",
                      # what the activations are (filled in by train_sae): another model, layer or dataset
                      "model_name", "hook_name", "hook_layer", "dataset_path", "context_size")


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig) -> None:
    now = _jsonable(asdict(cfg))
    changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise InputError(f"{cfg.output_dir}: holds checkpoints of a different run ({detail}); use another "
                         "output_dir, or delete its checkpoints/ folder to start over")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def clear_checkpoints(output_dir: str | Path) -> None:
    shutil.rmtree(Path(output_dir) / "checkpoints", ignore_errors=True)

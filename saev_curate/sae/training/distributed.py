"""Data parallelism for activation caching and SAE training under ``torchrun`` / ``accelerate launch``.

One process per GPU (or per CPU worker). :func:`process_group` joins the launched processes (NCCL on CUDA,
gloo on CPU) and hands out a :class:`Processes`: who this process is, and the few collectives the cache and
the trainer need. Training stays equal to a one-process run at the same global batch: every process reads
the same global batch and takes its own contiguous slice (:func:`rank_slices`), and torch's
``DistributedDataParallel`` averages the gradients (each process's loss is a mean over an equal share, so the
average is the global batch's gradient). Alone (no launcher), nothing here starts a process group.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch

from saev_curate.core.errors import InputError
from saev_curate.core.processes import process_rank

#: how long a process waits for the others at a collective (an uneven last shard of a large cache, rank 0
#: saving a checkpoint) before the launch fails
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    """This process's place in the launch (``rank`` of ``world``, ``local`` on its node) and its collectives;
    with ``world == 1`` every collective is the identity and needs no process group."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Whether this is the process that writes shared files (indexes, checkpoints, the saved SAE)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process got here."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (small picklable things: counts, names, error lists)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (e.g. per-latent firing counts of each share)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree(self, value: Any, what: str) -> Any:
        """``value``, checked to be the same in every process (a setting, the checkpoint found); a clear error
        in every process otherwise, so that none waits forever for the others."""
        seen = self.all_gather(value)
        if any(v != seen[0] for v in seen):
            raise InputError(f"the {self.world} processes disagree on {what}: {seen}; every process must see the "
                             "same files (put the output and cache folders on a filesystem that every node shares)")
        return value


@contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[Processes]:
    """This process's :class:`Processes`; under a launcher (``WORLD_SIZE`` > 1) the process group is joined
    (NCCL when ``device`` is a GPU, gloo otherwise) and left again at the end, unless it was already up."""
    rank, world, local = process_rank()
    if world == 1:
        yield Processes()
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), local)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def rank_slices(batches: Iterator[torch.Tensor], procs: Processes) -> Iterator[torch.Tensor]:
    """This process's share of each global batch: rows ``[r * B/n, (r + 1) * B/n)`` for rank r of n.

    The shares are disjoint and together the whole batch, so what is trained does not depend on how many
    processes share it (a checkpoint resumes on any number of them)."""
    for batch in batches:
        if len(batch) % procs.world:
            raise InputError(f"batch_size={len(batch)} tokens cannot be shared evenly by {procs.world} processes; "
                             f"use a multiple of {procs.world} (batch_size is the global batch of all processes)")
        share = len(batch) // procs.world
        yield batch[procs.rank * share : (procs.rank + 1) * share]


class _LossStep(torch.nn.Module):
    """The module DistributedDataParallel wraps: ``forward`` is the training loss of ``sae`` (its gradient
    hooks are armed by the wrapper's forward, so the loss must run through it)."""

    def __init__(self, sae: torch.nn.Module, loss) -> None:
        super().__init__()
        self.sae, self.loss = sae, loss

    def forward(self, *args: Any) -> Any:
        return self.loss(self.sae, *args)


def data_parallel_loss(sae: torch.nn.Module, loss, procs: Processes):
    """``loss(sae, *args)`` as a callable whose backward averages the gradients over the processes (torch's
    ``DistributedDataParallel``); ``loss`` itself when alone."""
    if procs.world == 1:
        return lambda *args: loss(sae, *args)
    from torch.nn.parallel import DistributedDataParallel

    device = next(sae.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(_LossStep(sae, loss), device_ids=ids, broadcast_buffers=False)

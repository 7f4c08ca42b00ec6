"""Which process of a multi-process launch this one is, and which device it takes.

``torchrun`` and ``accelerate launch`` start one process per GPU (or per CPU worker) and tell each its
place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); every multi-process path of the
package (scoring, checks, activation caching, SAE training) reads it here, so they agree on who does what.
"""

from __future__ import annotations

import os


def process_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (torchrun / accelerate); (0, 1, 0) alone."""
    rank = int(os.environ.get("RANK", os.environ.get("PROCESS_INDEX", 0)) or 0)
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", 1)) or 1)
    local = int(os.environ.get("LOCAL_RANK", rank) or 0)
    return rank, world, local


def process_device(device: str | None = None) -> str:
    """The device of this process: ``None`` or ``"cuda"`` means this process's own GPU (``cuda:<local rank>``,
    wrapping around the visible GPUs) when there is one (``None``: else ``"cpu"``); anything else as given.

    Under a launcher every process must take a GPU of its own: a bare ``cuda`` would put them all on GPU 0.
    """
    import torch

    if device is None and not torch.cuda.is_available():
        return "cpu"
    if device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{process_rank()[2] % torch.cuda.device_count()}"
    return str(device)

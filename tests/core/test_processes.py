"""Which process of a launch this is, and which device it takes (the rule every multi-process command shares)."""

from __future__ import annotations

import torch

from saev_curate.core.processes import process_device, process_rank


def test_rank_and_world_come_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PROCESS_INDEX", "NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    assert process_rank() == (0, 1, 0)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_rank() == (5, 8, 1)


def test_each_process_takes_its_own_gpu_and_explicit_devices_stay(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device(None) == "cpu" and process_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    # local rank 5 on a node with 4 visible GPUs: GPU 1 (wrapping around), for None and a bare "cuda"
    assert process_device(None) == "cuda:1" and process_device("cuda") == "cuda:1"
    assert process_device("cuda:3") == "cuda:3" and process_device("cpu") == "cpu"

"""Activation caching and SAE training across two CPU processes (torchrun, gloo), against one-process runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from saev_curate import load_sae
from saev_curate.cli import main
from saev_curate.core.errors import InputError
from saev_curate.sae.training.distributed import Processes, rank_slices

SAE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(scope="module")
def local_files(tmp_path_factory, images):
    import datasets

    from saev_curate.testing import save_tiny_vlm

    root = tmp_path_factory.mktemp("ddp")
    model_dir = save_tiny_vlm("llava", root / "model")
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                                         {"type": "text", "text": f"what is in picture {i}?" + " and" * (i % 3)}]},
                          {"role": "assistant", "content": [{"type": "text", "text": f"shapes number {i % 5}"}]}],
             "images": [images[i % len(images)]]} for i in range(18)]
    rows[7]["images"] = [b"not an image"]  # a row error must land in the same shard's record either way
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "data"))
    return root, str(model_dir), str(root / "data")


def torchrun(*args: str) -> None:
    """`torchrun --nproc_per_node 2 -m saev_curate.cli ...` on CPU, as a user types it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "saev_curate.cli", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def cache_args(model, data, out):
    return ["cache-activations", "--model", model, "--data", data, "--out", out, "--layer", "2", "--batch-size", "2",
            "--shard-rows", "4", "--device", "cpu"]


def test_two_processes_write_the_one_process_cache_shard_for_shard_and_a_rerun_skips_finished_shards(local_files):
    root, model, data = local_files
    single, multi = root / "cache-1", root / "cache-2"
    assert main(cache_args(model, data, str(single))) == 0
    one = json.loads((single / "cache.json").read_text())
    assert one["world_size"] == 1 and len(one["shards"]) == 5  # 18 rows in shards of 4
    assert list(one["row_errors"]) == ["7"]
    sizes = [s["n"] for s in one["shards"]]
    # two processes, stopped by --max-tokens half-way through shard 3: shards 0-3 (two rounds of two), the last cut
    limit = sum(sizes[:3]) + sizes[3] // 2
    multi_args = [*cache_args(model, data, str(multi)), "--max-tokens", str(limit)]
    torchrun(*multi_args)

    two = json.loads((multi / "cache.json").read_text())
    assert two["world_size"] == 2 and two["n_tokens"] == limit
    assert [s["n"] for s in two["shards"]] == [*sizes[:3], sizes[3] // 2]
    assert set(two["row_errors"]) <= {"7"}
    for s in two["shards"]:
        a, b = load_file(str(single / s["file"])), load_file(str(multi / s["file"]))
        n = s["n"]
        assert torch.equal(a["is_image"][:n], b["is_image"]), s["file"]
        # the same rows in the same model batches on the same CPU kernels: the same floats
        assert torch.equal(a["activations"][:n], b["activations"]), s["file"]
    assert not (multi / "shard_00004.safetensors").exists()

    # a run killed before its index was written, one shard lost: the rerun (here in one process) writes that
    # shard only and ends with the same cache
    kept = {s["file"]: (multi / s["file"]).stat().st_mtime_ns for s in two["shards"] if s["file"] != "shard_00002.safetensors"}
    (multi / "cache.json").unlink()
    (multi / "shard_00002.safetensors").unlink()
    assert main(multi_args) == 0
    assert {f: (multi / f).stat().st_mtime_ns for f in kept} == kept
    assert torch.equal(load_file(str(multi / "shard_00002.safetensors"))["activations"],
                       load_file(str(single / "shard_00002.safetensors"))["activations"])
    assert json.loads((multi / "cache.json").read_text())["shards"] == two["shards"]
    assert main(multi_args) == 0  # finished: nothing to do
    with pytest.raises(InputError, match="other settings"):
        main([*multi_args, "--layer", "1", "--traceback"])


def train_args(model, data, cache, out, batch_size=48):
    # topk with latents declared dead after 96 tokens: the AuxK term depends on firing counts of the whole batch
    return ["train-sae", "--model", model, "--dataset", data, "--layer", "2", "--activation_cache", cache,
            "--output_dir", out, "--architecture", "topk", "--k", "4", "--expansion_factor", "4",
            "--total_steps", "10", "--batch_size", str(batch_size), "--checkpoint_every", "5", "--lr", "3e-3",
            "--dead_after_tokens", "96", "--seed", "3"]


def max_gap(a, b) -> float:
    return max(float((getattr(a, n) - getattr(b, n)).detach().abs().max()) for n in SAE_TENSORS)


def test_two_process_training_matches_one_process_at_the_same_global_batch_and_resumes_on_one(local_files):
    root, model, data = local_files
    cache = str(root / "train-cache")
    assert main(cache_args(model, data, cache)) == 0
    single, multi, half = (str(root / n) for n in ("sae-1", "sae-2", "sae-half"))
    assert main(train_args(model, data, cache, single)) == 0
    torchrun(*train_args(model, data, cache, multi))
    one, two = load_sae(single), load_sae(multi)
    assert one.cfg.extra["training_config"]["world_size"] == 1
    assert two.cfg.extra["training_config"]["world_size"] == 2
    assert torch.load(f"{multi}/checkpoints/step_000000005.pt", weights_only=True)["world_size"] == 2

    # Tolerance: the two runs differ only in float rounding (the 2-process gradient is the mean of two half-batch
    # means, summed in another order), ~1e-7 relative per step; over 10 Adam steps of lr 3e-3 that stays far
    # below 1e-4 (measured: 6e-7), while a real difference in what is trained moves weights by ~lr per step: one
    # process training alone on half of each batch ends 1.3 away, and leaving the firing counts unsummed over
    # the processes (each its own dead latents for AuxK) ends 0.76 away.
    tol = 1e-4
    assert max_gap(one, two) < tol, max_gap(one, two)
    assert main(train_args(model, data, cache, half, batch_size=24)) == 0
    assert max_gap(one, load_sae(half)) > 30 * tol

    # the 2-process run's checkpoint at step 5 resumed in one process ends where the 1-process run ended
    for name in ("cfg.json", "sae_weights.safetensors"):
        os.remove(f"{multi}/{name}")
    assert main(train_args(model, data, cache, multi)) == 0
    resumed = load_sae(multi)
    assert resumed.cfg.extra["training_config"]["world_size"] == 1
    assert max_gap(one, resumed) < tol, max_gap(one, resumed)


def test_rank_slices_split_each_global_batch_into_disjoint_shares():
    batches = [torch.arange(12.0).reshape(6, 2) + 100 * i for i in range(3)]
    shares = [list(rank_slices(iter(batches), Processes(rank=r, world=3))) for r in range(3)]
    for step, batch in enumerate(batches):
        assert torch.equal(torch.cat([shares[r][step] for r in range(3)]), batch)
        assert all(len(shares[r][step]) == 2 for r in range(3))
    with pytest.raises(InputError, match="multiple of 4"):
        next(rank_slices(iter(batches), Processes(rank=0, world=4)))


def test_training_across_processes_without_a_cache_is_a_clear_error(local_files, monkeypatch, capsys):
    root, model, data = local_files
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train_args(model, data, str(root / "no-cache"), str(root / "sae-x"))
    args.remove("--activation_cache")
    args.remove(str(root / "no-cache"))
    assert main(args) == 1
    assert "--activation_cache" in capsys.readouterr().err

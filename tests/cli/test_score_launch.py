"""The scoring CLI under a real multi-process launcher (torchrun: what `accelerate launch` uses on GPUs)."""

from __future__ import annotations

import os
import subprocess
import sys

import datasets
from float_tolerance import assert_columns_close
from scoring_rows import save_launch_inputs

from saev_curate.cli import main
from saev_curate.testing.rows import digit_preference_rows


def test_two_processes_give_the_single_process_result_in_row_order(tmp_path):
    rows = digit_preference_rows(30, seed=2)
    rows[5]["images"] = []  # an unscorable row (no image) must keep its place in every process's shard
    common = save_launch_inputs(tmp_path, rows)
    assert main(["fit-weights", *common, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "w")]) == 0
    args = ["score", *common, "--weights", str(tmp_path / "w"), "--data", str(tmp_path / "data"), "--shard-rows", "4"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "saev_curate.cli", *args, "--out", str(tmp_path / "multi")]
    done = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single = datasets.load_from_disk(str(tmp_path / "single"))
    multi = datasets.load_from_disk(str(tmp_path / "multi"))
    assert multi["prompt"] == [r["prompt"] for r in rows]
    # two processes split rows into other batches (other padding, other matmul blocking): floats agree to
    # fp32 error, not bit for bit; row order, None positions, errors and integer counts stay exact
    for column in (c for c in single.column_names if c.startswith("saev_")):
        assert_columns_close(multi[column], single[column], column)
    assert multi["saev_error"][5] is not None and "image" in multi["saev_error"][5]
    assert sum(v is not None and v > 0 for v in multi["saev_l0"]) >= 25  # real activity was scored

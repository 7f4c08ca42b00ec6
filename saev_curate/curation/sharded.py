"""Resumable, sharded, multi-process scoring of a dataset to disk (what ``saev-curate score`` runs).

Rows are scored in shards of ``shard_rows``; each finished shard's score columns are written to
``<out>.shards/`` at once (atomically).  After a kill, the same call skips the finished shards (checked
against the scorer's and the data's fingerprints) and ends with the same result as an uninterrupted
run.  Under ``accelerate launch`` / ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set, see
:func:`process_rank`) process p scores shards p, p+n, ...; process 0 joins all shards in row order.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from saev_curate.errors import InputError
from saev_curate.io.datasets import save_dataset

__all__ = ["data_fingerprint", "process_rank", "score_to_disk"]


def process_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (torchrun / accelerate); (0, 1, 0) alone."""
    rank = int(os.environ.get("RANK", os.environ.get("PROCESS_INDEX", 0)) or 0)
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", 1)) or 1)
    local = int(os.environ.get("LOCAL_RANK", rank) or 0)
    return rank, world, local


def data_fingerprint(ds) -> str:
    """What identifies a dataset's content for resuming: its ``datasets`` fingerprint and length."""
    fp = getattr(ds, "_fingerprint", None)
    return f"{fp}:{len(ds)}"


def score_to_disk(scorer, ds, out: str, *, batch_size: int = 8, shard_rows: int = 1000, rank: int = 0,
                  world: int = 1, progress: bool = False, wait_timeout_s: float = 7 * 24 * 3600) -> None:
    """Score ``ds`` shard by shard into ``<out>.shards/``, resuming finished shards; rank 0 then joins
    the shards in row order with the data and writes ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if shard_rows <= 0 or batch_size <= 0:
        raise InputError(f"shard_rows={shard_rows} and batch_size={batch_size} must be positive")
    n = len(ds)
    shard_dir = Path(str(out).rstrip("/") + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"scorer": scorer.fingerprint(), "data": data_fingerprint(ds), "rows": n, "shard_rows": shard_rows}
    mpath = shard_dir / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old != manifest:
            raise InputError(f"{shard_dir} holds shards of a different run (other scorer settings, data or "
                             "--shard-rows); delete it or use another --out")
    elif rank == 0:
        tmp = mpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(mpath)
    n_shards = (n + shard_rows - 1) // shard_rows
    feats = scorer.features(ds)
    names = [c for c in feats if c not in ds.column_names]
    schema = pa.schema([pa.field("row_index", pa.int64())] + [pa.field(c, feats[c].pa_type) for c in names])
    mine = [s for s in range(n_shards) if s % world == rank]
    todo = [s for s in mine if not (shard_dir / f"shard-{s:05d}.parquet").exists()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(min(shard_rows, n - s * shard_rows) for s in todo), desc="SAE-V scoring", unit="row")
    for s in todo:
        a, b = s * shard_rows, min(n, (s + 1) * shard_rows)
        cols: dict[str, list] = {c: [] for c in names}
        for i in range(a, b, batch_size):
            j = min(b, i + batch_size)
            res = scorer(ds[i:j])
            for c in names:
                cols[c].extend(res[c])
            if bar is not None:
                bar.update(j - i)
        table = pa.table({"row_index": list(range(a, b)), **cols}, schema=schema)
        final = shard_dir / f"shard-{s:05d}.parquet"
        tmp = shard_dir / f".shard-{s:05d}.parquet.tmp{os.getpid()}"
        pq.write_table(table, tmp)
        tmp.replace(final)  # atomic: a shard file exists only when complete
    if bar is not None:
        bar.close()
    if rank != 0:
        return
    deadline = time.time() + wait_timeout_s
    paths = [shard_dir / f"shard-{s:05d}.parquet" for s in range(n_shards)]
    while not all(p.exists() for p in paths):
        if time.time() > deadline:
            raise InputError(f"timed out waiting for the other processes' shards in {shard_dir}")
        time.sleep(2)
    tables = [pq.read_table(p) for p in paths]
    scores = pa.concat_tables(tables) if tables else schema.empty_table()
    if scores.column("row_index").to_pylist() != list(range(n)):
        raise InputError(f"the shards in {shard_dir} do not cover rows 0..{n - 1} in order; delete the folder")
    joined = ds
    for c in names:
        if c in joined.column_names:
            joined = joined.remove_columns(c)
        joined = joined.add_column(c, scores.column(c).to_pylist(), feature=feats[c])
    save_dataset(joined, out)
    print(f"scored {n} rows -> {out}", file=sys.stderr)

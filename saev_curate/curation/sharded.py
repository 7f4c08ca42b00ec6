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

from saev_curate.core.errors import InputError
from saev_curate.core.processes import process_rank
from saev_curate.io.datasets import save_dataset
from saev_curate.io.fingerprint import data_fingerprint

__all__ = ["data_fingerprint", "process_rank", "score_to_disk", "summary_path"]


def summary_path(out: str | Path) -> Path:
    """Where :func:`score_to_disk` writes the run's summary (rows, failed rows by reason): ``<out>.summary.json``."""
    return Path(str(out).rstrip("/") + ".summary.json")


def _write_manifest(mpath: Path, manifest: dict) -> None:
    tmp = mpath.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(mpath)


def score_to_disk(scorer, ds, out: str, *, batch_size: int = 8, shard_rows: int = 1000, rank: int = 0,
                  world: int = 1, progress: bool = False, wait_timeout_s: float = 7 * 24 * 3600,
                  min_usable_share: float | None = None) -> dict:
    """Score ``ds`` shard by shard into ``<out>.shards/``, resuming finished shards; rank 0 then joins
    the shards in row order with the data and writes ``out``.

    The row rule (:mod:`saev_curate.core.row_errors`): when no row, or fewer than ``min_usable_share`` of them,
    could be scored, nothing is written to ``out`` and :class:`~saev_curate.core.row_errors.TooFewUsableRows`
    names the most common errors; a first shard with no usable row at all stops the run at once (a
    wrong column name or model setting, not bad luck).  Otherwise failed rows are summed up in one line
    on stderr and in ``<out>.summary.json``; rank 0 returns that summary.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from saev_curate.core.row_errors import check_usable
    from saev_curate.io.checked import read_json_object
    from saev_curate.io.datasets import raw_rows

    if shard_rows <= 0 or batch_size <= 0:
        raise InputError(f"shard_rows={shard_rows} and batch_size={batch_size} must be positive")
    n = len(ds)
    if n == 0:
        raise InputError("the dataset to score has no rows")
    shard_dir = Path(str(out).rstrip("/") + ".shards")
    manifest = {"scorer": scorer.fingerprint(), "data": data_fingerprint(ds), "rows": n, "shard_rows": shard_rows}
    scorer.setup(rank)  # a bad model, SAE, weights or layer fails here, before anything is written
    shard_dir.mkdir(parents=True, exist_ok=True)
    mpath = shard_dir / "manifest.json"
    finished = sorted(shard_dir.glob("shard-*.parquet"))
    if mpath.exists():
        old = read_json_object(mpath, fix=f"delete {shard_dir} to score from the start")
        if old != manifest:
            if finished:
                changed = ", ".join(k for k in manifest if old.get(k) != manifest[k])
                raise InputError(f"{shard_dir} holds {len(finished)} finished shards of a different run ({changed} "
                                 f"changed: other scorer settings, data or --shard-rows); delete {shard_dir} to "
                                 "start over, or use another --out")
            if rank == 0:  # a run that failed before finishing any shard: nothing to keep
                _write_manifest(mpath, manifest)
    elif rank == 0:
        _write_manifest(mpath, manifest)
    err_col = scorer.error_column(list(ds.column_names))
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
            res = scorer(raw_rows(ds, range(i, j)))  # images undecoded: a bad one is that row's error
            for c in names:
                cols[c].extend(res[c])
            if bar is not None:
                bar.update(j - i)
        if s == todo[0] and err_col in cols and s == mine[0] and min_usable_share != 0:
            # the first shard of this run with no usable row: a setup mistake, stop before the other shards
            check_usable(b - a, cols[err_col], min_usable_share=1e-12, what="rows of the first shard",
                         action="score", report=False)
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
    tables = []
    for p in paths:
        try:
            tables.append(pq.read_table(p))
        except Exception as exc:  # noqa: BLE001 - a damaged shard: say which, and how to redo it
            raise InputError(f"{p}: unreadable score shard ({type(exc).__name__}: {exc}); delete this file and run "
                             "the same command again to rescore its rows") from None
    scores = pa.concat_tables(tables) if tables else schema.empty_table()
    if scores.column("row_index").to_pylist() != list(range(n)):
        raise InputError(f"the shards in {shard_dir} do not cover rows 0..{n - 1} in order; delete the folder")
    errors = scores.column(err_col).to_pylist() if err_col in names else []
    summary = check_usable(n, errors, min_usable_share=min_usable_share, action="score")
    summary["scorer"] = type(scorer).__name__
    joined = ds
    for c in names:
        if c in joined.column_names:
            joined = joined.remove_columns(c)
        joined = joined.add_column(c, scores.column(c).to_pylist(), feature=feats[c])
    save_dataset(joined, out)
    spath = summary_path(out)
    spath.write_text(json.dumps(summary, indent=2))
    print(f"scored {n - summary['n_failed']} of {n} rows -> {out} (summary: {spath})", file=sys.stderr)
    return summary

"""`saev-curate fit-weights | score | select`: the SAE-V data filter over local datasets.

Datasets: a ``save_to_disk`` folder, a ``.parquet`` file, or a ``.json``/``.jsonl`` file.  Outputs:
a folder (``save_to_disk``) or a ``.parquet`` file, by the extension of ``--out``.

``score`` is resumable: rows are scored in shards of ``--shard-rows``; each finished shard's score
columns are written to ``<out>.shards/`` at once (atomically).  After a kill, the same command skips
the finished shards (checked against the scorer's and the data's fingerprints) and ends with the
same result as an uninterrupted run.  Under ``accelerate launch`` (or any launcher setting ``RANK`` /
``WORLD_SIZE``) process p scores shards p, p+n, ...; process 0 joins all shards in row order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser("fit-weights", help="fit SAE-V cross-modal feature weights on reference rows")
    _model_args(fit)
    fit.add_argument("--data", required=True, help="reference dataset (save_to_disk folder, .parquet, .json/.jsonl)")
    fit.add_argument("--out", required=True, help="folder for crossmodal_weights.{safetensors,json}")
    fit.add_argument("--n-reference", type=int, default=1000, help="rows sampled for the fit (default 1000)")
    fit.add_argument("--seed", type=int, default=42)
    fit.add_argument("--batch-size", type=int, default=8)
    fit.add_argument("--top-features-per-token", type=int, default=50)
    fit.add_argument("--top-tokens-per-feature", type=int, default=30)
    fit.add_argument("--tokens-per-modality", type=int, default=5)
    fit.add_argument("--max-length", type=int, default=None)
    fit.set_defaults(func=_fit)

    score = sub.add_parser("score", help="add saev_* score columns to a dataset (resumable, sharded)")
    _model_args(score)
    score.add_argument("--weights", required=True, help="folder written by fit-weights")
    score.add_argument("--data", required=True)
    score.add_argument("--out", required=True, help="output folder (save_to_disk) or .parquet file")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--shard-rows", type=int, default=1000, help="rows per resumable shard")
    score.add_argument("--delta", type=float, default=1.0)
    score.add_argument("--feature-set", choices=("cooccur", "any"), default="cooccur")
    score.add_argument("--responses", choices=("auto", "yes", "no"), default="auto",
                       help="also score with the chosen/rejected response shown (preference rows)")
    score.add_argument("--max-length", type=int, default=None)
    score.set_defaults(func=_score)

    sel = sub.add_parser("select", help="keep the top rows of a scored dataset")
    sel.add_argument("--data", required=True)
    sel.add_argument("--out", required=True)
    sel.add_argument("--by", default="saev_score", help="score column, method name (saev, cooccur_l0, l0, ppl, "
                                                       "clip) or random")
    group = sel.add_mutually_exclusive_group(required=True)
    group.add_argument("--fraction", type=float)
    group.add_argument("--threshold", type=float)
    sel.add_argument("--ascending", action="store_true", help="keep the lowest values instead")
    sel.add_argument("--seed", type=int, default=0, help="for --by random")
    sel.add_argument("--nulls", choices=("drop", "keep", "raise"), default="drop")
    sel.add_argument("--report", default=None, help="write one keep/drop reason per row here (.jsonl/.parquet)")
    sel.set_defaults(func=_select)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (save_pretrained layout)")
    p.add_argument("--sae", required=True, help="SAE folder (SAELens or sparsify layout)")
    p.add_argument("--layer", default=None, help="decoder layer or hook name (default: the SAE's own)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--traceback", action="store_true", help="show full tracebacks for errors")


def _layer(value):
    if value is None:
        return None
    return int(value) if str(value).lstrip("-").isdigit() else value


# ---------------------------------------------------------------------------------------------
# data io


def load_data(path: str):
    import datasets

    from saev_curate.errors import InputError

    p = Path(path)
    if p.is_dir():
        return datasets.load_from_disk(str(p))
    if p.suffix == ".parquet" and p.is_file():
        return datasets.Dataset.from_parquet(str(p))
    if p.suffix in (".json", ".jsonl") and p.is_file():
        return datasets.Dataset.from_json(str(p))
    raise InputError(f"cannot read a dataset from {path!r}: expected a save_to_disk folder, a .parquet file or a "
                     ".json/.jsonl file")


def save_data(ds, path: str) -> None:
    p = Path(path)
    if p.suffix == ".parquet":
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(p))
    elif p.suffix in (".json", ".jsonl"):
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(p))
    else:
        ds.save_to_disk(str(p))


# ---------------------------------------------------------------------------------------------
# handlers


def _fit(args) -> int:
    from saev_curate.crossmodal import CrossModalWeights
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    model, processor = load_vlm(args.model, dtype=args.dtype, device=args.device)
    sae = load_sae(args.sae, device=args.device or model.device)
    ds = load_data(args.data)
    w = CrossModalWeights.fit(model, processor, sae, ds, _layer(args.layer), n_reference=args.n_reference,
                              seed=args.seed, batch_size=args.batch_size,
                              top_features_per_token=args.top_features_per_token,
                              top_tokens_per_feature=args.top_tokens_per_feature,
                              tokens_per_modality=args.tokens_per_modality, max_length=args.max_length,
                              progress=True)
    w.meta["model"]["path"] = str(args.model)
    w.meta["sae"]["path"] = str(args.sae)
    w.save(args.out)
    print(json.dumps(w.summary(), indent=2))
    return 0


def _dist() -> tuple[int, int, int]:
    rank = int(os.environ.get("RANK", os.environ.get("PROCESS_INDEX", 0)) or 0)
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", 1)) or 1)
    local = int(os.environ.get("LOCAL_RANK", rank) or 0)
    return rank, world, local


def _score(args) -> int:
    from saev_curate.score import SaevScorer

    rank, world, local = _dist()
    device = args.device
    if device is None:
        import torch

        device = f"cuda:{local % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    responses = {"auto": "auto", "yes": True, "no": False}[args.responses]
    scorer = SaevScorer(args.model, None, args.sae, args.weights, _layer(args.layer), delta=args.delta,
                        feature_set=args.feature_set, responses=responses, max_length=args.max_length,
                        device=device, dtype=args.dtype)
    ds = load_data(args.data)
    score_to_disk(scorer, ds, args.out, batch_size=args.batch_size, shard_rows=args.shard_rows,
                  rank=rank, world=world, progress=True)
    return 0


def _data_fingerprint(ds) -> str:
    fp = getattr(ds, "_fingerprint", None)
    return f"{fp}:{len(ds)}"


def score_to_disk(scorer, ds, out: str, *, batch_size: int = 8, shard_rows: int = 1000, rank: int = 0,
                  world: int = 1, progress: bool = False, wait_timeout_s: float = 7 * 24 * 3600) -> None:
    """Score ``ds`` shard by shard into ``<out>.shards/``, resuming finished shards; rank 0 then joins
    the shards in row order with the data and writes ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from saev_curate.errors import InputError

    if shard_rows <= 0 or batch_size <= 0:
        raise InputError("--shard-rows and --batch-size must be positive")
    n = len(ds)
    shard_dir = Path(str(out).rstrip("/") + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"scorer": scorer.fingerprint(), "data": _data_fingerprint(ds), "rows": n, "shard_rows": shard_rows}
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
    save_data(joined, out)
    print(f"scored {n} rows -> {out}", file=sys.stderr)


def _select(args) -> int:
    from saev_curate.selection import select

    ds = load_data(args.data)
    kept, report = select(ds, args.by, fraction=args.fraction, threshold=args.threshold,
                          descending=False if args.ascending else None, seed=args.seed, nulls=args.nulls,
                          return_report=True)
    save_data(kept, args.out)
    if args.report:
        save_data(report, args.report)
    print(f"kept {len(kept)} of {len(ds)} rows -> {args.out}", file=sys.stderr)
    return 0

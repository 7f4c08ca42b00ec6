"""Which score works on *this* model and data: plant known defects (:mod:`saev_curate.curation.planting`) in copies
of a seeded sample of the user's rows, score clean and planted rows with every method of the table the data allow
(one :class:`~saev_curate.curation.scorers.MethodScorer`, resumable and multi-process through
:func:`~saev_curate.curation.sharded.score_to_disk`), and measure each method's AUROC per kind with bootstrap
intervals; the recommendation per data shape is the best mean AUROC over the kinds that shape can show.

The planted copies are the only extra rows (one per sampled row, kinds dealt round-robin), so a check costs about
twice one scoring pass of the sample.  ``check.json`` holds it for machines; ``jobs.check`` adds the page.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saev_curate.core.errors import InputError
from saev_curate.curation.methods import METHODS, data_shape, methods_for
from saev_curate.curation.planting import KINDS, canonical_rows, kinds_for, plant_rows
from saev_curate.io.checked import strict_json

__all__ = ["CHECK_FILE", "CheckResult", "auroc_with_interval", "load_check", "recommended_by", "run_check"]

CHECK_FILE = "check.json"
#: which data shapes a dataset of each shape can speak for (a preference row also shows its prompt alone)
SPEAKS_FOR = {"prompt_only": ("prompt_only",), "sft": ("prompt_only", "sft"),
              "preference": ("prompt_only", "sft", "preference")}


@dataclass
class CheckResult:
    """What a check measured (``check.json``); ``auroc``: method -> kind -> ``{"mean", "low", "high"}``."""

    shape: str
    n_rows: int
    kinds: dict[str, dict[str, Any]]
    auroc: dict[str, dict[str, dict[str, float]]]
    recommended: dict[str, str]
    cost_s_per_row: dict[str, float | None]
    rows_failed: list[dict[str, Any]] = field(default_factory=list)
    worst_misses: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, out: str | Path) -> Path:
        path = Path(out) / CHECK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(strict_json(self.to_json()), indent=1, allow_nan=False))
        tmp.replace(path)
        return path


def load_check(path: str | Path | CheckResult) -> CheckResult:
    """A check's result from its folder or ``check.json`` (or the result itself)."""
    if isinstance(path, CheckResult):
        return path
    p = Path(path)
    p = p / CHECK_FILE if p.is_dir() else p
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a check result ({e}); run `saev-curate check ... --out FOLDER` and pass the "
                         "folder") from None
    return CheckResult(**doc)


def recommended_by(check, columns) -> str:
    """The method a check recommends for a dataset with these ``columns`` (its shape); an error when the check's
    data could not speak for that shape (a prompt-only check cannot recommend for preference rows)."""
    result = load_check(check)
    shape = data_shape(columns)
    if shape not in result.recommended:
        raise InputError(f"the check ran on {result.shape.replace('_', '-')} rows and recommends only for "
                         f"{', '.join(result.recommended)}; this dataset has {shape.replace('_', '-')} rows: run the "
                         "check on rows of that shape")
    return result.recommended[shape]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(clean > planted) with ties counted half (Mann-Whitney), from ranks."""
    from scipy.stats import rankdata

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auroc_with_interval(clean: np.ndarray, planted: np.ndarray, *, n_boot: int = 1000, seed: int = 0
                        ) -> dict[str, float]:
    """AUROC of ``clean`` scores against ``planted`` ones (higher = cleaner; -inf for rows without a score) with a
    95% percentile bootstrap interval (each group resampled on its own).

    Every resample's AUROC comes from one pairwise table: ``P[i, j]`` = 1 when clean row i outscores planted row j
    (0.5 on a tie), and a resample drawing clean row i ``a_i`` times and planted row j ``b_j`` times has AUROC
    ``a^T P b / (n_clean n_planted)``: all resamples are two matrix products."""
    mean = _auc(clean, planted)
    if n_boot <= 0 or math.isnan(mean):
        return {"mean": mean, "low": float("nan"), "high": float("nan")}
    pairs = (clean[:, None] > planted[None, :]) + 0.5 * (clean[:, None] == planted[None, :])
    rng = np.random.default_rng(seed)
    a = rng.multinomial(len(clean), np.full(len(clean), 1 / len(clean)), size=n_boot)
    b = rng.multinomial(len(planted), np.full(len(planted), 1 / len(planted)), size=n_boot)
    boots = ((a.astype(np.float64) @ pairs) * b).sum(1) / (len(clean) * len(planted))
    return {"mean": mean, "low": float(np.percentile(boots, 2.5)), "high": float(np.percentile(boots, 97.5))}


def _oriented(values: list, method: str) -> np.ndarray:
    """Higher = cleaner; a row without a score counts as the lowest (a method that cannot score a row flags it)."""
    sign = 1.0 if METHODS[method].higher_is_cleaner else -1.0
    return np.array([-np.inf if v is None or (isinstance(v, float) and math.isnan(v)) else sign * float(v)
                     for v in values])


def run_check(model, processor, sae, weights, data, out: str | Path, *, n: int = 400, seed: int = 0,
              methods: list[str] | None = None, config=None, n_boot: int = 1000, batch_size: int = 8,
              rank: int = 0, world: int = 1, progress: bool = True, fact_words=None) -> CheckResult | None:
    """Plant, score and measure (see the module docstring); writes ``out/scored`` (clean + planted rows with every
    method's columns, ``check_kind`` and ``check_row``) and ``out/check.json``.  Returns the result on rank 0 (None on
    the other ranks, which score their shards)."""
    import datasets

    from saev_curate.curation.scorers import MethodScorer
    from saev_curate.curation.sharded import score_to_disk
    from saev_curate.vlm.rows.images import RowError, load_image

    t0 = time.perf_counter()
    if n < 2:
        raise InputError(f"--rows {n}: a check needs at least 2 rows (default 400)")
    shape = data_shape(data.column_names)
    order = np.random.default_rng(seed).permutation(len(data))[:n]
    sample = data.select(sorted(order.tolist()))
    rows, failed = [], []
    for idx, row in zip(sorted(order.tolist()), canonical_rows(sample, shape)):
        try:
            if not row.get("images"):
                raise RowError("the row has no image")
            row["images"] = [load_image(row["images"][0])]
        except RowError as e:
            failed.append({"row": int(idx), "reason": str(e)})
            continue
        row["check_row"] = int(idx)
        rows.append(row)
    if len(rows) < 2:
        reasons = "; ".join(sorted({f["reason"] for f in failed}))[:300]
        raise InputError(f"only {len(rows)} of {len(order)} sampled rows could be read ({reasons}); fix the rows")
    tok = getattr(processor, "tokenizer", processor)
    planted = plant_rows(rows, shape, seed=seed, tokenizer=tok, fact_words=fact_words)
    table = [{**r, "check_kind": "clean", "check_word": None} for r in rows]
    for _, kind, p in planted:
        table.append({**p, "check_kind": kind, "check_word": p.pop("_planted_word", None)})
    ds = datasets.Dataset.from_list(table)
    have = {"control"} | ({"sae", "weights", "pairs", "readout"} if sae is not None else set())
    names = methods or [m for m in methods_for(shape, have=have) if METHODS[m].column is not None]
    scorer = MethodScorer(model, processor, sae, weights, methods=names, config=config)
    out = Path(out)
    score_to_disk(scorer, ds, str(out / "scored"), batch_size=batch_size, shard_rows=-(-len(ds) // (4 * world)),
                  rank=rank, world=world, progress=progress, min_usable_share=0)
    if rank != 0:
        return None
    scored = datasets.load_from_disk(str(out / "scored"))
    labels = np.array(scored["check_kind"])
    clean = labels == "clean"
    present = [k for k in kinds_for(shape) if (labels == k).any()]
    auroc: dict[str, dict[str, dict[str, float]]] = {}
    worst: dict[str, dict[str, int]] = {}
    for m in names:
        col = METHODS[m].column
        if col not in scored.column_names:
            continue
        v = _oriented(scored[col], m)
        auroc[m] = {k: auroc_with_interval(v[clean], v[labels == k], n_boot=n_boot, seed=seed) for k in present}
        worst[m] = {k: int(np.flatnonzero(labels == k)[np.argmax(v[labels == k])]) for k in present}
    recommended = {}
    for s in SPEAKS_FOR[shape]:
        kinds = [k for k in kinds_for(s) if k in present]
        allowed = [m for m in methods_for(s, have=have) if m in auroc]
        if kinds and allowed:
            recommended[s] = max(allowed, key=lambda m: float(np.nanmean([auroc[m][k]["mean"] for k in kinds])))
    counts = {k: int((labels == k).sum()) for k in present}
    result = CheckResult(
        shape=shape, n_rows=len(rows), rows_failed=failed,
        kinds={k: {"n": counts[k], "description": KINDS[k].description} for k in present},
        auroc=auroc, recommended=recommended,
        cost_s_per_row={m: scorer.seconds_per_row(m) for m in auroc}, worst_misses=worst,
        settings={"n": n, "seed": seed, "n_boot": n_boot, "methods": names, "world": world,
                  "config": scorer.settings["config"]},
        seconds=time.perf_counter() - t0)
    result.save(out)
    return result

"""Selection, kept apart from scoring: scores are expensive and cached, selection is cheap and re-runnable.

(The module is `selection`, not `select`, so that importing it never shadows the function
`saev_curate.select` with a module attribute of the same name.)

    kept = select(ds, fraction=0.5)   # by the recommended method for the data's shape
    kept, report = select(ds, by="saev_token_readout_min_margin", fraction=0.1, return_report=True)
    report.to_json("why.jsonl")      # one record per input row: kept?, rank, value, reason

``by`` is a method of the table (:mod:`saev_curate.curation.methods`: its column and which direction is
cleaner, so ``by="response_perplexity"`` keeps the *lowest* perplexity), an old alias (``"saev"``, ``"ppl"``), any
numeric column (higher kept), ``"random"`` (seeded), or ``"auto"`` / None: with ``check=`` (a ``saev-curate check``
result), what that check measured best on the user's own model for the data's shape; without one,
:func:`~saev_curate.curation.methods.default_by`, the detection benchmark's recommendation for the shape.

Rules (deterministic):

* ``fraction``: keep the top ``round_half_up(fraction x n_rows)`` rows (n_rows counts every row, so
  every method gets the same data budget), capped at the number of rows that have a score;
* ``threshold``: keep rows with value >= threshold (<= when ``descending=False``);
* ``stratify_by`` (with ``fraction``): the same rule within each value of that column (a task, source or
  question-type column), so the kept data keep the input's mix: scores are often not comparable across
  groups (on the testbed, digit rows out-score shape rows), and a global top X% then shifts the mix;
* ties in value: the earlier row ranks first;
* null scores (None, NaN or ±inf) never rank: ``nulls="drop"`` (default) drops them with the reason in the
  report and a warning with their count, ``"keep"`` keeps them (reason recorded), ``"raise"`` raises;
* kept rows are returned in their original order (``order="rank"`` returns them best first);
* a rule that keeps no row is an error naming the rule and the counts (an empty selection trains nothing).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from saev_curate.core.errors import InputError
from saev_curate.curation.methods import default_by, resolve_by

log = logging.getLogger(__name__)

NULL_POLICIES = ("drop", "keep", "raise")


def _is_null(v: Any) -> bool:
    """No usable score: None, NaN or ±inf (an infinite score would outrank every real one)."""
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def kept_count(fraction: float, n_rows: int) -> int:
    """How many rows the top ``fraction`` of ``n_rows`` keeps: ``round_half_up(fraction x n_rows)`` (every method
    gets the same budget, counted over all rows; capped at the rows that have a score by the caller)."""
    return int(math.floor(fraction * n_rows + 0.5))


def _column_values(ds, column: str) -> list:
    names = getattr(ds, "column_names", None)
    if names is None:
        raise InputError("select() needs a materialised dataset (datasets.Dataset or a list of dicts); for a "
                         "streaming IterableDataset, write the scored rows to disk first")
    if column not in names:
        scored = [c for c in names if c.startswith("saev_")]
        raise InputError(f"column {column!r} is not in the dataset (columns: {names}); "
                         + ("score the dataset first (MethodScorer / saev-curate score --methods)" if not scored
                            else f"score columns present: {scored}; score it with the method, or pass one of "
                                 "them as by="))
    return list(ds[column])


def resolve_auto(columns, check=None) -> str:
    """``by="auto"``: the recommendation of a ``check`` (a :class:`~saev_curate.curation.check.CheckResult`, its
    folder or ``check.json``) for data with these ``columns``, or without one the methods table's."""
    if check is None:
        return default_by(columns)
    from saev_curate.curation.check import recommended_by

    return recommended_by(check, columns)


def rank_rows(values: list, *, descending: bool = True) -> list[int]:
    """Indices of non-null values, best first; ties: earlier row first."""
    idx = [i for i, v in enumerate(values) if not _is_null(v)]
    for i in idx:
        if not isinstance(values[i], (int, float)) or isinstance(values[i], bool):
            raise InputError(f"row {i}: score {values[i]!r} is not a number")
    sign = -1.0 if descending else 1.0
    return sorted(idx, key=lambda i: (sign * float(values[i]), i))


def select(ds, by: str | None = None, *, check=None, fraction: float | None = None, threshold: float | None = None,
           descending: bool | None = None, seed: int = 0, nulls: str = "drop", order: str = "original",
           return_report: bool = False, min_usable_share: float | None = None, stratify_by: str | None = None):
    """Keep the best rows of ``ds`` by ``by``; see the module docstring for the rules.

    The row rule (:mod:`saev_curate.core.row_errors`): when no row, or fewer than ``min_usable_share``, has a
    score, selection fails naming the most common ``saev_error`` reasons (a dataset whose scoring failed
    is not ranked by row order); 0 checks only that some row has one.

    Returns the kept rows (same type as ``ds``: a ``datasets.Dataset`` or a list), or
    ``(kept, report)`` with ``return_report=True``: a ``Dataset`` (or list of dicts) with one record
    per input row: ``row_index``, ``saev_keep``, ``saev_rank`` (1 = best; null for null scores),
    ``value``, ``saev_keep_reason``.
    """
    if (fraction is None) == (threshold is None):
        raise InputError("select() needs exactly one of fraction= (e.g. 0.5 for the top 50%) or threshold=")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise InputError(f"fraction={fraction!r} must be in (0, 1]")
    if nulls not in NULL_POLICIES:
        raise InputError(f"nulls={nulls!r}; use one of {', '.join(NULL_POLICIES)}")
    if order not in ("original", "rank"):
        raise InputError(f"order={order!r}; use 'original' or 'rank'")
    if stratify_by is not None and fraction is None:
        raise InputError("stratify_by= keeps a fraction of each group: pass fraction=, not threshold=")
    is_list = isinstance(ds, list)
    n = len(ds)
    if by in (None, "auto"):
        by = resolve_auto(list(ds[0]) if is_list and ds else [] if is_list else ds.column_names, check)
    groups = None
    if stratify_by is not None:
        if is_list and any(stratify_by not in r for r in ds):
            raise InputError(f"stratify_by={stratify_by!r}: some rows have no such column; give every row one "
                             "(e.g. its task or source)")
        groups = [r[stratify_by] for r in ds] if is_list else _column_values(ds, stratify_by)

    if by == "random":
        if threshold is not None:
            raise InputError("by='random' takes fraction=, not threshold=")
        import numpy as np

        perm = np.random.default_rng(seed).permutation(n).tolist()
        values: list = [None] * n
        ranked = perm
        column, desc = "random", True
        for r, i in enumerate(perm):
            values[i] = r + 1
    else:
        column, default_desc = resolve_by(by)
        desc = default_desc if descending is None else bool(descending)
        if is_list and any(column not in r for r in ds):
            raise InputError(f"column {column!r} (by={by!r}) is missing from some rows; score them with that method "
                             "(MethodScorer(methods=[...]) or saev-curate score --methods) or pass by=<a column they have>")
        values = [r[column] for r in ds] if is_list else _column_values(ds, column)
        ranked = rank_rows(values, descending=desc)

    null_rows = [i for i in range(n) if _is_null(values[i])] if by != "random" else []
    if null_rows and nulls == "raise":
        raise InputError(f"{len(null_rows)} row(s) have a null {column!r} (first: row {null_rows[0]}); "
                         "see their saev_error, or pass nulls='drop' / 'keep'")
    if null_rows and n:
        from saev_curate.core.row_errors import check_usable

        err_values = (ds["saev_error"] if not is_list and "saev_error" in (getattr(ds, "column_names", None) or [])
                      else [r.get("saev_error") for r in ds] if is_list else [None] * n)
        nulls_set = set(null_rows)
        row_errors = [((err_values[i] or f"no {column} (null)") if i in nulls_set else None) for i in range(n)]
        check_usable(n, row_errors, min_usable_share=min_usable_share, what="rows", action="select", report=False)
    word = "top" if desc else "bottom"
    if fraction is not None and groups is not None:
        size: dict = {}
        for g in groups:
            size[g] = size.get(g, 0) + 1
        taken: dict = {}
        chosen = []
        for i in ranked:  # best first: each group takes its own top round_half_up(fraction x its rows)
            g = groups[i]
            if taken.get(g, 0) < kept_count(fraction, size[g]):
                taken[g] = taken.get(g, 0) + 1
                chosen.append(i)
        rule = f"{word} {fraction:.4g} by {column} within each {stratify_by}"
    elif fraction is not None:
        k = min(kept_count(fraction, n), len(ranked))
        chosen = ranked[:k]
        rule = f"{word} {fraction:.4g} by {column}"
    else:
        ok = (lambda v: v >= threshold) if desc else (lambda v: v <= threshold)
        chosen = [i for i in ranked if ok(float(values[i]))]
        rule = f"{column} {'>=' if desc else '<='} {threshold}"
    rank_of = {i: r + 1 for r, i in enumerate(ranked)}
    kept_set = set(chosen)
    if null_rows and nulls == "keep":
        kept_set.update(null_rows)
    if n and not kept_set:
        raise InputError(f"select: {rule} keeps no row of {n} ({len(ranked)} with a score"
                         + (f", best {float(values[ranked[0]]):.4g}" if ranked else "") + "); give a larger "
                         "fraction, a threshold the scores reach, or groups of at least 1/fraction rows")
    if null_rows and nulls == "drop":
        log.warning("select(by=%r): dropped %d row(s) with a null score (see the report's saev_keep_reason)",
                    column, len(null_rows))

    errors = None
    if null_rows and not is_list and "saev_error" in (getattr(ds, "column_names", None) or []):
        errors = ds["saev_error"]
    report = []
    for i in range(n):
        v = values[i]
        if i in rank_of:
            r = rank_of[i]
            reason = (f"kept: rank {r} of {len(ranked)}, {rule}" if i in kept_set
                      else f"dropped: rank {r} of {len(ranked)}, outside {rule}")
        else:
            why = (errors[i] if errors is not None and errors[i] else
                   f"score {v} is not finite" if isinstance(v, float) and math.isinf(v) else "no score")
            reason = (f"kept: null {column} ({why}), nulls='keep'" if i in kept_set
                      else f"dropped: null {column} ({why})")
        report.append({"row_index": i, "saev_keep": i in kept_set, "saev_rank": rank_of.get(i),
                       "value": None if _is_null(v) else float(v), "saev_keep_reason": reason})

    if order == "rank":
        keep_idx = [i for i in ranked if i in kept_set] + [i for i in null_rows if i in kept_set]
    else:
        keep_idx = sorted(kept_set)
    kept = [ds[i] for i in keep_idx] if is_list else ds.select(keep_idx)
    if not return_report:
        return kept
    if is_list:
        return kept, report
    from datasets import Dataset, Features, Value

    feats = Features({"row_index": Value("int64"), "saev_keep": Value("bool"), "saev_rank": Value("int64"),
                      "value": Value("float64"), "saev_keep_reason": Value("string")})
    return kept, Dataset.from_list(report, features=feats)


def selection_report(ds, by: str | None = None, **kwargs):
    """Only the per-row report of :func:`select` (same arguments)."""
    return select(ds, by, return_report=True, **kwargs)[1]


def fraction_sweep(ds, by: str | None = None, fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                   **kwargs) -> dict[float, Any]:
    """The paper's cumulative top-X% subsets: ``{fraction: kept rows}``."""
    return {f: select(ds, by, fraction=f, **kwargs) for f in fractions}


def rank_average(columns: dict[str, list], higher_is_cleaner: dict[str, bool] | None = None) -> list[float | None]:
    """One score from several: each row's mean percentile rank (0 = worst, 1 = best) over ``columns``
    (name -> values; ``higher_is_cleaner[name]`` False flips a column such as perplexity).  A row null in
    any column is null: a combined score needs every part.  Ties share their mean rank."""
    import numpy as np
    from scipy.stats import rankdata

    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise InputError(f"rank_average: the columns have different lengths {sorted(lengths)}")
    n = lengths.pop()
    parts = []
    for name, values in columns.items():
        sign = 1.0 if (higher_is_cleaner or {}).get(name, True) else -1.0
        x = np.array([np.nan if _is_null(v) else sign * float(v) for v in values])
        ok = ~np.isnan(x)
        r = np.full(n, np.nan)
        if ok.sum() > 1:
            r[ok] = (rankdata(x[ok]) - 1) / (ok.sum() - 1)
        elif ok.sum() == 1:
            r[ok] = 0.5
        parts.append(r)
    mean = np.mean(parts, axis=0)
    return [None if np.isnan(v) else float(v) for v in mean]

"""The one rule for rows that cannot be used, shared by every command and the functions behind them.

* When no row, or fewer than ``min_usable_share`` of them, could be used, the run fails with
  :class:`TooFewUsableRows`, whose message names the most common row errors with their counts
  (so a wrong column name or a broken image folder is found at once, not after a day of "results").
* When some rows failed, the run ends with a one-line summary (counts by reason) on stderr and in its
  output metadata (:func:`summary`).

Reasons are grouped after removing what differs from row to row (quoted values, numbers).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Any, Iterable

from saev_curate.core.errors import InputError

__all__ = ["DEFAULT_MIN_USABLE_SHARE", "TooFewUsableRows", "check_usable", "count_reasons", "reason_of",
           "summary", "summary_line"]

#: fail when fewer than this share of the rows could be used (0: only when none could)
DEFAULT_MIN_USABLE_SHARE = 0.5
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_IMAGE_PREFIX = re.compile(r"^image \d+: ")


class TooFewUsableRows(InputError):
    """No row (or too small a share of rows) could be used; ``counts`` holds the reasons, ``result`` any
    partial result the run produced (e.g. the scored dataset)."""

    def __init__(self, message: str, counts: Counter, result: Any = None):
        super().__init__(message)
        self.counts = counts
        self.result = result


def reason_of(error: str) -> str:
    """An error message with its row-specific parts (quoted values, numbers) replaced, for grouping."""
    text = _QUOTED.sub("'…'", _IMAGE_PREFIX.sub("", str(error)))
    text = _NUMBER.sub("N", text)
    return text if len(text) <= 200 else text[:197] + "..."


def count_reasons(errors: Iterable[str | None]) -> Counter:
    """Reason -> number of rows, over the non-null errors: rows whose errors differ only in row-specific
    parts (quoted values, numbers) count together, under the first such message seen (an example)."""
    counts: Counter = Counter()
    example: dict[str, str] = {}
    for e in errors:
        if e is None:
            continue
        key = reason_of(e)
        text = example.setdefault(key, _IMAGE_PREFIX.sub("", str(e))[:400])
        counts[text] += 1
    return counts


def _top(counts: Counter, k: int) -> str:
    parts = [f"{n} x {reason}" for reason, n in counts.most_common(k)]
    rest = sum(counts.values()) - sum(n for _, n in counts.most_common(k))
    if rest:
        parts.append(f"{rest} more of {len(counts) - k} other kinds")
    return "; ".join(parts)


def summary(n_total: int, errors: Iterable[str | None]) -> dict[str, Any]:
    """For output metadata: rows, failed rows and the counts by reason (most common first)."""
    counts = count_reasons(errors)
    return {"n_rows": n_total, "n_failed": sum(counts.values()), "failed_by_reason": dict(counts.most_common())}


def summary_line(n_total: int, errors: Iterable[str | None], what: str = "rows") -> str | None:
    """``"3 of 8 rows failed: 2 x ...; 1 x ..."``, or None when no row failed."""
    counts = count_reasons(errors)
    n_failed = sum(counts.values())
    if not n_failed:
        return None
    return f"{n_failed} of {n_total} {what} failed: {_top(counts, 3)}"


def check_usable(n_total: int, errors: Iterable[str | None], *, min_usable_share: float | None = None,
                 what: str = "rows", action: str = "the run", result: Any = None, report: bool = True
                 ) -> dict[str, Any]:
    """Apply the rule: raise :class:`TooFewUsableRows` when no row, or fewer than ``min_usable_share`` of
    ``n_total``, could be used; else print the one-line summary of failed rows to stderr (``report``) and
    return :func:`summary` for the output metadata."""
    errors = list(errors)
    share = DEFAULT_MIN_USABLE_SHARE if min_usable_share is None else float(min_usable_share)
    if not 0.0 <= share <= 1.0:
        raise InputError(f"min_usable_share={share} must lie in [0, 1] (--min-usable-share)")
    counts = count_reasons(errors)
    n_failed = sum(counts.values())
    n_ok = n_total - n_failed
    if n_total > 0 and (n_ok == 0 or n_ok < share * n_total):
        head = (f"no {what[:-1] if what.endswith('s') else what} could be used ({n_failed} of {n_total} failed)"
                if n_ok == 0 else
                f"only {n_ok} of {n_total} {what} could be used ({n_ok / n_total:.0%}, less than the required "
                f"{share:.0%}; --min-usable-share / min_usable_share)")
        raise TooFewUsableRows(f"{action} stopped: {head}. Most common errors: {_top(counts, 3)}. Fix the data or "
                               "the settings these errors name"
                               + ("" if n_ok == 0 else ", or lower --min-usable-share to accept the rest"),
                               counts, result)
    line = summary_line(n_total, errors, what)
    if line and report:
        print(f"saev-curate: {line}", file=sys.stderr)
    return summary(n_total, errors)

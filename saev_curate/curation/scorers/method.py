"""Any methods of the table as one scorer: the columns of ``methods`` (:mod:`saev_curate.curation.methods`), each
scorer they need run once per batch, so ``saev-curate score --methods``, the callback, the demo and the benchmarks
share one scoring path."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from saev_curate.core.errors import InputError
from saev_curate.curation.config import DEFAULT_CONTROL_PROMPT, ScoreConfig
from saev_curate.curation.methods import METHODS, SHAPES, data_shape, get_method
from saev_curate.curation.scorers.base import Scorer
from saev_curate.curation.scorers.perplexity import ResponsePerplexityScorer
from saev_curate.curation.scorers.saev import SaevScorer, saev_columns
from saev_curate.io.fingerprint import module_fingerprint, processor_fingerprint, sae_fingerprint

__all__ = ["DEFAULT_METHODS", "MethodScorer"]

_MAIN_PASS = frozenset({"sae", "weights", "pairs", "readout", "response", "pair"})
#: computed when no methods are named: everything one SAE-V pass and one likelihood pass give
DEFAULT_METHODS = tuple(m.name for m in METHODS.values()
                        if m.needs <= _MAIN_PASS and m.family != "difficulty" and m.column is not None
                        and m.name != "saev_score_any")


def _part(method) -> str | None:
    """Which scorer computes a method's column: ``saev`` (the main SAE-V pass), ``saev_any`` (the paper's
    Algorithm 1 feature set, a second pass), ``ppl`` (the likelihood pass) or None (no column)."""
    if method.column is None:
        return None
    if method.name == "saev_score_any":
        return "saev_any"
    if "clip" in method.needs:
        raise InputError(f"{method.name} needs a CLIP model: score with saev_curate.ClipScorer")
    return "saev" if "sae" in method.needs else "ppl"


class MethodScorer(Scorer):
    """The columns of ``methods`` (names of the table; default :data:`DEFAULT_METHODS`) for
    ``ds.map(scorer, batched=True)``: the SAE-V scorer's columns (with the control prompt when a method needs it),
    ``saev_score_any``, and the likelihood columns (``saev_ppl``, ``saev_min_token_logprob``), each only when a
    named method needs it.  A method the data's shape cannot give (a margin on rows without a rejected response)
    is refused naming the columns it needs.  ``sae`` and ``weights`` may be None when no method needs them.
    Errors of every part go to one ``saev_error`` column (``part: reason``)."""

    FINGERPRINTS = {"model": module_fingerprint, "processor": processor_fingerprint, "sae": sae_fingerprint,
                    "weights": lambda w: w.fingerprint()}
    ROLES = ("model", "sae", "weights", "processor")

    def __init__(self, model, processor=None, sae=None, weights=None, *, methods=None,
                 config: ScoreConfig | None = None, prefix: str = "saev_", device: str | None = None,
                 dtype: str | None = None, **options: Any):
        if isinstance(methods, str):
            methods = [methods]
        if methods is not None:
            if not methods:
                raise InputError("methods=[]: name at least one method of the table (or None for the defaults)")
            methods = list(dict.fromkeys(get_method(n).name for n in methods))
            if not any(_part(METHODS[n]) for n in methods):
                raise InputError(f"methods {methods} need no scoring (random ranks without a column)")
        named = methods if methods is not None else [n for n in DEFAULT_METHODS if sae is not None
                                                     or _part(METHODS[n]) == "ppl"]
        needs_sae = any(_part(METHODS[n]) in ("saev", "saev_any") for n in named)
        if needs_sae and (sae is None or weights is None):
            raise InputError(f"methods {[n for n in named if _part(METHODS[n]) in ('saev', 'saev_any')]} need an "
                             "SAE and cross-modal weights (sae=, weights=)")
        cfg = ScoreConfig.of(config, **options)
        if cfg.control_prompt is None and any("control" in METHODS[n].needs for n in named):
            cfg = replace(cfg, control_prompt=DEFAULT_CONTROL_PROMPT)
        # the batch size is how rows are fed, not what they score: kept out of the fingerprint (a resumed run may
        # change it)
        config_doc = {k: v for k, v in cfg.to_dict().items() if k != "score_batch_size"}
        super().__init__(prefix=prefix, device=device, methods=methods, named=named, config=config_doc, dtype=dtype)
        self.add_role("model", model)
        self.add_role("processor", processor, optional=True)
        self.add_role("sae", sae if needs_sae else None, optional=True)
        self.add_role("weights", weights if needs_sae else None, optional=True)
        self._parts: dict[str, Scorer] | None = None
        #: part -> [seconds, rows] spent scoring in this process (what a method costs: its part's seconds per row)
        self.timing: dict[str, list] = {}

    # -------------------------------------------------------------- the parts
    def methods_for(self, keys: list[str]) -> list[str]:
        """The methods this scorer computes on a dataset with columns ``keys``: the named ones (a method the data's
        shape cannot give is an error), or the defaults the shape allows."""
        shape = data_shape(keys)
        out = []
        for name in self.settings["named"]:
            missing = (METHODS[name].needs & {"response", "pair"}) - SHAPES[shape]
            if not missing:
                out.append(name)
            elif self.settings["methods"] is not None:
                raise InputError(f"method {name} needs {' and '.join(sorted(missing))} columns (chosen/rejected, "
                                 f"or a completion); this dataset has {shape.replace('_', '-')} rows (columns: "
                                 f"{', '.join(keys)}); drop it from the methods or score preference rows")
        return out

    def _needed(self, keys: list[str]) -> list[str]:
        """The parts to run on a dataset with columns ``keys``, in output order."""
        wanted = {_part(METHODS[n]) for n in self.methods_for(keys)}
        return [p for p in ("saev", "saev_any", "ppl") if p in wanted]

    def _build_parts(self) -> dict[str, Scorer]:
        if self._parts is None:
            o = self._objs
            cfg = ScoreConfig(**self.settings["config"])
            kw = dict(prefix=self.prefix, device=self.device)
            build = {"saev": lambda: SaevScorer(o["model"], o["processor"], o["sae"], o["weights"], config=cfg, **kw),
                     "saev_any": lambda: SaevScorer(o["model"], o["processor"], o["sae"], o["weights"],
                                                    config=replace(cfg, feature_set="any", responses="no",
                                                                   control_prompt=None), **kw),
                     "ppl": lambda: ResponsePerplexityScorer(o["model"], o["processor"], **kw)}
            wanted = {_part(METHODS[n]) for n in self.settings["named"]}
            self._parts = {k: f() for k, f in build.items() if k in wanted}
        return self._parts

    @property
    def parts(self) -> dict[str, Scorer]:
        """The scorers this one runs (``saev``, ``saev_any``, ``ppl``), built from the loaded objects."""
        self.setup()
        return self._build_parts()

    def bind(self) -> None:
        if "processor" not in self._objs:
            raise InputError("processor=None needs the model given as a path (its processor is loaded from the same "
                             "folder); pass the processor")
        self._parts = None
        self._build_parts()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._parts = None
        self.timing = {}

    def seconds_per_row(self, method: str) -> float | None:
        """What scoring one row with ``method`` cost in this process: its part's seconds per row (a method shares
        its forward pass with every method of the same part; None before any row was scored)."""
        seconds, rows = self.timing.get(_part(get_method(method)), (0.0, 0))
        return seconds / rows if rows else None

    # -------------------------------------------------------------- columns and scoring
    def _part_columns(self, part: str, keys: list[str]) -> dict[str, str]:
        """A part's short columns as this scorer writes them (its errors merge into ``error``)."""
        cfg = self.settings["config"]
        if part == "saev":
            cols = saev_columns(keys, responses=ScoreConfig(**cfg).responses_value, control_prompt=cfg["control_prompt"])
            return {k: v for k, v in cols.items() if k != "error"}
        if part == "saev_any":
            return {"score_any": "float64"}
        return {k: v for k, v in ResponsePerplexityScorer.COLUMNS.items() if k != "ppl_error"}

    def columns_for(self, keys: list[str] | None = None) -> dict[str, str]:
        keys = list(keys or [])
        out: dict[str, str] = {}
        for part in self._needed(keys):
            out.update(self._part_columns(part, keys))
        out["error"] = "string"
        return out

    def score_rows(self, rows: list[dict], keys: list[str]) -> dict[str, list]:
        parts = self._build_parts()
        n = len(rows)
        out: dict[str, list] = {}
        errors: list[list[str]] = [[] for _ in range(n)]
        for part in self._needed(keys):
            t0 = time.perf_counter()
            cols = parts[part].score_rows(rows, keys)
            self.timing.setdefault(part, [0.0, 0])
            self.timing[part][0] += time.perf_counter() - t0
            self.timing[part][1] += n
            err = cols.get("error" if part != "ppl" else "ppl_error", [None] * n)
            for i, e in enumerate(err):
                if e is not None and (part == "saev" or not errors[i]):  # saev_any repeats the main pass's errors
                    errors[i].append(e if part == "saev" else f"{'likelihood' if part == 'ppl' else part}: {e}")
            if part == "saev_any":
                out["score_any"] = cols["score"]
            else:
                out.update({k: cols[k] for k in self._part_columns(part, keys)})
        out["error"] = ["; ".join(e) if e else None for e in errors]
        return {k: out.get(k, [None] * n) for k in self.columns_for(keys)}

    def map(self, dataset, **kwargs):
        """:meth:`Scorer.map`, after checking that the data's shape gives every named method."""
        names = getattr(dataset, "column_names", None)
        if isinstance(names, list):
            self.methods_for(names)
        return super().map(dataset, **kwargs)

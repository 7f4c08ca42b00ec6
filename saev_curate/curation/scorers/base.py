"""One base for every scorer (in the spirit of datatrove's ``BaseFilter`` and data-juicer's stats ops).

A scorer is a picklable callable for ``ds.map(scorer, batched=True)`` that adds typed, prefixed
columns. The base owns everything that is not scoring:

* **columns**: a subclass declares its columns once, ``COLUMNS = {"score": "float64", ..., "error":
  "string"}`` (short name -> Arrow type); the base prefixes them (``saev_`` by default), builds
  ``features`` and returns every column as a typed Arrow-backed list, so the output types are fixed
  whatever a batch holds. A plain ``ds.map(scorer, batched=True)`` therefore works without
  ``features=`` even when the first batch has no error (or no score) at all;
* **not selection**: which column ranks rows, and which way, is the methods table's
  (:mod:`saev_curate.curation.methods`); a scorer only computes;
* **objects and pickling**: models, processors, SAEs, weights are given as objects or paths (roles).
  Pickling keeps paths and content fingerprints only (a small, deterministic state: ``datasets``'
  fingerprint of the map, hence cache hits); in-memory objects go to a process-wide registry keyed
  by fingerprint, where forked ``num_proc`` workers find them again;
* **workers**: a scorer unpickled in a forked worker computes on one CPU thread (OpenMP's pool does
  not survive fork) and, with ``with_rank=True``, takes ``cuda:{rank % n_gpus}``;
* **map**: ``Dataset`` (``num_proc``, ``with_rank``), ``DatasetDict``, ``IterableDataset`` (+ dict).

A subclass implements ``score_rows(rows, keys) -> {short column: list}`` and, when it has roles
given as paths, ``load_role(role, path, device)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Mapping
from typing import Any, Callable, ClassVar

import torch

from saev_curate.core.errors import InputError, SaevError

__all__ = ["Scorer", "TypedColumn", "rows_of"]

# Live objects of scorers built from in-memory models, keyed by role and content fingerprint: a pickled
# scorer carries only the key, so forked `num_proc` workers find them without pickling a model.
_LIVE: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
# The process that imported this module; a scorer unpickled in another pid is in a forked worker.
_IMPORT_PID = os.getpid()


class TypedColumn(list):
    """A list of values that becomes an Arrow array of a fixed type (``datasets`` calls
    ``pa.array(values)``, which honours ``__arrow_array__``): an all-null column keeps its type."""

    def __init__(self, values, dtype: str):
        super().__init__(values)
        self.dtype = dtype

    def __arrow_array__(self, type=None):
        import pyarrow as pa

        return pa.array(list(self), type=type or pa.type_for_alias(self.dtype))


def rows_of(batch) -> tuple[list[dict], list[str]]:
    """A ``datasets`` batch (dict of columns) or a list of row dicts -> (rows, column names)."""
    from saev_curate.vlm.rows import batch_to_rows

    if isinstance(batch, Mapping):
        keys = list(batch.keys())
        return batch_to_rows({k: _column(batch, k) for k in keys}), keys
    if not isinstance(batch, (list, tuple)):
        raise InputError(f"a scorer takes a datasets batch (dict of columns) or a list of row dicts, got "
                         f"{type(batch).__name__}")
    rows = list(batch)
    return rows, (list(rows[0]) if rows else [])


def _column(batch, key: str) -> list:
    """One column of a batch; from ``datasets``' lazy batch, ``Image`` columns come undecoded (``{"bytes",
    "path"}`` dicts) so that each image is decoded per row by the library (a corrupt image, a missing file or
    a decompression bomb is that row's ``error``, not an exception that ends the whole ``map``)."""
    table = getattr(batch, "pa_table", None)
    formatter = getattr(batch, "formatter", None)
    features = getattr(formatter, "features", None)
    if table is not None and features is not None and key in features and key in table.column_names:
        from saev_curate.io.datasets import has_image_feature

        if has_image_feature(features[key]):
            return table.column(key).to_pylist()
    return batch[key]


class Scorer:
    """Base class of every scorer; see the module docstring for what it owns."""

    #: short column name -> Arrow type, in output order (declare once per subclass)
    COLUMNS: ClassVar[dict[str, str]] = {}
    #: role -> fingerprint function for in-memory objects of that role
    FINGERPRINTS: ClassVar[dict[str, Callable[[Any], str]]] = {}
    #: roles a path-built scorer must load before scoring
    ROLES: ClassVar[tuple[str, ...]] = ()
    DEFAULT_PREFIX: ClassVar[str] = "saev_"
    DEFAULT_BATCH_SIZE: ClassVar[int] = 8
    VERSION: ClassVar[int] = 1

    def __init__(self, *, prefix: str | None = None, device: str | None = None, **settings: Any):
        self.settings: dict[str, Any] = {**settings, "prefix": self.DEFAULT_PREFIX if prefix is None else prefix}
        self.device = device
        self._specs: dict[str, dict[str, Any]] = {}
        self._objs: dict[str, Any] = {}

    # -------------------------------------------------------------- columns
    @property
    def prefix(self) -> str:
        return self.settings["prefix"]

    def column(self, name: str) -> str:
        return self.prefix + name

    def columns_for(self, keys: list[str] | None = None) -> dict[str, str]:
        """Short name -> type of the columns written for a dataset with columns ``keys`` (default: all)."""
        return dict(self.COLUMNS)

    def output_columns(self, keys: list[str] | None = None) -> list[str]:
        return [self.column(c) for c in self.columns_for(keys)]

    def features(self, dataset=None):
        """``datasets.Features`` of the output: ``dataset``'s own features plus the score columns."""
        from datasets import Features, Value

        feats = getattr(dataset, "features", None)
        out = dict(feats) if feats is not None else {}
        keys = list(out) if feats is not None else None
        for short, dtype in self.columns_for(keys).items():
            out[self.column(short)] = Value(dtype)
        return Features(out)

    # -------------------------------------------------------------- objects, fingerprints, pickling
    def add_role(self, role: str, obj, *, optional: bool = False) -> None:
        """Register ``obj`` (an object or a path; None only for ``optional`` roles) under ``role``."""
        if obj is None:
            if not optional:
                raise InputError(f"{type(self).__name__} needs a {role}")
            self._specs[role] = {"kind": "none"}
        elif isinstance(obj, (str, os.PathLike)):
            self._specs[role] = {"kind": "path", "path": str(obj), "fingerprint": None}
        else:
            self._objs[role] = obj
            self._specs[role] = {"kind": "live", "fingerprint": None}

    def role_fingerprint(self, role: str) -> str:
        from saev_curate.io.fingerprint import path_fingerprint

        spec = self._specs[role]
        if spec["kind"] == "none":
            return "none"
        if spec.get("fingerprint") is None:
            if spec["kind"] == "path":
                spec["fingerprint"] = path_fingerprint(spec["path"])
            else:
                obj = self._objs[role]
                spec["fingerprint"] = self.FINGERPRINTS[role](obj)
                _LIVE[f"{role}:{spec['fingerprint']}"] = obj
        return spec["fingerprint"]

    def state(self) -> dict[str, Any]:
        """Everything the output depends on besides the roles' content (subclasses add theirs)."""
        return {}

    def fingerprint(self) -> str:
        """Deterministic hash of everything the output depends on."""
        doc = {"class": type(self).__name__, "version": self.VERSION, "settings": self.settings, **self.state(),
               "inputs": {r: (self._specs[r]["kind"], self.role_fingerprint(r)) for r in self._specs}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def __getstate__(self) -> dict[str, Any]:
        for role in self._specs:
            self.role_fingerprint(role)
        return {"settings": self.settings, "device": self.device, "specs": self._specs, **self.state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.settings = state.pop("settings")
        self.device = state.pop("device")
        self._specs = state.pop("specs")
        self.restore_state(state)
        self._objs = {}
        self._worker = os.getpid() != _IMPORT_PID

    def restore_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state` on unpickling."""

    # -------------------------------------------------------------- workers and loading
    def _resolve_device(self, rank: int | None) -> str | None:
        if self.device is not None:
            return self.device
        if torch.cuda.is_available():
            return f"cuda:{(rank or 0) % torch.cuda.device_count()}"
        return None

    def setup(self, rank: int | None = None) -> None:
        """Once per process before scoring: worker threads, then every role's object."""
        if getattr(self, "_worker", False):
            # a forked datasets worker: OpenMP's thread pool does not survive fork (libgomp hangs on the
            # first parallel region when the parent used it), so each worker computes on one thread
            if not torch.cuda.is_available():
                torch.set_num_threads(1)
            self._worker = False
        missing = [r for r in self.ROLES if r not in self._objs and self._specs[r]["kind"] != "none"]
        if not missing:
            return
        device = self._resolve_device(rank)
        for role in missing:
            if role in self._objs:  # loaded alongside an earlier role
                continue
            spec = self._specs[role]
            if spec["kind"] == "live":
                key = f"{role}:{spec['fingerprint']}"
                if key not in _LIVE:
                    raise SaevError(
                        f"this {type(self).__name__} was built from an in-memory {role} and was unpickled in a "
                        "process that does not have it (a spawned worker or another machine); build the scorer "
                        "from paths (model folder, SAE folder, weights folder) to use it there")
                self._objs[role] = _LIVE[key]
            else:
                self.load_role(role, spec.get("path"), device)
        self.bind()

    def load_role(self, role: str, path: str | None, device: str | None) -> None:
        """Load ``role`` from ``path`` into ``self._objs``: the library's roles (``model``, with its processor when
        none was given; ``processor``; ``sae``; ``weights``); a subclass with other roles overrides this."""
        if role == "model":
            from saev_curate.vlm.load import load_vlm

            model, processor = load_vlm(path, dtype=self.settings.get("dtype"), device=device)
            self._objs["model"] = model
            if self._specs.get("processor", {}).get("kind") == "none":
                self._objs["processor"] = processor
        elif role == "processor":
            from saev_curate.vlm.load import load_processor  # handles Qwen2-VL without video processor

            self._objs["processor"] = load_processor(path)
        elif role == "sae":
            from saev_curate.sae.io import load_sae

            self._objs["sae"] = load_sae(path, device=device)
        elif role == "weights":
            from saev_curate.curation.crossmodal import CrossModalWeights

            self._objs["weights"] = CrossModalWeights.load(path)
        else:
            raise InputError(f"{type(self).__name__} cannot load a {role} from a path; pass the object")

    def bind(self) -> None:
        """Check the loaded objects against each other (after :meth:`setup` loaded them)."""

    # -------------------------------------------------------------- scoring
    def score_rows(self, rows: list[dict], keys: list[str]) -> dict[str, list]:
        """Score ``rows`` (dicts of one row each; ``keys`` are the dataset's columns): one list per short
        column name of :meth:`columns_for`, one value per row (None where a row has no value)."""
        raise NotImplementedError

    def __call__(self, batch, rank: int | None = None) -> dict[str, TypedColumn]:
        self.setup(rank)
        rows, keys = rows_of(batch)
        values = self.score_rows(rows, keys)
        return {self.column(short): TypedColumn(values[short], dtype) for short, dtype in self.columns_for(keys).items()}

    def error_column(self, keys: list[str] | None = None) -> str | None:
        """The full name of this scorer's per-row error column (None if it has none)."""
        short = next((c for c in self.columns_for(keys) if c == "error" or c.endswith("_error")), None)
        return None if short is None else self.column(short)

    def check_usable(self, scored, *, min_usable_share: float | None = None, action: str | None = None
                     ) -> dict[str, Any]:
        """The row rule on a scored ``Dataset``: raise :class:`~saev_curate.core.row_errors.TooFewUsableRows` (with
        ``.result = scored``) when no row, or fewer than ``min_usable_share``, could be scored; else report
        the failed rows in one line on stderr and return their summary."""
        from saev_curate.core.row_errors import check_usable

        col = self.error_column(list(scored.column_names))
        errors = scored[col] if col and col in scored.column_names else []
        return check_usable(len(scored), errors, min_usable_share=min_usable_share, what="rows",
                            action=action or f"{type(self).__name__}.map", result=scored)

    def _empty_output(self, dataset):
        """A 0-row ``Dataset`` with this scorer's typed columns added (``map`` never calls the scorer on it)."""
        out = dataset
        for name, feature in self.features(dataset).items():
            if name not in out.column_names:
                out = out.add_column(name, [], feature=feature)
        return out

    def map(self, dataset, *, batch_size: int | None = None, num_proc: int | None = None,
            min_usable_share: float | None = None, **kwargs):
        """``dataset.map(self, batched=True, ...)`` for a ``Dataset`` (with ``with_rank=True``, ``num_proc``),
        a ``DatasetDict``, or a streaming ``IterableDataset`` / ``IterableDatasetDict``.

        For a ``Dataset`` (and each split of a ``DatasetDict``) the row rule applies: when no row, or fewer
        than ``min_usable_share`` (default :data:`~saev_curate.core.row_errors.DEFAULT_MIN_USABLE_SHARE`; 0 to
        turn the check off except for "no row at all"), could be scored, :class:`TooFewUsableRows` is raised
        naming the most common errors (the scored dataset is on its ``.result``); otherwise a one-line
        summary of failed rows goes to stderr.  A 0-row dataset comes back with the score columns."""
        from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

        kwargs.pop("batched", None)  # always batched
        kw = dict(batched=True, batch_size=batch_size or self.DEFAULT_BATCH_SIZE, **kwargs)
        if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
            if num_proc is not None:
                raise InputError("num_proc is not supported for a streaming IterableDataset")
            if isinstance(dataset, IterableDataset) and dataset.features is not None:
                kw.setdefault("features", self.features(dataset))
            return dataset.map(self, **kw)
        if not isinstance(dataset, (Dataset, DatasetDict)):
            raise InputError(f"{type(self).__name__}.map takes a datasets Dataset, DatasetDict or IterableDataset, "
                             f"got {type(dataset).__name__}; for a list of row dicts call the scorer on it "
                             "(scorer(rows)) or use datasets.Dataset.from_list(rows)")
        kw.setdefault("desc", f"{type(self).__name__}")
        if isinstance(dataset, DatasetDict):
            kw.pop("batched")
            return DatasetDict({name: self.map(split, num_proc=num_proc, min_usable_share=min_usable_share, **kw)
                                for name, split in dataset.items()})
        kw.pop("batched")
        if len(dataset) == 0:
            return self._empty_output(dataset)
        scored = dataset.map(self, batched=True, with_rank=True, num_proc=num_proc, **kw)
        self.check_usable(scored, min_usable_share=min_usable_share)
        return scored

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

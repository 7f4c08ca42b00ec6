"""Re-score the training rows with the policy being trained, and make the trainer draw the best ones.

    callback = SaevRescoreCallback(scorer, every_n_steps=50, fraction=0.5)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor,
                         peft_config=lora)
    callback.attach(trainer)          # installs the sampler and registers the callback
    trainer.train()

What happens at a re-score (every ``every_n_steps`` optimizer steps, and/or at each epoch end,
and/or once before the first step):

1. each process takes its share of the training rows (all, or a seeded sample of ``sample_size``; process r of
   n takes every n-th row from the r-th), runs the **current policy** (LoRA adapters active; eval mode and no grad,
   train mode restored) up to the SAE's layer, and scores them through the scorers' own path
   (:class:`saev_curate.MethodScorer`, ``by``'s method); with ``refit_reference=N`` it first re-fits ω on N seeded
   rows (:meth:`CrossModalWeights.fit`, the same on every process);
2. the scores are gathered (``accelerate.utils.gather_object``) and every process makes the same new selection
   (top ``fraction`` by ``by``, or ``weighting="softmax"`` sampling weights) and hands it to the
   :class:`SelectionSampler`: the dataloader draws only those rows from the next batch group on (about one batch
   late: dataloaders look ahead);
3. metrics go to the trainer's log (hence wandb / tensorboard): ``saev/score_mean`` (the policy's mean
   cross-modal score over the scored rows; the SAE-V paper found it tracks benchmark scores),
   ``saev/kept_fraction``, ``saev/selection_change`` (Jaccard distance to the previous selection),
   ``saev/explained_variance`` (of the SAE on the policy's activations: it was trained on the base
   model and LoRA moves the residual stream), ``saev/n_scored``, ``saev/n_errors``, ``saev/rescore_seconds``.

State: ``on_save`` writes ``saev_rescore_state.json`` + ``.npz`` into the checkpoint folder (the
selection, its history within the epoch, the last scores, the schedule position); a run resumed from
that checkpoint draws the same rows as the uninterrupted run.  The callback is deliberately *not* a
``transformers.ExportableState``: per-row arrays do not belong in ``trainer_state.json``, a callback
rebuilt from JSON arguments could not hold a model, and a resume from a checkpoint that lacks an
``ExportableState`` entry raises ``KeyError`` at the next save.  A checkpoint without the side file
(written before the callback was added) resumes with a warning from the initial selection.

Limits: each process runs its own copy of the policy, so models sharded across ranks (DeepSpeed ZeRO-3, FSDP) are
not supported;
a selection changes which rows are drawn, never how many (a ``DataLoader`` reads its length once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from saev_curate.curation.config import ScoreConfig
from saev_curate.curation.methods import default_by, get_method
from saev_curate.curation.selection import kept_count, rank_rows
from saev_curate.integrations.sampler import SelectionSampler

log = logging.getLogger(__name__)

__all__ = ["SaevRescoreCallback", "STATE_FILE"]

STATE_FILE = "saev_rescore_state"  # .json (metadata) + .npz (arrays), in each checkpoint folder
_STATE_VERSION = 1


def _unwrap(model):
    """The module whose forward runs the policy: DDP/compile wrappers off, a PeftModel's base model
    (its LoRA layers are injected in place, so they stay active)."""
    for _ in range(4):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model = inner
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SaevRescoreCallback(TrainerCallback):
    """Re-score the training rows with the current policy on a schedule and re-select them.

    Args:
        scorer: a :class:`saev_curate.SaevScorer`; its SAE, cross-modal weights, layer and settings
            (``delta``, ``feature_set``, ``max_length``, ``exclude_special_tokens``, ``prefix``) are
            used, never its model (the trainer's policy is).  A scorer built from in-memory objects
            costs nothing; one built from paths loads its model once to reach the SAE, so rather pass
            ``sae=`` and ``weights=``.
        sae, weights, layer: the scorer's parts instead of ``scorer`` (objects or folders).
        config, options: a :class:`~saev_curate.ScoreConfig` and/or its fields by name (``delta=``,
            ``max_length=``, ``delta_rel=``, ...), as every entry point takes them.
        train_dataset: the rows to score, row ``i`` being row ``i`` of the trainer's training set
            (default: the trainer's ``train_dataset``; TRL keeps vision datasets row for row).
        processor: default: the trainer's ``processing_class``.
        every_n_steps: re-score after every N optimizer steps; ``at_epoch_end``: after each epoch;
            ``at_train_begin``: once before the first step (a fresh run only).
        fraction: keep the top fraction of the dataset's rows by ``by`` (``select``'s rules: ties to
            the earlier row, null scores never kept).  ``weighting="softmax"`` (with ``fraction=None``):
            instead draw every scored row with probability ∝ exp(score / ``temperature``).  Neither
            (``fraction=None``): monitor only, the scores are logged and the selection never changes.
        by: a method of the table (:mod:`saev_curate.curation.methods`: any SAE-V column, ``response_perplexity``,
            ...; its direction decides which rows are kept); default: the table's recommendation for the training
            rows' shape.
        sample_size: score a seeded sample of N rows per re-score (others keep their last score).
        refit_reference: re-fit ω on this many seeded rows with the policy before each re-score.
        initial_selection: ``"all"`` (default: the run draws exactly what a run without the callback
            draws until the first re-score) or ``"column"`` (select by the dataset's existing ``by``
            column, e.g. scores of the base model).
        num_samples: draws per epoch (default: the number of rows; fixed for the whole run).
        seed: default ``args.data_seed`` or ``args.seed``; seeds the sampler (with the epoch), the
            row samples and the reference subsets.
        batch_size: rows per scoring forward pass.
    """

    def __init__(self, scorer=None, *, train_dataset=None, every_n_steps: int | None = None,
                 at_epoch_end: bool = False, at_train_begin: bool = False, fraction: float | None = 0.5,
                 by: str | None = None, weighting: str | None = None, temperature: float = 1.0,
                 sample_size: int | None = None, refit_reference: int | None = None,
                 initial_selection: str = "all", num_samples: int | None = None, seed: int | None = None,
                 batch_size: int = 8, processor=None, sae=None, weights=None, layer: int | str | None = None,
                 config: ScoreConfig | None = None, **options: Any):
        from saev_curate.curation.crossmodal import CrossModalWeights
        from saev_curate.sae.io import load_sae

        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"every_n_steps={every_n_steps!r} must be a positive integer or None")
        if weighting not in (None, "softmax"):
            raise ValueError(f"weighting={weighting!r}; use None (top fraction) or 'softmax'")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(f"fraction={fraction!r} must be in (0, 1] (or None: re-score and log, never re-select)")
        if weighting is not None and fraction is not None:
            raise ValueError("weighting='softmax' draws every scored row by weight; pass fraction=None with it")
        if weighting is not None and not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be positive")
        if initial_selection not in ("all", "column"):
            raise ValueError(f"initial_selection={initial_selection!r}; use 'all' or 'column'")
        if sample_size is not None and sample_size < 1:
            raise ValueError(f"sample_size={sample_size!r} must be positive")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give the rows per scoring pass, a positive integer")
        if scorer is None and (sae is None or weights is None):
            raise ValueError("SaevRescoreCallback needs a scorer, or sae= and weights=")
        if scorer is not None:  # its SAE, weights, layer and settings; never its model (the trainer's policy is)
            s = scorer.settings
            config = ScoreConfig.of(config, delta=s["delta"], feature_set=s["feature_set"], max_length=s["max_length"],
                                    exclude_special_tokens=s["exclude_special_tokens"], delta_rel=s.get("delta_rel"),
                                    control_prompt=s.get("control_prompt"))
            sae = scorer.sae if sae is None else sae
            weights = scorer.weights if weights is None else weights
            layer = scorer.layer if layer is None else layer
        self.config = ScoreConfig.of(config, **options)
        self.prefix = scorer.prefix if scorer is not None else "saev_"
        self.sae = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
        self.weights = CrossModalWeights.load(weights) if isinstance(weights, (str, os.PathLike)) else weights
        self.layer = layer if layer is not None else self.config.layer_value
        self.by_arg = by
        self.method = None if by is None else get_method(by)  # an unknown method fails here, not at the first step
        self.by = None if by is None else self._column(self.method)
        self.every_n_steps, self.at_epoch_end, self.at_train_begin = every_n_steps, at_epoch_end, at_train_begin
        self.fraction, self.weighting, self.temperature = fraction, weighting, float(temperature)
        self.sample_size, self.refit_reference = sample_size, refit_reference
        self.initial_selection, self.num_samples, self.seed = initial_selection, num_samples, seed
        self.batch_size = int(batch_size)
        self.processor = processor
        self.train_dataset = train_dataset

        self.trainer = None
        self.sampler: SelectionSampler | None = None
        self.scores: np.ndarray | None = None  # last `by` value per row, higher = cleaner (NaN: no score)
        self.last_rescore_step = -1
        self.n_rescores = 0
        self.last_metrics: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._resume_from = None
        self._restored = False

    # ------------------------------------------------------------------ installation
    def attach(self, trainer) -> "SaevRescoreCallback":
        """Install the selection sampler on ``trainer`` and register this callback (first in line, so
        the metrics it adds in ``on_log`` reach the reporting callbacks).  Call before ``train()``."""
        if self.trainer is not None and self.trainer is not trainer:
            raise ValueError("this SaevRescoreCallback is already attached to another trainer")
        self.trainer = trainer
        args = trainer.args
        if self.seed is None:
            self.seed = args.data_seed if args.data_seed is not None else args.seed
        if self.processor is None:
            self.processor = trainer.processing_class
        train = trainer.train_dataset
        if train is None or not hasattr(train, "__len__"):
            raise ValueError("SaevRescoreCallback needs a trainer with a map-style train_dataset (with a length)")
        if self.train_dataset is None:
            self.train_dataset = train
        if self.method is None:  # the methods table's recommendation for the training rows' shape
            self.method = get_method(default_by(getattr(self.train_dataset, "column_names", None)
                                                or list(self.train_dataset[0])))
            self.by = self._column(self.method)
        if len(self.train_dataset) != len(train):
            raise ValueError(
                f"train_dataset has {len(self.train_dataset)} rows but the trainer trains on {len(train)} "
                "(the trainer dropped or packed rows): row i must be the same row in both")
        if getattr(args, "packing", False):
            raise ValueError("packing=True merges rows; the selection needs one training example per row")
        if getattr(args, "train_sampling_strategy", "random") not in ("random", None):
            log.warning("SaevRescoreCallback replaces train_sampling_strategy=%r with its own sampler",
                        args.train_sampling_strategy)
        n = len(train)
        if self.fraction is not None and kept_count(self.fraction, n) < 1:
            raise ValueError(f"fraction={self.fraction} of the {n} training rows keeps no row; give at least "
                             f"{1 / n:.3g} (one row) or fraction=None to re-score and log only")
        self.sampler = SelectionSampler(n, seed=self.seed, num_samples=self.num_samples,
                                        group_size=args.per_device_train_batch_size * max(1, args.world_size))
        self.scores = np.full(n, np.nan)
        if self.initial_selection == "column":
            names = getattr(self.train_dataset, "column_names", None) or []
            if self.by not in names:
                raise ValueError(f"initial_selection='column' needs a {self.by!r} column in the dataset")
            values = self._cleaner(np.array([np.nan if v is None else float(v) for v in self.train_dataset[self.by]]))
            self.scores = values
            sel = self._selection_from(values)
            if sel is not None:
                self._apply_selection(sel)
        self._check_policy(trainer.model)

        # the hook: Trainer._get_train_sampler(self, train_dataset=None) builds the training sampler (DPOTrainer and
        # SFTTrainer do not override it); a subclass may instead return `callback.sampler_for(self)` from it
        trainer._get_train_sampler = self.sampler_for
        handler = trainer.callback_handler
        handler.callbacks = [cb for cb in handler.callbacks if cb is not self]
        handler.callbacks.insert(0, self)
        original_train = trainer.train

        def train(resume_from_checkpoint=None, *a, **kw):
            self._resume_from = resume_from_checkpoint
            return original_train(resume_from_checkpoint, *a, **kw)

        trainer.train = train
        return self

    def sampler_for(self, trainer_or_dataset=None, train_dataset=None) -> SelectionSampler:
        """What ``Trainer._get_train_sampler`` returns once attached (also usable from a subclass)."""
        if self.sampler is None:
            raise RuntimeError("SaevRescoreCallback.attach(trainer) was not called")
        return self.sampler

    def _check_policy(self, model) -> None:
        from saev_curate.curation.scorers import SaevScorer

        policy = _unwrap(model)
        # validates the SAE against the policy, the weights against the SAE, and resolves the layer
        probe = SaevScorer(policy, self.processor, self.sae, self.weights, self.layer, config=self.config)
        self.layer = probe.layer
        device = next(policy.parameters()).device
        if device.type != "meta" and next(self.sae.parameters()).device != device:
            self.sae = self.sae.to(device)  # encode where the policy's activations are

    # ------------------------------------------------------------------ selection
    def _selection_from(self, values: np.ndarray) -> dict[str, Any] | None:
        if self.fraction is None and self.weighting is None:
            return None  # monitor only
        n = len(values)
        valid = np.flatnonzero(~np.isnan(values))
        if valid.size == 0:
            raise RuntimeError("SAE-V re-scoring produced no score for any row (see saev/n_errors); "
                               "the selection is unchanged")
        if self.weighting == "softmax":
            w = np.zeros(n)
            z = values[valid] / self.temperature
            w[valid] = np.exp(z - z.max())
            return {"rows": None, "weights": w / w.sum()}
        ranked = rank_rows([None if np.isnan(v) else float(v) for v in values])  # select()'s rule and ties
        return {"rows": np.sort(np.asarray(ranked[:min(kept_count(self.fraction, n), len(ranked))], dtype=np.int64)),
                "weights": None}

    def _apply_selection(self, sel: dict[str, Any]) -> dict[str, float]:
        old = self.sampler.selection
        anchor = self.sampler.set_selection(rows=sel["rows"], weights=sel["weights"])
        n = self.sampler.n_rows

        def support(rows, weights):
            if weights is not None:
                return set(np.flatnonzero(weights > 0).tolist())
            return set(range(n)) if rows is None else set(rows.tolist())

        new_set, old_set = support(sel["rows"], sel["weights"]), support(old.rows, old.weights)
        union = len(new_set | old_set)
        if sel["weights"] is not None:
            w = sel["weights"]
            kept = float(w.sum() ** 2 / (w ** 2).sum()) / n  # effective sample size / rows
        else:
            kept = len(new_set) / n
        return {"saev/kept_fraction": kept,
                "saev/selection_change": 1.0 - len(new_set & old_set) / union if union else 0.0,
                "saev/selection_from_draw": float(anchor)}

    # ------------------------------------------------------------------ re-scoring
    def _rows(self, indices: list[int]) -> list[dict]:
        from saev_curate.vlm.rows import batch_to_rows

        ds = self.train_dataset
        if isinstance(ds, list):
            return [ds[i] for i in indices]
        return batch_to_rows(ds[indices])

    def _column(self, method) -> str:
        if method.column is None:
            raise ValueError(f"by={method.name!r}: the callback re-scores by a score column; random needs no callback")
        return self.prefix + method.column.removeprefix("saev_")

    def _cleaner(self, values: np.ndarray) -> np.ndarray:
        """``by`` values oriented so that higher is cleaner (the table's direction: perplexity is flipped)."""
        return values if self.method.higher_is_cleaner else -values

    @torch.no_grad()
    def _score_rows(self, model, indices: list[int], weights) -> tuple[np.ndarray, dict[str, Any]]:
        """``by`` values of ``indices`` (higher = cleaner; NaN where a row has no score) and the sums the metrics
        are made of (added up over the processes by :meth:`rescore`), through the scorers' own path
        (:class:`~saev_curate.MethodScorer`) with the current policy."""
        from saev_curate.curation.scorers import MethodScorer
        from saev_curate.curation.scorers.saev import Reconstruction

        scorer = MethodScorer(model, self.processor, self.sae, weights, methods=[self.method.name, "saev_score"],
                              config=ScoreConfig.of(self.config, layer=self.layer), prefix=self.prefix)
        recon = Reconstruction()
        scorer.parts["saev"].reconstruction = recon
        values = np.full(len(indices), np.nan)
        sums = {"score_sum": 0.0, "n_score": 0, "n_errors": 0}
        short = self.by.removeprefix(self.prefix)
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start:start + self.batch_size]
            rows = self._rows(chunk)
            cols = scorer.score_rows(rows, list(rows[0]) if rows else [])
            for j, (v, sc) in enumerate(zip(cols[short], cols["score"])):
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    sums["n_errors"] += 1
                    continue
                values[start + j] = float(v)
                if sc is not None:
                    sums["score_sum"] += float(sc)
                    sums["n_score"] += 1
        sums.update(sse=recon.sse, n_tok=recon.n, x_sum=None if recon.x_sum is None else recon.x_sum.cpu().numpy(),
                    x_sq=None if recon.x_sq is None else recon.x_sq.cpu().numpy())
        return self._cleaner(values), sums

    @staticmethod
    def _metrics(values: np.ndarray, parts: list[dict[str, Any]]) -> dict[str, float]:
        """The scoring metrics from every process's sums."""
        total = {k: sum(p[k] for p in parts) for k in ("score_sum", "n_score", "n_errors", "sse", "n_tok")}
        metrics = {"saev/n_scored": float(np.count_nonzero(~np.isnan(values))), "saev/n_errors": float(total["n_errors"])}
        if total["n_score"]:
            metrics["saev/score_mean"] = total["score_sum"] / total["n_score"]
        x = [p for p in parts if p["x_sum"] is not None]
        if total["n_tok"] > 1 and x:
            x_sum, x_sq = sum(p["x_sum"] for p in x), sum(p["x_sq"] for p in x)
            sst = float((x_sq - x_sum ** 2 / total["n_tok"]).sum())
            metrics["saev/explained_variance"] = 1.0 - total["sse"] / sst if sst > 0 else float("nan")
        return metrics

    def _sample_indices(self, n: int) -> list[int]:
        if self.sample_size is None or self.sample_size >= n:
            return list(range(n))
        rng = np.random.default_rng([abs(int(self.seed)), 7, self.n_rescores])
        return sorted(rng.choice(n, size=self.sample_size, replace=False).tolist())

    def rescore(self, model=None) -> dict[str, float]:
        """Re-score now with ``model`` (default: the trainer's) and re-select; returns the metrics.

        Under several processes every rank must call it (the trainer's events do): each scores its share of the
        rows (``indices[rank::world]``), the scores are gathered (``accelerate.utils.gather_object``) and every rank
        makes the same selection from them.
        """
        if self.sampler is None:
            raise RuntimeError("SaevRescoreCallback.attach(trainer) was not called")
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState()
        rank, world = state.process_index, state.num_processes
        t0 = time.perf_counter()
        policy = _unwrap(model if model is not None else self.trainer.model)
        weights = self.weights
        if self.refit_reference:  # every process fits the same ω (the same seeded rows): nothing to send
            from saev_curate.curation.crossmodal import CrossModalWeights

            weights = CrossModalWeights.fit(policy, self.processor, self.sae, self.train_dataset, self.layer,
                                            n_reference=self.refit_reference, seed=int(self.seed),
                                            batch_size=self.batch_size, max_length=self.config.score_max_length,
                                            exclude_special_tokens=self.config.exclude_special_tokens)
            self.weights = weights
        indices = self._sample_indices(self.sampler.n_rows)
        mine = indices[rank::world]  # this process's share; the others score theirs at the same time
        values, sums = self._score_rows(policy, mine, weights)
        self.last_rows_scored_here = len(mine)
        shares = gather_object([(mine, values.tolist(), sums)]) if world > 1 else [(mine, values.tolist(), sums)]
        scores = self.scores.copy()
        got = np.full(0, np.nan)
        for rows_r, values_r, _ in shares:
            scores[np.asarray(rows_r, dtype=np.int64)] = values_r
            got = np.concatenate([got, np.asarray(values_r, dtype=np.float64)])
        metrics = self._metrics(got, [s_r for _, _, s_r in shares])
        try:
            sel = self._selection_from(scores)  # the same on every process: the same scores, a deterministic rule
        except RuntimeError as e:
            log.warning("%s", e)
            sel = None
        metrics["saev/rescore_seconds"] = time.perf_counter() - t0
        payload = {"scores": scores, "selection": sel, "metrics": metrics}
        self.scores = payload["scores"]
        metrics = dict(payload["metrics"])
        if payload["selection"] is not None:
            metrics.update(self._apply_selection(payload["selection"]))
        self.n_rescores += 1
        metrics["saev/rescores"] = float(self.n_rescores)
        self.last_metrics = metrics
        self._pending.update(metrics)
        return metrics

    # ------------------------------------------------------------------ trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if self.sampler is None:
            raise RuntimeError("call SaevRescoreCallback.attach(trainer) before train() "
                               "(passing it in callbacks= alone does not install its sampler)")
        if state.global_step > 0 and not self._restored:
            path = self._resume_from
            if path is True or path is None:
                from transformers.trainer_utils import get_last_checkpoint

                path = get_last_checkpoint(args.output_dir) if path is True else None
                if path is None:
                    path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if not self.load_state(path):
                log.warning("resuming at step %d without SAE-V re-score state in %s: the run continues from "
                            "the initial selection", state.global_step, path)
        if self.at_train_begin and state.global_step == 0 and self.last_rescore_step < 0:
            self.rescore(kwargs.get("model"))
            self.last_rescore_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        n = self.every_n_steps
        if n and state.global_step % n == 0 and state.global_step != self.last_rescore_step:
            self.rescore(kwargs.get("model"))
            self.last_rescore_step = state.global_step
            control.should_log = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.at_epoch_end and state.global_step != self.last_rescore_step:
            self.rescore(kwargs.get("model"))
            self.last_rescore_step = state.global_step
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            self.save_state(folder, step=state.global_step)

    # ------------------------------------------------------------------ state
    def save_state(self, folder: str | os.PathLike, *, step: int | None = None) -> Path:
        """Write the selection state into ``folder`` (``saev_rescore_state.json`` + ``.npz``)."""
        folder = Path(folder)
        meta, arrays = self.sampler.state_arrays()
        doc = {"format": "saev-curate/rescore-state", "version": _STATE_VERSION, "step": step,
               "sampler": meta, "last_rescore_step": self.last_rescore_step, "n_rescores": self.n_rescores,
               "by": self.by, "fraction": self.fraction, "weighting": self.weighting, "seed": self.seed,
               "last_metrics": self.last_metrics}
        np.savez(folder / f"{STATE_FILE}.npz", scores=self.scores, **arrays)
        (folder / f"{STATE_FILE}.json").write_text(json.dumps(doc, indent=1, default=float))
        return folder / f"{STATE_FILE}.json"

    def load_state(self, folder: str | os.PathLike) -> bool:
        """Restore what :meth:`save_state` wrote; False when ``folder`` holds no state."""
        folder = Path(folder)
        js, npz = folder / f"{STATE_FILE}.json", folder / f"{STATE_FILE}.npz"
        if not js.is_file() or not npz.is_file():
            return False
        doc = json.loads(js.read_text())
        if doc.get("format") != "saev-curate/rescore-state":
            raise ValueError(f"{js} is not a SAE-V re-score state file")
        for name in ("by", "fraction", "weighting"):  # the selection rule the earlier steps trained on
            if name in doc and doc[name] != getattr(self, name):
                from saev_curate.core.errors import InputError

                raise InputError(f"{js}: the run being resumed selected with {name}={doc[name]!r}, this callback with "
                                 f"{name}={getattr(self, name)!r}; resume with {name}={doc[name]!r}, or start a new run "
                                 "in another output_dir")
        if doc.get("seed") != self.seed:
            log.warning("the checkpoint's re-score seed %s differs from this run's %s; keeping the checkpoint's",
                        doc.get("seed"), self.seed)
            self.seed = doc.get("seed")
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self.sampler.load_state_arrays(doc["sampler"], arrays)
        self.sampler.seed = int(doc["sampler"]["seed"])
        self.scores = arrays["scores"].astype(np.float64)
        self.last_rescore_step = int(doc["last_rescore_step"])
        self.n_rescores = int(doc["n_rescores"])
        self.last_metrics = dict(doc.get("last_metrics") or {})
        self._restored = True
        return True


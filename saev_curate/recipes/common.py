"""What `dpo.py` and `sft.py` share: SAE-V arguments, model loading, dataset loading, score + select.

Everything here uses only the public names of ``saev_curate`` (``load_local_dataset``, ``load_sae``,
``CrossModalWeights``, ``SaevScorer``, ``select``) and of its row module (``to_trl_preference``, ``to_trl_sft``:
which row formats exist and their TRL names), so the recipes read like a user's own script.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saev_curate.curation.config import ScoreConfig

log = logging.getLogger("saev_curate.recipes")

SCORED_DIR = "saev_scores"  # output_dir/saev_scores/: scores.parquet (row_index + score columns) and its cache key
SCORES_FILE = "scores.parquet"
WEIGHTS_DIR = "crossmodal_weights"  # output_dir/crossmodal_weights: ω fitted by the recipe (when not given)
RUN_FILE = "saev_run.json"  # output_dir/saev_run.json: the settings of the run that owns output_dir

#: training settings that make a run another run (a resume with other values would mix two trainings); logging,
#: saving, evaluation, hub and length-of-training options may change on a resume
RUN_TRAINING_FIELDS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay",
                       "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "seed", "data_seed",
                       "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "beta",
                       "loss_type", "rpo_alpha", "completion_only_loss", "assistant_only_loss", "packing", "bf16",
                       "fp16")


@dataclass
class SaevArguments(ScoreConfig):
    """SAE-V curation before training: score the rows (or read existing scores) and keep the best. The scoring
    options (layer, δ, ``delta_rel``, ``control_prompt``, ...) are :class:`~saev_curate.ScoreConfig`'s."""

    sae: str | None = field(
        default=None,
        metadata={"help": "SAE folder (SAELens v6 / pre-6 / sparsify) for the policy's layer. Given, rows are scored "
                          "with SAE-V before training (unless the dataset already has saev_* columns)."},
    )
    crossmodal_weights: str | None = field(
        default=None,
        metadata={"help": "Cross-modal weights folder (CrossModalWeights.save). Not given, ω is fitted on "
                          "`n_reference` training rows and saved to OUTPUT_DIR/crossmodal_weights."},
    )
    n_reference: int = field(
        default=1000, metadata={"help": "Reference rows for fitting ω when no weights are given (paper: 1,000)."})
    reference_seed: int = field(default=42, metadata={"help": "Seed drawing the reference rows (paper: 42)."})
    select_by: str = field(
        default="auto",
        metadata={"help": "Method of the table to rank by (`saev-curate methods` lists them, with the direction "
                          "that is cleaner), any numeric column, 'random' (seeded; needs no scores), or 'auto': the "
                          "recommendation for the data's shape (preference rows: response_perplexity)."},
    )
    check: str | None = field(
        default=None,
        metadata={"help": "A `saev-curate check` folder: select_by auto takes what it measured best on this model "
                          "for the data's shape (recorded in selection.json)."})
    select_fraction: float | None = field(
        default=None, metadata={"help": "Keep the top fraction of rows, e.g. 0.5 (paper: 0.1 ... 1.0)."})
    select_threshold: float | None = field(
        default=None, metadata={"help": "Keep rows whose score is this good or better (>= where higher is "
                                        "cleaner, <= for perplexity), instead of a fraction."})
    select_seed: int = field(default=0, metadata={"help": "Seed for select_by='random'."})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Largest image area in pixels the processor keeps (Qwen2-VL / Qwen2.5-VL: an image is "
                          "resized to at most this many pixels, max_pixels / 784 image tokens), so one large image "
                          "cannot overflow max_length mid-run. Not set: the processor's own default."},
    )
    rescore_every_n_steps: int | None = field(
        default=None,
        metadata={"help": "Re-score the training rows with the current policy every N steps and re-select "
                          "(saev_curate.SaevRescoreCallback; needs `sae`)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.select_fraction is not None and self.select_threshold is not None:
            raise ValueError("give select_fraction or select_threshold, not both")
        if self.select_fraction is not None and not 0 < self.select_fraction <= 1:
            raise ValueError(f"select_fraction={self.select_fraction} must be in (0, 1]")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ValueError(f"max_pixels={self.max_pixels} must be a positive number of pixels")
        if self.rescore_every_n_steps is not None and self.rescore_every_n_steps <= 0:
            raise ValueError("rescore_every_n_steps must be a positive number of steps")

    def score_config(self) -> ScoreConfig:
        """The scoring options alone."""
        return ScoreConfig.from_fields(self)

    @property
    def selects(self) -> bool:
        return self.select_fraction is not None or self.select_threshold is not None


# --------------------------------------------------------------------------------------------------------------
# Model and processor


def torch_dtype(name):
    """'bfloat16' -> torch.bfloat16; 'auto' and None pass through."""
    import torch

    return name if name in ("auto", None) else getattr(torch, name)


def load_model_and_processor(model_args, training_args, max_pixels: int | None = None):
    """``AutoModelForImageTextToText`` + ``AutoProcessor`` (with ``max_pixels`` when given: the image processor's
    largest image area); 4/8-bit through ``get_quantization_config``.

    ``model_args.dtype`` is used as given (``ModelConfig`` defaults it to float32: the configs set it).
    A quantized model goes on this process's own device (one copy per process, as DDP/ZeRO-2 need).
    """
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import get_quantization_config

    quantization_config = get_quantization_config(model_args)
    device_map = None
    if quantization_config is not None:
        device_map = {"": PartialState().local_process_index} if torch.cuda.is_available() else {"": "cpu"}
    trust_remote_code = bool(getattr(training_args, "trust_remote_code", False))
    path = model_args.model_name_or_path
    path = str(Path(path).expanduser()) if path.startswith("~") else path
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=torch_dtype(model_args.dtype),
        device_map=device_map,
        quantization_config=quantization_config,
        trust_remote_code=trust_remote_code,
    )
    processor = AutoProcessor.from_pretrained(
        path, revision=model_args.model_revision, trust_remote_code=trust_remote_code,
        **({} if max_pixels is None else {"max_pixels": max_pixels}))
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, processor


# --------------------------------------------------------------------------------------------------------------
# Dataset


def load_train_dataset(script_args):
    """``dataset_name``: a local path (save_to_disk folder, parquet/JSON/CSV, an already-scored folder) or a
    hub id (read from the local cache when ``HF_HUB_OFFLINE=1``)."""
    from saev_curate.io.datasets import load_local_dataset

    name = script_args.dataset_name
    if not name:
        raise ValueError("dataset_name is required: a hub id or a local dataset path")
    p = Path(name).expanduser()
    if p.exists() or "*" in p.name:
        return load_local_dataset(p, split=script_args.dataset_train_split)
    from datasets import load_dataset

    return load_dataset(name, name=script_args.dataset_config, split=script_args.dataset_train_split)


# --------------------------------------------------------------------------------------------------------------
# One run per output_dir (issue 24, item 7)


def _scalars(obj, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    try:
        items = asdict(obj).items()
    except TypeError:
        items = vars(obj).items()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in items
            if (only is None or k in only) and isinstance(v, (str, int, float, bool, type(None), list, tuple))
            and not k.startswith("_")}


def run_record(recipe: str, script_args, saev_args, training_args, model_args, dataset) -> dict[str, Any]:
    """What makes a recipe run this run: the recipe, the data (name, split and content fingerprint), every SAE-V
    and model argument, and the training settings of :data:`RUN_TRAINING_FIELDS`."""
    from saev_curate.io.fingerprint import data_fingerprint

    return {"recipe": recipe,
            "data": {**_scalars(script_args, ("dataset_name", "dataset_config", "dataset_train_split")),
                     "fingerprint": data_fingerprint(dataset)},
            "saev": _scalars(saev_args), "model": _scalars(model_args),
            "training": _scalars(training_args, RUN_TRAINING_FIELDS)}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "(unset)"), new.get(k, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def claim_output_dir(output_dir, record: dict[str, Any], *, main_process: bool = True) -> None:
    """Make ``output_dir`` this run's, before any expensive work, or refuse with one line.

    ``output_dir/saev_run.json`` records the settings of the run that owns the folder.  A rerun with the same
    settings continues there (a resume, a cached score); other settings (another ``select_fraction`` or
    ``select_by``, another model, data or learning rate, ...) are refused, naming each difference as
    ``field old -> new``; a non-empty folder without the record (another tool's or an older run's files) is
    refused too.  Nothing of another run is overwritten or mixed with this one's files.
    """
    from saev_curate.core.errors import InputError
    from saev_curate.io.checked import read_json_object

    out = Path(output_dir)
    path = out / RUN_FILE
    if path.is_file():
        old = read_json_object(path, fix=f"delete {path} only if {out} holds nothing you want to keep")
        diff = _differences(old, json.loads(json.dumps(record, default=str)))
        if diff:
            raise InputError(f"--output_dir {out} holds another run ({RUN_FILE}): {'; '.join(diff[:6])}"
                             f"{' ...' if len(diff) > 6 else ''}; give this run its own --output_dir, or rerun with "
                             "that run's settings to resume it")
        return
    if out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        raise InputError(f"--output_dir {out} is not empty ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}) "
                         f"and holds no {RUN_FILE} of a recipe run; give this run an empty or new --output_dir")
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RUN_FILE}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(path)


def check_rescore_weights(dataset, saev_args) -> None:
    """``rescore_every_n_steps`` re-scores with the SAE and the cross-modal weights of the initial scores: on a
    dataset that already has its scores the recipe fits no weights, so ``crossmodal_weights`` must be given
    (never whatever an earlier run left in ``output_dir``).  Raised before the model loads."""
    from saev_curate.core.errors import InputError
    from saev_curate.curation.methods import resolve_by

    if not saev_args.rescore_every_n_steps or saev_args.crossmodal_weights:
        return
    by = resolve_select_by(saev_args.select_by, dataset.column_names)
    column = None if by == "random" else resolve_by(by)[0]
    if not saev_args.sae or column is None or column in dataset.column_names:
        raise InputError(f"--rescore_every_n_steps re-scores with the cross-modal weights of the first scores, and "
                         f"this dataset already has {column or 'its selection'!s}, so the recipe fits none: pass "
                         "--crossmodal_weights (the weights the scores were made with)")


def _cache_key(dataset, model_args, saev_args, methods: list[str]) -> str:
    doc = {"data": getattr(dataset, "_fingerprint", None), "n": len(dataset),
           "model": model_args.model_name_or_path, "revision": model_args.model_revision,
           "quant": [model_args.load_in_4bit, model_args.load_in_8bit], "dtype": model_args.dtype,
           "methods": methods, **saev_args.score_config().to_dict(),
           **{k: getattr(saev_args, k) for k in ("sae", "crossmodal_weights", "n_reference", "reference_seed")}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def resolve_select_by(select_by: str, columns, check: str | None = None) -> str:
    """``select_by`` with ``auto`` replaced by a check's recommendation (``check``: its folder) or, without one, the
    methods table's, for the data's shape."""
    from saev_curate.curation.selection import resolve_auto

    return resolve_auto(columns, check) if select_by == "auto" else select_by


def is_scored(dataset) -> bool:
    return any(c.startswith("saev_") and c != "saev_error" for c in dataset.column_names)


def score_dataset(dataset, model, processor, saev_args, model_args, output_dir, by: str | None = None):
    """Attach ``saev_*`` columns with the (pre-alignment) policy: with an SAE, every SAE-V and likelihood column
    (:data:`~saev_curate.curation.scorers.DEFAULT_METHODS`) plus ``by``; without one, ``by``'s columns (a method that
    needs no SAE, such as ``response_perplexity``); returns ``(scored, source)``.

    The scores (not the rows: no second copy of the images) are saved to ``output_dir/saev_scores/scores.parquet``
    (``row_index`` + the score columns; :func:`join_scores` puts them back on the dataset): under ``accelerate
    launch`` every process scores its share of the rows (:func:`score_across_processes`) and the main process saves
    the joined scores; a rerun with the same inputs reuses them.
    """
    from accelerate import PartialState

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.methods import find_method
    from saev_curate.curation.scorers import DEFAULT_METHODS, MethodScorer
    from saev_curate.sae.io import load_sae

    state = PartialState()
    out = Path(output_dir)
    method = None if by is None else find_method(by)
    extra = [] if method is None or method.column is None else [method.name]
    methods = list(dict.fromkeys([*DEFAULT_METHODS, *extra])) if saev_args.sae else extra
    cache, key = out / SCORED_DIR, _cache_key(dataset, model_args, saev_args, methods)
    source = {"kind": "computed", "sae": saev_args.sae, "methods": methods, **saev_args.score_config().to_dict(),
              "model": model_args.model_name_or_path, "scored_dataset": str(cache), "cache_key": key}
    key_file = cache / "saev_cache_key.json"
    if key_file.is_file() and (cache / SCORES_FILE).is_file() and json.loads(key_file.read_text()).get("key") == key:
        doc = json.loads(key_file.read_text())
        source.update(doc.get("source", {}), reused=True)
        return join_scores(dataset, cache / SCORES_FILE), source
    import torch

    if torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:
        model.to(state.device)  # score on this process's GPU (a quantized model is already placed)
    sae = weights = None
    if not saev_args.sae:
        pass
    elif saev_args.crossmodal_weights:
        sae = load_sae(saev_args.sae)
        weights = CrossModalWeights.load(saev_args.crossmodal_weights)
        source["crossmodal_weights"] = saev_args.crossmodal_weights
    else:  # every process fits the same ω (the same seeded reference rows); the main process saves it
        sae = load_sae(saev_args.sae)
        weights = CrossModalWeights.fit(model, processor, sae, dataset, saev_args.score_config().layer_value,
                                        n_reference=saev_args.n_reference, seed=saev_args.reference_seed,
                                        batch_size=saev_args.score_batch_size,
                                        max_length=saev_args.score_max_length)
        if state.is_main_process:
            weights.save(out / WEIGHTS_DIR)
        source["crossmodal_weights"] = str(out / WEIGHTS_DIR)
        source["crossmodal_weights_fitted_on"] = {"n_reference": saev_args.n_reference,
                                                  "seed": saev_args.reference_seed}
    was_training = model.training
    model.eval()
    scorer = MethodScorer(model, processor, sae, weights, methods=extra if not saev_args.sae else
                          None if not extra or extra[0] in DEFAULT_METHODS else methods,
                          config=saev_args.score_config())
    scored = score_across_processes(scorer, dataset, state, batch_size=saev_args.score_batch_size)
    model.train(was_training)
    scorer.check_usable(scored)  # the same rows on every process: every process decides the same
    source["scorer_fingerprint"] = scorer.fingerprint()
    if state.is_main_process:
        new_columns = [c for c in scored.column_names if c not in dataset.column_names]
        cache.mkdir(parents=True, exist_ok=True)
        key_file.unlink(missing_ok=True)  # a half-written cache is never taken for a finished one
        tmp = cache / f".{SCORES_FILE}.tmp"
        scored.select_columns(new_columns).add_column("row_index", list(range(len(scored)))).to_parquet(str(tmp))
        tmp.replace(cache / SCORES_FILE)
        key_file.write_text(json.dumps({"key": key, "source": source}, indent=2))
    return scored, source


def score_across_processes(scorer, dataset, state, *, batch_size: int):
    """``dataset`` with ``scorer``'s columns, each process of ``state`` (``accelerate.PartialState``) scoring every
    n-th row from its own index, the columns gathered (``accelerate.utils.gather_object``) so that every process
    returns the whole scored dataset; one process scores all rows."""
    from accelerate.utils import gather_object

    n, world = len(dataset), state.num_processes
    mine = list(range(state.process_index, n, world))
    desc = f"SAE-V scoring (process {state.process_index + 1} of {world}: {len(mine)} of {n} rows)"
    part = dataset.select(mine).map(scorer, batched=True, batch_size=batch_size, desc=desc) if mine else None
    feats = scorer.features(dataset)
    names = [c for c in feats if c not in dataset.column_names]
    local = {c: (part[c] if part is not None else []) for c in names}
    shares = gather_object([(mine, local)]) if world > 1 else [(mine, local)]
    columns: dict[str, list] = {c: [None] * n for c in names}
    for rows, cols in shares:
        for c in names:
            for i, v in zip(rows, cols[c]):
                columns[c][i] = v
    out = dataset
    for c in names:
        if c in out.column_names:
            out = out.remove_columns(c)
        out = out.add_column(c, columns[c], feature=feats[c])
    return out


def join_scores(dataset, scores_file):
    """``dataset`` with the score columns of a recipe's ``saev_scores/scores.parquet`` added (row ``i`` of the file
    is row ``i`` of the dataset; its ``row_index`` column says so and is checked)."""
    import datasets

    from saev_curate.core.errors import InputError

    scores = datasets.Dataset.from_parquet(str(scores_file))
    if scores["row_index"] != list(range(len(dataset))):
        raise InputError(f"{scores_file}: holds scores for {len(scores)} rows, not rows 0..{len(dataset) - 1} of this "
                         "dataset; delete the folder to score again")
    out = dataset
    for c in scores.column_names:
        if c != "row_index":
            if c in out.column_names:
                out = out.remove_columns(c)
            out = out.add_column(c, scores[c], feature=scores.features[c])
    return out


def _stats(values: list) -> dict[str, Any]:
    """Summary of the finite scores (strict JSON: an infinite or NaN score is counted, never averaged)."""
    v = sorted(float(x) for x in values if x is not None and math.isfinite(float(x)))
    odd = sum(x is not None and not math.isfinite(float(x)) for x in values)
    if not v:
        return {"n": 0, **({"n_not_finite": odd} if odd else {})}
    n, mean = len(v), sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    mid = (v[(n - 1) // 2] + v[n // 2]) / 2
    return {"n": n, "mean": mean, "std": std, "min": v[0], "median": mid, "max": v[-1],
            **({"n_not_finite": odd} if odd else {})}


def curate(dataset, model, processor, saev_args, model_args, output_dir, *, dataset_name: str | None = None):
    """Score (when asked and not already scored) and select; returns ``(kept_rows, selection_doc, all_rows)``.

    ``selection_doc`` is what ``selection.json`` holds: the kept row indices (into the loaded dataset), the rule,
    score statistics over all rows and over the kept ones, and where the scores came from.
    """
    from saev_curate.curation.selection import select

    n = len(dataset)
    from saev_curate.curation.methods import find_method, resolve_by

    by = resolve_select_by(saev_args.select_by, dataset.column_names, saev_args.check)
    column = None if by == "random" else resolve_by(by)[0]
    method = find_method(by)
    if column is None or column in dataset.column_names:
        source = {"kind": "dataset columns" if column else "none", "dataset": dataset_name}
        if saev_args.sae and column:
            log.info("dataset already has the %s column: selecting on it, not re-scoring", column)
    elif saev_args.sae or (method is not None and "sae" not in method.needs and saev_args.selects):
        dataset, source = score_dataset(dataset, model, processor, saev_args, model_args, output_dir, by)
        source["dataset"] = dataset_name
    elif not saev_args.selects:
        source = {"kind": "none", "dataset": dataset_name}
    else:
        raise ValueError(f"select_by={by!r} needs its column {column!r}: pass --sae (and --crossmodal_weights) to "
                         "score the rows, or a dataset that already has the column")

    doc: dict[str, Any] = {"n_rows": n, "by": by if saev_args.selects else "all",
                           "fraction": saev_args.select_fraction, "threshold": saev_args.select_threshold,
                           "scores_source": source}
    if saev_args.select_by == "auto":
        doc["by_from"] = (f"auto: the recommendation of the check in {saev_args.check}" if saev_args.check
                          else "auto: the methods table's recommendation for this data's shape")
    if not saev_args.selects:
        kept, kept_idx = dataset, list(range(n))
        values = dataset[column] if column in dataset.column_names else []
    else:
        kept, report = select(dataset, by=by, fraction=saev_args.select_fraction,
                              threshold=saev_args.select_threshold, seed=saev_args.select_seed, return_report=True)
        kept_idx = [r for r, k in zip(report["row_index"], report["saev_keep"]) if k]
        values = [] if by == "random" else report["value"]
        doc["seed"] = saev_args.select_seed if by == "random" else None
    kept_set = set(kept_idx)
    doc["n_kept"] = len(kept_idx)
    doc["kept_fraction"] = len(kept_idx) / n if n else 0.0
    if values:
        doc["score_stats"] = {"all": _stats(values), "kept": _stats([values[i] for i in kept_idx]),
                              "dropped": _stats([values[i] for i in range(n) if i not in kept_set])}
        higher = by == "random" or resolve_by(by)[1]  # the cut is the worst kept value in the method's direction
        doc["cut"] = doc["score_stats"]["kept"].get("min" if higher else "max") if saev_args.selects else None
    doc["kept_indices"] = kept_idx
    if saev_args.rescore_every_n_steps:
        doc["rescore_every_n_steps"] = saev_args.rescore_every_n_steps
        doc["note"] = ("kept_indices is the selection the run starts from; SaevRescoreCallback re-selects "
                       "with the policy during training (its state is saved in each checkpoint)")
    return kept, doc, dataset


def write_selection(doc: dict, output_dir, extra: dict | None = None) -> Path:
    path = Path(output_dir) / "selection.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**doc, **(extra or {})}, indent=2, default=str))
    return path


# --------------------------------------------------------------------------------------------------------------
# Rows in the shapes TRL's vision collators take (conversational, so the chat template places the image)


def _user(text) -> list[dict]:
    return text if isinstance(text, list) else [{"role": "user", "content": text}]


def _assistant(text) -> list[dict]:
    return text if isinstance(text, list) else [{"role": "assistant", "content": text}]


def to_preference_rows(dataset):
    """TRL conversational preference rows (``prompt``/``chosen``/``rejected`` + ``image(s)``); other columns go.

    The row formats and their TRL names come from ``saev_curate.vlm.rows.conversations.to_trl_preference``."""
    from saev_curate.vlm.rows.conversations import to_trl_preference

    def fn(prompt, chosen, rejected):
        return {"prompt": _user(prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)}

    rows = to_trl_preference(dataset)
    return _with_image_feature(rows.map(fn, input_columns=["prompt", "chosen", "rejected"], desc="preference rows"))


def to_sft_rows(dataset):
    """TRL conversational SFT rows: ``messages`` kept, else ``prompt``/``completion`` (a preference row's chosen
    response is its completion) + ``image(s)``; other columns go (``...conversations.to_trl_sft``)."""
    from saev_curate.vlm.rows.conversations import to_trl_sft

    rows = to_trl_sft(dataset)
    if "messages" in rows.column_names:
        return _with_image_feature(rows)

    def fn(prompt, completion):
        return {"prompt": _user(prompt), "completion": _assistant(completion)}

    return _with_image_feature(rows.map(fn, input_columns=["prompt", "completion"], desc="sft rows"))


def _with_image_feature(dataset):
    """Image paths stored as strings become ``datasets.Image`` so the collator gets PIL images."""
    from datasets import Image, Sequence, Value

    feats = dataset.features
    if "image" in feats and feats["image"] == Value("string"):
        dataset = dataset.cast_column("image", Image())
    if "images" in feats and isinstance(feats["images"], (list, Sequence)):
        inner = feats["images"][0] if isinstance(feats["images"], list) else feats["images"].feature
        if inner == Value("string"):
            dataset = dataset.cast_column("images", [Image()])
    return dataset


# --------------------------------------------------------------------------------------------------------------
# Optional re-scoring during training (issue 12's callback)


def attach_rescore_callback(trainer, scored, saev_args, selection: dict):
    """Attach ``saev_curate.SaevRescoreCallback`` to ``trainer`` when ``rescore_every_n_steps`` is set.

    ``scored`` is the full scored dataset, row ``i`` = row ``i`` of the trainer's (unselected) training set: the
    run starts from the recipe's selection (``initial_selection="column"``) and the callback re-scores the rows
    with the current policy and re-selects the top ``select_fraction`` every N steps, with the cross-modal weights
    given or fitted by this run (``selection["scores_source"]``), never a file another run left.
    """
    if not saev_args.rescore_every_n_steps:
        return None
    from saev_curate.core.errors import InputError
    from saev_curate.integrations.trl import SaevRescoreCallback

    if not saev_args.sae:
        raise ValueError("rescore_every_n_steps needs --sae (the SAE that scores the current policy)")
    weights = saev_args.crossmodal_weights or selection.get("scores_source", {}).get("crossmodal_weights")
    if not weights:
        raise InputError("--rescore_every_n_steps needs the cross-modal weights of the first scores: pass "
                         "--crossmodal_weights")
    if saev_args.select_threshold is not None:
        raise ValueError("rescore_every_n_steps re-selects a fraction: use select_fraction, not select_threshold")
    from saev_curate.curation.methods import resolve_by

    by = resolve_select_by(saev_args.select_by, scored.column_names, saev_args.check)
    from_column = saev_args.selects and by != "random" and resolve_by(by)[0] in scored.column_names
    callback = SaevRescoreCallback(
        sae=saev_args.sae, weights=weights,
        config=saev_args.score_config(), every_n_steps=saev_args.rescore_every_n_steps,
        fraction=saev_args.select_fraction, by=by,
        train_dataset=scored, initial_selection="column" if from_column else "all")
    return callback.attach(trainer)


# --------------------------------------------------------------------------------------------------------------
# What every recipe does before and after training, as TRL's scripts do (issue 24, item 15)


def prepare_run(recipe: str, script_args, saev_args, training_args, model_args, *, dataset=None, eval_dataset=None):
    """The checks and loads before the model: returns ``(dataset, eval_dataset)``.

    ``dataset_streaming`` is refused (selection ranks every row); the eval split (``dataset_test_split``) is
    loaded when ``eval_strategy`` is not ``"no"``, as TRL's scripts do; ``output_dir`` is claimed for this run
    (:func:`claim_output_dir`); ``rescore_every_n_steps`` is checked for its weights.  Every mistake is one line
    before the model loads.
    """
    from accelerate import PartialState

    from saev_curate.core.errors import InputError

    if getattr(script_args, "dataset_streaming", False):
        raise InputError("--dataset_streaming: SAE-V selection ranks every row, which a streamed dataset cannot give; "
                         "drop --dataset_streaming (the recipe reads the dataset, from the local cache when offline)")
    if dataset is None:
        dataset = load_train_dataset(script_args)
    wants_eval = str(getattr(getattr(training_args, "eval_strategy", "no"), "value",
                             getattr(training_args, "eval_strategy", "no"))) != "no"
    if wants_eval and eval_dataset is None:
        if not script_args.dataset_name:
            raise InputError("--eval_strategy needs an eval split: pass eval_dataset=, or set --eval_strategy no")
        from types import SimpleNamespace

        split = script_args.dataset_test_split
        try:
            eval_dataset = load_train_dataset(SimpleNamespace(dataset_name=script_args.dataset_name,
                                                              dataset_config=script_args.dataset_config,
                                                              dataset_train_split=split))
        except Exception as exc:  # noqa: BLE001 - the split is missing: say which flag names it
            raise InputError(f"--eval_strategy {training_args.eval_strategy} evaluates on the split "
                             f"--dataset_test_split {split!r}, which could not be read ({exc}); name an existing "
                             "split, or set --eval_strategy no") from None
    check_rescore_weights(dataset, saev_args)
    state = PartialState()
    with state.main_process_first():
        claim_output_dir(training_args.output_dir,
                         run_record(recipe, script_args, saev_args, training_args, model_args, dataset),
                         main_process=state.is_main_process)
    return dataset, eval_dataset


def finish_run(trainer, recipe: str, selection: dict, script_args, saev_args, model_args, output_dir) -> None:
    """Save the adapter and ``selection.json``; push to the hub when ``push_to_hub`` is set (as TRL's scripts do:
    ``trainer.push_to_hub(dataset_name=...)``; the folder holds no copy of the rows, only their scores)."""
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        write_selection(selection, output_dir,
                        {"recipe": recipe, "args": args_record(script=script_args, saev=saev_args, model=model_args)})
    if getattr(trainer.args, "push_to_hub", False):
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.print(f"adapter and selection.json saved to {output_dir} "
                              f"({selection['n_kept']} of {selection['n_rows']} rows by {selection['by']})")


def run_recipe(recipe: str, trainer_class, to_rows, script_args, saev_args, training_args, model_args, *,
               model=None, processor=None, dataset=None, eval_dataset=None, **trainer_kwargs):
    """The recipes' one body, in the order of TRL's scripts: check and load (:func:`prepare_run`), curate, train
    ``trainer_class`` with ``peft_config=get_peft_config(model_args)`` on ``to_rows`` of the selection, save
    (:func:`finish_run`); returns the trainer."""
    from trl import get_peft_config

    dataset, eval_dataset = prepare_run(recipe, script_args, saev_args, training_args, model_args,
                                        dataset=dataset, eval_dataset=eval_dataset)
    if model is None or processor is None:
        model, processor = load_model_and_processor(model_args, training_args, saev_args.max_pixels)
    kept, selection, scored = curate(dataset, model, processor, saev_args, model_args, training_args.output_dir,
                                     dataset_name=script_args.dataset_name)
    # re-scoring during training: all rows go to the trainer and the callback's sampler draws the selection
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=to_rows(scored if saev_args.rescore_every_n_steps else kept),
        eval_dataset=None if eval_dataset is None else to_rows(eval_dataset),
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        **trainer_kwargs,
    )
    attach_rescore_callback(trainer, scored, saev_args, selection)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_run(trainer, recipe, selection, script_args, saev_args, model_args, training_args.output_dir)
    return trainer


def args_record(**dataclasses_by_name) -> dict[str, Any]:
    """JSON-able record of the recipe's argument dataclasses, for ``selection.json``."""
    out = {}
    for name, obj in dataclasses_by_name.items():
        try:
            out[name] = {k: v for k, v in asdict(obj).items() if isinstance(v, (str, int, float, bool, type(None)))}
        except TypeError:
            out[name] = str(obj)
    return out


def run_script(make_parser, main, argv: list[str] | None = None, *, prog: str = "recipe") -> int:
    """A recipe as users run it: flags or ``--config file.yaml`` in, ``main(*parsed)``.  A mistake (a bad flag value,
    a YAML error, a missing path, an option clash) is one line on stderr and exit code 1, as the CLI does;
    ``--traceback`` shows the Python traceback instead."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    want_traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    try:
        main(*make_parser().parse_args_and_config(args=argv))
        return 0
    except Exception as exc:
        if want_traceback:
            raise
        from saev_curate.core.errors import error_line

        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return 1

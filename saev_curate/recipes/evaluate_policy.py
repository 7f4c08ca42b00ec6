"""The evaluation recipe's core: ``evaluate(model, processor, rows)`` (lmms-eval-shaped results), ``load_policy``,
``main``/``make_parser``. Its manual (rows, metrics, the command, the output layout) is the docstring of
``recipes/evaluate_policy.py``, the file users run."""

from __future__ import annotations

import json
import math
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from saev_curate.core.errors import InputError
from saev_curate.curation.config import ScoreConfig
from saev_curate.io.checked import strict_json
from saev_curate.recipes.common import load_model_and_processor


@dataclass
class EvalArguments(ScoreConfig):
    """What to evaluate on and where the results go; the SAE-V score's options are :class:`ScoreConfig`'s."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out set: a local dataset path or a hub id (cache only offline)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Split to evaluate (a local single dataset: any)."})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder to put on the base model."})
    merge_adapter: bool = field(
        default=True, metadata={"help": "Merge the adapter into the weights (not for a 4/8-bit base)."})
    task: str = field(default="saev_heldout", metadata={"help": "Task name used as the key in results.json."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    max_new_tokens: int = field(default=16, metadata={"help": "Greedy generation length for exact match."})
    sae: str | None = field(default=None, metadata={"help": "SAE folder: also report the mean SAE-V score."})
    crossmodal_weights: str | None = field(default=None, metadata={"help": "Cross-modal weights for the score."})
    output_dir: str = field(default="eval", metadata={
        "help": "Folder for lmms-eval's files: <output_dir>/<model>/<date>_results.json (and samples)."})
    log_samples: bool = field(default=False, metadata={"help": "Also write <date>_samples_<task>.jsonl."})


# --------------------------------------------------------------------------------------------------------------
# Rows


def _image_of(row: dict):
    """The row's image as RGB (None for a text-only row); an unreadable one raises ``RowError`` (that row's error)."""
    from saev_curate.vlm.rows.images import load_image

    img = row["images"][0] if row.get("images") else row.get("image")
    return load_image(img) if img is not None else None


def gold_index(row: dict) -> int:
    """The answer as an index into ``options`` (an int, the option's text, or its letter)."""
    options, answer = list(row["options"]), row["answer"]
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"answer {answer!r} is not an option index, text or letter")
    if isinstance(answer, int):
        if not 0 <= answer < len(options):
            raise ValueError(f"answer index {answer} outside the {len(options)} options")
        return answer
    text = str(answer).strip()
    if text in options:
        return options.index(text)
    if len(text) == 1 and text.upper() in string.ascii_uppercase[: len(options)]:
        return string.ascii_uppercase.index(text.upper())
    raise ValueError(f"answer {answer!r} is none of the options {options}")


def check_eval_rows(dataset, limit: int | None = None) -> None:
    """Refuse, before any model work, a held-out set the evaluation cannot read: it needs ``question`` and either
    ``options`` + ``answer`` (questions) or a testbed ``concept`` (descriptions), and every answer must name one
    of its row's options.  One line naming the column or the row, and the fix."""
    columns = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise InputError("the held-out set has no rows; check --dataset_name, --dataset_split and --limit")
    if "question" not in columns:
        raise InputError(f"the held-out set has no `question` column (its columns: {columns}); rename the prompt "
                         "column to `question`, e.g. ds.rename_column('prompt', 'question')")
    if "options" not in columns and "concept" not in columns:
        raise InputError(f"the held-out set has no `options` column (its columns: {columns}): give `options` (the "
                         "answer strings) and `answer` (an index, text or letter) for questions, or a testbed "
                         "`concept` for descriptions")
    if "options" in columns and "answer" not in columns:
        raise InputError(f"the held-out set has `options` but no `answer` column (its columns: {columns}); add the "
                         "right option's index, text or letter as `answer`")
    if "options" in columns:
        for i in range(n):
            row = dataset[i]
            if row.get("options"):
                try:
                    gold_index(row)
                except ValueError as e:
                    raise InputError(f"held-out row {i}: {e}; fix the row's `answer` (an index into `options`, "
                                     "an option's text, or its letter A, B, ...)") from None


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".!?").split())


def prompt_text(processor, question: str, has_image: bool) -> str:
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def _device(model):
    return next(p.device for p in model.parameters())


def _encode_prompt(processor, row):
    img = _image_of(row)
    text = prompt_text(processor, row["question"], img is not None)
    kwargs = {"images": [[img]]} if img is not None else {}
    return processor(text=[text], return_tensors="pt", add_special_tokens=False, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Metrics


def option_loglikelihoods(model, processor, row) -> list[tuple[float, bool]]:
    """``(sum log p(option | image, question), is_greedy)`` per option, the options in one padded batch."""
    import torch

    enc = _encode_prompt(processor, row)
    tok = getattr(processor, "tokenizer", processor)
    prompt_ids = enc["input_ids"][0]
    conts = [tok(o, add_special_tokens=False)["input_ids"] for o in row["options"]]
    n, P = len(conts), prompt_ids.shape[0]
    L = P + max(len(c) for c in conts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((n, L), pad, dtype=prompt_ids.dtype)
    attention = torch.zeros((n, L), dtype=torch.long)
    for j, c in enumerate(conts):
        input_ids[j, :P] = prompt_ids
        input_ids[j, P:P + len(c)] = torch.tensor(c, dtype=prompt_ids.dtype)
        attention[j, :P + len(c)] = 1
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
    for k, v in enc.items():
        if k in inputs or not torch.is_tensor(v):
            continue
        if v.dim() == 2 and v.shape == (1, P):  # per-token ids (token_type_ids, mm_token_type_ids): 0 on answers
            ext = torch.zeros((n, L), dtype=v.dtype)
            ext[:, :P] = v
            inputs[k] = ext
        else:  # image tensors: one copy per option
            inputs[k] = torch.cat([v] * n, dim=0)
    device = _device(model)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for j, c in enumerate(conts):
        pos = torch.arange(P - 1, P - 1 + len(c), device=logp.device)
        target = torch.tensor(c, device=logp.device)
        lp = logp[j, pos].gather(-1, target[:, None]).squeeze(-1)
        greedy = bool((logp[j, pos].argmax(-1) == target).all())
        out.append((float(lp.sum()), greedy))
    return out


def generate_answer(model, processor, row, max_new_tokens: int) -> str:
    import torch

    enc = _encode_prompt(processor, row)
    tok = getattr(processor, "tokenizer", processor)
    device = _device(model)
    enc = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _description_sample(model, processor, row: dict, i: int, max_new_tokens: int) -> dict:
    """A description row's sample: the greedy description and its fact counts against the row's ``concept``."""
    from saev_curate.testbed.evaluate import description_scores
    from saev_curate.testbed.images import Concept

    if not row.get("concept"):
        raise InputError(f"row {i} has no options and no concept: give `options` (a question) or a testbed "
                         "`concept` (a description to check)")
    gen = generate_answer(model, processor, row, max_new_tokens)
    sc = description_scores(gen, Concept.from_dict(row["concept"]))
    return {"doc_id": i, "doc": {"question": row["question"], "answer": row.get("answer")},
            "target": row.get("answer"), "filtered_resps": [gen],
            **{f"facts_{k}": v for k, v in (("stated", sc["stated"]), ("false", sc["false"]),
                                            ("true", sc["true_facts"]), ("recalled", sc["recalled"]))}}


def _strict(x):
    """``x`` with every NaN / infinite number written as ``"N/A"``, as lmms-eval does (strict JSON has no NaN)."""
    return strict_json(x, "N/A")


def mean_stderr(values: list[float]) -> float:
    """Standard error of the mean with the sample variance (lm-eval / lmms-eval's ``mean_stderr``)."""
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def scoring_rows(rows: list[dict]) -> list[dict]:
    """Held-out rows as image + question conversations (what the SAE-V scorer and ω fitting read)."""
    out = []
    for r in rows:
        img = _image_of(r)
        content = ([{"type": "image"}] if img is not None else []) + [{"type": "text", "text": r["question"]}]
        out.append({"messages": [{"role": "user", "content": content}], "images": [img] if img is not None else []})
    return out


def saev_scores(model, processor, rows: list[dict], sae, weights, score_config: ScoreConfig | None = None) -> list:
    """The policy's SAE-V score of each row (image + question only); None where a row cannot be scored."""
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import SaevScorer
    from saev_curate.sae.io import load_sae

    sae = load_sae(sae) if isinstance(sae, (str, Path)) else sae
    weights = CrossModalWeights.load(weights) if isinstance(weights, (str, Path)) else weights
    ds = datasets.Dataset.from_list(scoring_rows(rows))
    was_training = model.training
    model.eval()
    scored = SaevScorer(model, processor, sae, weights, config=score_config, responses=False).map(ds)
    model.train(was_training)
    return list(scored["saev_score"])


def evaluate(model, processor, dataset, *, task: str = "saev_heldout", sae=None, weights=None,
             score_config: ScoreConfig | None = None, max_new_tokens: int = 16, limit: int | None = None, output_dir=None,
             log_samples: bool = False, config: dict | None = None, progress: bool = False,
             model_name: str | None = None) -> dict:
    """Evaluate ``model`` (base or with its adapter) on ``dataset`` rows; returns the results.json dict.

    ``sae`` and ``weights`` (objects or folders) go together and add ``saev_score``; one without the other is an
    error.  With ``output_dir`` the dict is written in lmms-eval's layout (the module docstring:
    ``<output_dir>/<model>/<date>_results.json``, and ``<date>_samples_<task>.jsonl`` with ``log_samples``);
    ``model_name`` names the model's folder (default: the adapter or model in ``config["model_args"]``, else the
    model's ``name_or_path``). ``progress``: a bar.
    """
    t0 = time.time()
    if (sae is None) != (weights is None):
        raise InputError("sae and weights go together (the SAE-V score needs the SAE and its cross-modal weights): "
                         "give both, or neither")
    check_eval_rows(dataset, limit)
    rows = [dataset[i] for i in range(len(dataset) if limit is None else min(limit, len(dataset)))]
    was_training = model.training
    model.eval()
    samples = []
    if progress:
        from tqdm.auto import tqdm

        rows_iter = tqdm(rows, desc=f"evaluate {task}", unit="q")
    else:
        rows_iter = rows
    from saev_curate.vlm.rows.images import RowError

    row_errors: dict[int, str] = {}
    for i, row in enumerate(rows_iter):
        try:  # an unreadable image is this row's error, not the evaluation's end; decoded once
            img = _image_of(row)
        except RowError as e:
            row_errors[i] = str(e)
            continue
        row = {**row, "images": [img] if img is not None else None}
        if not row.get("options"):
            samples.append(_description_sample(model, processor, row, i, max(max_new_tokens, 48)))
            continue
        gold = gold_index(row)
        lls = option_loglikelihoods(model, processor, row)
        sums = [ll for ll, _ in lls]
        norms = [ll / max(1, len(o.encode("utf-8"))) for (ll, _), o in zip(lls, row["options"])]
        pred, pred_norm = max(range(len(sums)), key=sums.__getitem__), max(range(len(norms)), key=norms.__getitem__)
        gen = generate_answer(model, processor, row, max_new_tokens) if max_new_tokens > 0 else ""
        target = row["options"][gold]
        samples.append({
            "doc_id": i, "doc": {"question": row["question"], "options": list(row["options"]), "answer": row["answer"]},
            "target": target, "resps": [[ll, g] for ll, g in lls], "filtered_resps": [gen],
            "acc": float(pred == gold), "acc_norm": float(pred_norm == gold),
            "exact_match": float(normalize(gen) == normalize(target)),
        })
    model.train(was_training)

    metrics = [m for m in ("acc", "acc_norm", "exact_match") if any(m in s for s in samples)]
    if not samples and row_errors:
        from collections import Counter

        (reason, count), = Counter(row_errors.values()).most_common(1)
        raise InputError(f"no row of {task} could be evaluated: {len(row_errors)} rows have an unreadable image, "
                         f"most often ({count}): {reason}")
    if sae is not None:
        scores = saev_scores(model, processor, [r for i, r in enumerate(rows) if i not in row_errors], sae, weights,
                             score_config)
        for s, v in zip(samples, scores):
            s["saev_score"] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        metrics.append("saev_score")
    res: dict[str, Any] = {"alias": task}
    for m in metrics:
        vals = [s[m] for s in samples if s.get(m) is not None]
        res[f"{m},none"] = sum(vals) / len(vals) if vals else float("nan")
        res[f"{m}_stderr,none"] = mean_stderr(vals)
    described = [s for s in samples if "facts_stated" in s]
    if described:  # micro averages over the set (CHAIR), stderr from the per-description rates
        for m, num, den in (("hallucination_rate", "facts_false", "facts_stated"),
                            ("recall", "facts_recalled", "facts_true")):
            res[f"{m},none"] = sum(s[num] for s in described) / max(1, sum(s[den] for s in described))
            res[f"{m}_stderr,none"] = mean_stderr([s[num] / max(1, s[den]) for s in described])
        metrics += ["hallucination_rate", "recall"]
    n = len(samples)
    results = {
        "results": {task: res},
        "group_subtasks": {task: []},
        "configs": {task: {"task": task, "output_type": "multiple_choice+generate_until",
                           "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                           for m in metrics],
                           "generation_kwargs": {"max_new_tokens": max_new_tokens, "do_sample": False}}},
        "versions": {task: 0},
        "n-shot": {task: 0},
        "higher_is_better": {task: {m: m != "hallucination_rate" for m in metrics}},
        "n-samples": {task: {"original": len(dataset), "effective": n}},
        "row_errors": {task: [{"doc_id": i, "error": e} for i, e in row_errors.items()]},
        "config": {"model": "saev-curate", "batch_size": 1, "limit": limit, **(config or {})},
        "date": t0,
        "total_evaluation_time_seconds": str(time.time() - t0),
    }
    if output_dir is not None:
        name = model_name or _model_name(config, model)
        results["model_name"], results["model_name_sanitized"] = name, sanitize_model_name(name)
        write_results(results, samples if log_samples else None, output_dir, task)
    return results


# --------------------------------------------------------------------------------------------------------------
# lmms-eval's files


def sanitize_model_name(model_name: str) -> str:
    """lmms-eval's folder name for a model: its last two path parts, runs of ``"<>:/|\\?*[]`` as ``__`` (empty,
    ``.`` and ``..`` parts left out, so ``./base`` is ``base``, not a hidden folder)."""
    import re

    parts = [p for p in model_name.split("/") if p not in ("", ".", "..")] or ["model"]
    last_two = "/".join(parts[-2:]) if len(parts) > 1 else parts[-1]
    return re.sub(r"[\"<>:/\|\\?\*\[\]]+", "__", last_two) or "model"


def _model_name(config: dict | None, model) -> str:
    """The model's name as lmms-eval takes it from ``model_args``: the adapter first, then the base model."""
    args = dict(kv.split("=", 1) for kv in str((config or {}).get("model_args", "")).split(",") if "=" in kv)
    return args.get("adapter") or args.get("pretrained") or str(getattr(model, "name_or_path", "") or "model")


def write_results(results: dict, samples: list[dict] | None, output_dir, task: str) -> tuple[Path, Path | None]:
    """Write ``results`` (and ``samples``) as ``<output_dir>/<model_name_sanitized>/<date>_results.json`` (and
    ``<date>_samples_<task>.jsonl``), strict JSON; a date whose files exist already waits for the next second,
    so no run overwrites another.  Returns the two paths."""
    folder = Path(output_dir) / results.get("model_name_sanitized", "model")
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        date = time.strftime("%Y%m%d_%H%M%S")
        res_path, sam_path = folder / f"{date}_results.json", folder / f"{date}_samples_{task}.jsonl"
        if not res_path.exists() and not sam_path.exists():
            break
        time.sleep(0.25)
    results["date"] = date
    if samples is not None:
        tmp = sam_path.with_name(f".{sam_path.name}.tmp")
        with open(tmp, "w") as f:
            for s in samples:
                f.write(json.dumps(_strict(s), default=str, allow_nan=False) + "\n")
        tmp.replace(sam_path)
    tmp = res_path.with_name(f".{res_path.name}.tmp")
    tmp.write_text(json.dumps(_strict(results), indent=2, default=str, allow_nan=False))
    tmp.replace(res_path)
    return res_path, sam_path if samples is not None else None


def latest_results(output_dir, task: str | None = None) -> tuple[Path, Path | None]:
    """The newest ``<date>_results.json`` under ``output_dir`` (any model folder), and its samples file for
    ``task`` (None when it was not written); an InputError naming the folder when there is none."""
    found = sorted(Path(output_dir).glob("*/*_results.json"), key=lambda p: (p.name, str(p)))
    if not found:
        raise InputError(f"{output_dir}: no <model>/<date>_results.json (lmms-eval's layout); run "
                         "recipes/evaluate_policy.py with --output_dir there first")
    res = found[-1]
    if task is None:
        return res, None
    sam = res.with_name(res.name.replace("_results.json", f"_samples_{task}.jsonl"))
    return res, sam if sam.is_file() else None


# --------------------------------------------------------------------------------------------------------------
# Command line


def load_policy(model_args, adapter: str | None = None, merge: bool = True, trust_remote_code: bool = False):
    """Base model + processor (4/8-bit as ``model_args`` says) with ``adapter`` on top (merged when possible)."""
    model, processor = load_model_and_processor(model_args, SimpleNamespace(trust_remote_code=trust_remote_code))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if merge and not (model_args.load_in_4bit or model_args.load_in_8bit):
            model = model.merge_and_unload()
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        import torch

        model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model, processor


def load_eval_dataset(eval_args):
    from saev_curate.io.datasets import load_local_dataset

    p = Path(eval_args.dataset_name).expanduser()
    if p.exists():
        import datasets

        try:
            return load_local_dataset(p, split=eval_args.dataset_split)
        except Exception:  # a single local dataset: any split name means "all of it"
            ds = load_local_dataset(p)
            if isinstance(ds, datasets.Dataset):
                return ds
            raise
    from datasets import load_dataset

    return load_dataset(eval_args.dataset_name, name=eval_args.dataset_config, split=eval_args.dataset_split)


def main(eval_args, model_args) -> dict:
    """Load base + adapter and the held-out set, evaluate, write results; returns the results dict."""
    if not eval_args.dataset_name:
        raise ValueError("--dataset_name is required (a held-out set with question, image, options, answer)")
    if eval_args.limit is not None and eval_args.limit < 1:
        raise InputError(f"--limit {eval_args.limit}: give the number of rows to evaluate (at least 1), or leave it "
                         "out for every row")
    if (eval_args.sae is None) != (eval_args.crossmodal_weights is None):
        raise InputError("--sae and --crossmodal_weights go together (the SAE-V score needs both): give both, or "
                         "neither")
    dataset = load_eval_dataset(eval_args)
    check_eval_rows(dataset, eval_args.limit)  # a set the evaluation cannot read fails before the model loads
    model, processor = load_policy(model_args, eval_args.adapter, eval_args.merge_adapter)
    have_score = eval_args.sae is not None
    config = {"model_args": f"pretrained={model_args.model_name_or_path}"
                            + (f",adapter={eval_args.adapter}" if eval_args.adapter else ""),
              "dataset": eval_args.dataset_name, "split": eval_args.dataset_split,
              "device": str(_device(model)), "dtype": model_args.dtype,
              "sae": eval_args.sae, "crossmodal_weights": eval_args.crossmodal_weights}
    results = evaluate(model, processor, dataset, task=eval_args.task,
                       sae=eval_args.sae if have_score else None,
                       weights=eval_args.crossmodal_weights if have_score else None,
                       score_config=ScoreConfig.from_fields(eval_args),
                       max_new_tokens=eval_args.max_new_tokens,
                       limit=eval_args.limit, output_dir=eval_args.output_dir, log_samples=eval_args.log_samples,
                       config=config)
    r = results["results"][eval_args.task]
    print(json.dumps(_strict({k: v for k, v in r.items() if k.endswith(",none")}), indent=2))
    return results


def make_parser():
    from trl import ModelConfig, TrlParser

    return TrlParser((EvalArguments, ModelConfig))


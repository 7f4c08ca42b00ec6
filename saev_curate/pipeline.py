"""`saev-curate pipeline`: the whole flow on the embedded default, offline, ending in one HTML report.

1. **Score** (``saev_curate.demo.run_demo`` is this half): build or load the testbed model (a small LLaVA trained
   here on real digits, faces, photos and drawn shapes; cached), train or load an SAE-V for its middle layer
   (cached), draw ``rows`` TRL preference rows over *dev-split* images with ``defect_rate`` of them defective
   (the ``defect`` column, which no method reads), fit ω, score every row with every method, AUROC per defect kind.
2. **Train**: DPO with LoRA (``saev_curate.recipes.dpo.main``, the recipe users run) on three subsets of those
   rows: the top ``fraction`` by ``by``, all rows, and a random subset of the same size. Budget policy: the same
   number of optimizer steps (``dpo_steps`` at batch ``batch_size``) for all three, so a smaller subset is seen
   for more epochs and no run gets more updates than another.
3. **Evaluate** the base model and the three policies on held-out questions over *test-split* images that no
   training row touched (``saev_curate.recipes.evaluate.evaluate``: accuracy by likelihood over the answer
   options, with its standard error, and greedy exact match).
4. **Report**: ``OUT/report.html``: the three accuracies and their differences, the score histogram by defect
   kind with the cut marked, detection AUROC for every method; ``OUT/pipeline.json`` holds the numbers.

A rerun reuses what is cached: the model and SAE (beside the model, under ``~/.cache/saev-curate``), the scores
(``OUT/scoring``, keyed by what they depend on; changing ``--fraction`` or ``--by`` does not re-score), and each
trained-and-evaluated policy (``OUT/dpo/<name>``, keyed by its subset and training settings).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saev_curate.errors import InputError

#: LoRA and DPO settings of recipes/configs/dpo_testbed_cpu.yaml (the recipe's CPU config for the testbed)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEY_VERSION = 1


@dataclass
class PipelineResult:
    out_dir: Path
    report: Path
    by: str
    fraction: float
    n_rows: int
    n_kept: int
    steps: int
    #: name -> {"acc", "acc_stderr", "exact_match", "n", "train_rows", "defect_share"}; names: base, selected,
    #: full, random
    accuracies: dict[str, dict[str, Any]]
    auroc: dict[str, dict[str, float]]
    seconds: float
    reused: list[str] = field(default_factory=list)


def _key(doc: dict) -> str:
    return hashlib.sha256(json.dumps({"v": KEY_VERSION, **doc}, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cached(folder: Path, key: str) -> dict | None:
    """The record of ``folder``'s finished step when it was made with ``key``; on a miss the stale record is removed
    first, so a step killed while it rewrites the folder can never pass for the earlier, finished one."""
    marker = folder / "pipeline_key.json"
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("key") == key:
        return doc
    marker.unlink(missing_ok=True)
    return None


def _mark(folder: Path, key: str, **extra) -> None:
    """Record that ``folder``'s step finished with ``key`` (written atomically, last)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "pipeline_key.json.tmp"
    tmp.write_text(json.dumps({"key": key, **extra}, indent=2, default=str))
    tmp.replace(folder / "pipeline_key.json")


def score_column(by: str) -> str:
    """The column the recipe selects on: a ``saev_*`` name (so the recipe reads the rows as already scored)."""
    return by if by.startswith("saev_") else f"saev_{by}"


def dpo_arguments(model_path, output_dir, *, steps: int, batch_size: int = 8, learning_rate: float = 5e-4,
                  seed: int = 0, progress: bool = True, lora_r: int = 16, sft_weight: float = 0.0):
    """``(ModelConfig, DPOConfig)`` for LoRA DPO on a CPU: ``use_cpu``, fp32, no gradient checkpointing, no
    ``max_length`` cut (TRL 1.16's defaults raise on a CPU-only machine or cut image tokens). ``sft_weight > 0``
    adds TRL's NLL loss on the chosen response with that weight (``loss_type=["sigmoid", "sft"]``, as RPO and MPO
    do): pure DPO lowers the chosen answer's likelihood too, and on the testbed it damaged the answers it did not
    train on within 150 steps."""
    from trl import DPOConfig, ModelConfig

    model_args = ModelConfig(model_name_or_path=str(model_path), dtype="float32", use_peft=True, lora_r=lora_r,
                             lora_alpha=2 * lora_r, lora_dropout=0.0, lora_target_modules=list(LORA_TARGETS))
    training_args = DPOConfig(
        output_dir=str(output_dir), use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=None,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=0.03, beta=0.1, seed=seed,
        loss_type=["sigmoid", "sft"] if sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, sft_weight] if sft_weight > 0 else None,
        data_seed=seed, save_strategy="no", report_to=[], logging_steps=max(1, steps // 4),
        dataloader_num_workers=0, disable_tqdm=not progress)
    return model_args, training_args


def train_dpo(model_path, dataset, output_dir, saev_args, *, steps: int, batch_size: int = 8,
              learning_rate: float = 5e-4, seed: int = 0, progress: bool = True, lora_r: int = 16,
              sft_weight: float = 0.0, dataset_name: str | None = None):
    """LoRA DPO with the recipe (``saev_curate.recipes.dpo.main``) on ``dataset`` selected by ``saev_args``;
    returns ``(policy, processor, selection_doc)`` (the policy: the base model with its trained adapter)."""
    import torch
    from trl import ScriptArguments

    from saev_curate.recipes.dpo import main as dpo_main
    from saev_curate.vlm.load import load_vlm

    model_args, training_args = dpo_arguments(model_path, output_dir, steps=steps, batch_size=batch_size,
                                              learning_rate=learning_rate, seed=seed, progress=progress,
                                              lora_r=lora_r, sft_weight=sft_weight)
    model, processor = load_vlm(str(model_path), device="cpu", dtype=torch.float32)  # a fresh base per run
    trainer = dpo_main(ScriptArguments(dataset_name=dataset_name), saev_args,
                       training_args, model_args, model=model, processor=processor, dataset=dataset)
    selection = json.loads((Path(output_dir) / "selection.json").read_text())
    policy = trainer.model
    policy.eval()
    return policy, processor, selection


def eval_rows(n_per_type: int, seed: int = 0, qtypes: tuple[str, ...] | None = None):
    """Held-out questions over test-split images (``question``, ``image``, ``options``, ``answer``, ``qtype``),
    ``n_per_type`` of each image question type (of ``qtypes`` only, when given)."""
    import datasets

    from saev_curate.testbed import heldout_questions

    return datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "concept"}
                                       for r in heldout_questions(n_per_type, seed=seed)
                                       if qtypes is None or r["qtype"] in qtypes])


def accuracy_of(results: dict) -> dict[str, Any]:
    task = next(iter(results["results"]))
    r = results["results"][task]
    return {"acc": r["acc,none"], "acc_stderr": r["acc_stderr,none"], "exact_match": r["exact_match,none"],
            "n": results["n-samples"][task]["effective"]}


def run_pipeline(out_dir: str | Path = "saev-pipeline", *, model: str | None = None, sae: str | None = None,
                 rows: int = 600, defect_rate: float = 0.3, fraction: float = 0.5, by: str | None = None,
                 sae_steps: int = 1000, architecture: str = "topk", n_reference: int = 1000, dpo_steps: int = 60,
                 batch_size: int = 8, learning_rate: float = 5e-4, eval_per_type: int = 30, max_new_tokens: int = 3,
                 seed: int = 0, progress: bool = True) -> PipelineResult:
    """Score, select, DPO on selected / all / random rows, evaluate all, write ``OUT/report.html``."""
    from tqdm.auto import tqdm

    from saev_curate.demo import DEFAULT_BY, check_job_arguments, run_demo
    from saev_curate.recipes.common import SaevArguments
    from saev_curate.recipes.evaluate import evaluate

    by = by or DEFAULT_BY
    check_job_arguments(rows=rows, defect_rate=defect_rate, fraction=fraction, by=by)
    if not 0 < fraction < 1:
        raise InputError(f"--fraction {fraction}: give the share of rows to keep, in (0, 1) (1 is the full-data run)")
    for name, value in (("--dpo-steps", dpo_steps), ("--batch-size", batch_size), ("--eval-per-type", eval_per_type)):
        if value <= 0:
            raise InputError(f"{name} {value} must be positive")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reused: list[str] = []
    if model is None:
        from saev_curate.testbed import build_testbed

        model_path = build_testbed()
    else:
        model_path = Path(model).expanduser()
        if not model_path.exists():
            raise InputError(f"--model {model}: no such folder (give a local VLM folder, or leave --model out for "
                             "the testbed model)")

    # 1. scores (the demo's half), cached in OUT/scoring
    scoring = out / "scoring"
    skey = _key({"model": str(model_path.resolve()), "sae": sae, "rows": rows, "defect_rate": defect_rate,
                 "sae_steps": sae_steps, "architecture": architecture, "n_reference": n_reference, "seed": seed,
                 "split": "dev"})
    hit = _cached(scoring, skey)
    if hit is not None and (scoring / "scored" / "dataset_info.json").is_file():
        auroc = hit["auroc"]
        reused.append("scores")
        print(f"scores: reusing {scoring}")
    else:
        demo = run_demo(scoring, model=str(model_path), sae=sae, rows=rows, defect_rate=defect_rate,
                        sae_steps=sae_steps, architecture=architecture, n_reference=n_reference, fraction=fraction,
                        by=by, seed=seed, progress=progress, split="dev", report=False)
        auroc = demo.auroc
        _mark(scoring, skey, auroc=auroc)
    import datasets

    scored = datasets.load_from_disk(str(scoring / "scored"))
    if f"method_{by}" not in scored.column_names:
        methods = sorted(c.removeprefix("method_") for c in scored.column_names if c.startswith("method_"))
        raise InputError(f"--by {by!r}: no such method; use one of {', '.join(methods)}")
    col = score_column(by)
    train_rows = scored.rename_column(f"method_{by}", col) if col != f"method_{by}" else scored
    train_rows = train_rows.remove_columns([c for c in train_rows.column_names
                                            if c.startswith("method_") or c == "saev_error"])
    defects = list(scored["defect"])

    # 2 + 3. DPO on three subsets (same steps), evaluation of all on held-out test questions
    runs = {
        "selected": (f"top {fraction:.0%} by {by}", SaevArguments(select_by=col, select_fraction=fraction)),
        "full": ("all rows", SaevArguments(select_by=col)),
        "random": (f"random {fraction:.0%}", SaevArguments(select_by="random", select_fraction=fraction,
                                                          select_seed=seed)),
    }
    ekey = {"eval_per_type": eval_per_type, "eval_seed": seed, "max_new_tokens": max_new_tokens}
    tkey = {"scores": skey, "steps": dpo_steps, "batch_size": batch_size, "lr": learning_rate, "seed": seed, **ekey}
    accuracies: dict[str, dict[str, Any]] = {}
    questions = None
    bar = tqdm(total=1 + len(runs), desc="pipeline: DPO + evaluation", disable=not progress)
    base_dir = out / "eval" / "base"
    bkey = _key({"model": str(model_path.resolve()), **ekey})
    if (hit := _cached(base_dir, bkey)) is not None:
        accuracies["base"] = hit["accuracy"]
        reused.append("base")
    else:
        from saev_curate.vlm.load import load_vlm

        questions = questions or eval_rows(eval_per_type, seed)
        base, processor = load_vlm(str(model_path), device="cpu")
        res = evaluate(base, processor, questions, task="testbed_heldout", max_new_tokens=max_new_tokens,
                       output_dir=base_dir, config={"model": str(model_path), "adapter": None}, progress=progress)
        accuracies["base"] = {**accuracy_of(res), "label": "base model (no DPO)", "train_rows": 0,
                              "defect_share": None, "steps": 0}
        _mark(base_dir, bkey, accuracy=accuracies["base"])
    bar.update()
    for name, (label, saev_args) in runs.items():
        folder = out / "dpo" / name
        key = _key({**tkey, "run": name, "fraction": fraction if name != "full" else 1.0,
                    "by": by if name == "selected" else name})
        if (hit := _cached(folder, key)) is not None:
            accuracies[name] = hit["accuracy"]
            reused.append(name)
            bar.update()
            continue
        t = time.perf_counter()
        policy, processor, selection = train_dpo(model_path, train_rows, folder, saev_args, steps=dpo_steps,
                                                 batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                                 progress=progress, dataset_name=str(scoring / "scored"))
        train_s = time.perf_counter() - t
        questions = questions or eval_rows(eval_per_type, seed)
        res = evaluate(policy, processor, questions, task="testbed_heldout", max_new_tokens=max_new_tokens,
                       output_dir=folder / "eval", config={"model": str(model_path), "adapter": str(folder)},
                       progress=progress)
        kept = selection["kept_indices"]
        accuracies[name] = {**accuracy_of(res), "label": label, "train_rows": len(kept), "steps": dpo_steps,
                            "defect_share": sum(defects[i] != "none" for i in kept) / max(1, len(kept)),
                            "cut": selection.get("cut") if name == "selected" else None,
                            "train_seconds": round(train_s, 1)}
        _mark(folder, key, accuracy=accuracies[name])
        bar.update()
    bar.close()

    seconds = time.perf_counter() - start
    result = PipelineResult(out, out / "report.html", by, fraction, len(scored), accuracies["selected"]["train_rows"],
                            dpo_steps, accuracies, auroc, seconds, reused)
    write_pipeline_report(result, scored, model_path=model_path, defect_rate=defect_rate, batch_size=batch_size,
                          learning_rate=learning_rate)
    doc = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    doc["settings"] = {"rows": rows, "defect_rate": defect_rate, "dpo_steps": dpo_steps, "batch_size": batch_size,
                       "learning_rate": learning_rate, "eval_per_type": eval_per_type, "seed": seed,
                       "budget_policy": "same number of optimizer steps for every subset", "model": str(model_path)}
    (out / "pipeline.json").write_text(json.dumps(doc, indent=2, default=str))
    return result


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def accuracy_section(result: PipelineResult) -> str:
    """The HTML block with the three accuracies (and the base model's) and their differences."""
    acc = result.accuracies
    full = acc["full"]["acc"]
    rows = []
    for name in ("selected", "full", "random", "base"):
        a = acc[name]
        delta = "" if name == "full" else f"{100 * (a['acc'] - full):+.1f}"
        shade = ' style="background:#eef3fb"' if name == "selected" else ""
        rows.append(f"<tr{shade}><td>{html.escape(a['label'])}</td><td>{a['train_rows']}</td>"
                    f"<td>{_pct(a.get('defect_share'))}</td><td>{a['steps']}</td>"
                    f"<td><b>{_pct(a['acc'])}</b> ± {_pct(a['acc_stderr'])}</td><td>{delta}</td>"
                    f"<td>{_pct(a['exact_match'])}</td></tr>")
    sel, rnd = acc["selected"]["acc"], acc["random"]["acc"]
    se = math.sqrt(acc["selected"]["acc_stderr"] ** 2 + acc["random"]["acc_stderr"] ** 2)
    head = (f"<h2>Alignment: DPO on the selection vs all rows vs random rows</h2><p>Top {result.fraction:.0%} by "
            f"<b>{html.escape(result.by)}</b>: <b>{100 * (sel - full):+.1f}</b> accuracy points against all rows, "
            f"<b>{100 * (sel - rnd):+.1f}</b> against a random {result.fraction:.0%} (standard error of that "
            f"difference about {100 * se:.1f} points: one seed, {acc['full']['n']} questions; differences within "
            "two standard errors are noise). Budget: the same number of LoRA DPO steps for every subset. Accuracy: "
            "the answer option with the highest likelihood given image and question, on held-out questions over "
            "test-split images no training row used.</p>")
    table = ("<table><tr><th>policy</th><th>training rows</th><th>defective</th><th>DPO steps</th>"
             "<th>held-out accuracy</th><th>Δ vs all rows (points)</th><th>greedy exact match</th></tr>"
             + "".join(rows) + "</table>")
    return head + table


def write_pipeline_report(result: PipelineResult, scored, *, model_path, defect_rate: float, batch_size: int,
                          learning_rate: float) -> Path:
    from saev_curate.report import write_score_report

    col = f"method_{result.by}"
    sel = result.accuracies["selected"]
    return write_score_report(
        scored, result.report, by=col, label="defect", auroc=result.auroc, highlight=result.by,
        title="saev-curate pipeline: SAE-V selection, DPO, held-out accuracy", cut=sel.get("cut"),
        cut_label=f"cut: top {result.fraction:.0%} kept (right)", sections=[accuracy_section(result)],
        extra={"model": str(model_path), "training rows": f"{result.n_rows} preference rows over dev-split images, "
               f"{defect_rate:.0%} with a tagged defect",
               "DPO": f"LoRA, {result.steps} steps at batch {batch_size}, lr {learning_rate:g}, beta 0.1, CPU fp32",
               "reused from cache": ", ".join(result.reused) or "nothing", "seconds": round(result.seconds)})

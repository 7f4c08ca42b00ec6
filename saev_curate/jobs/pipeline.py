"""`saev-curate pipeline`: the whole flow on the embedded default, offline, ending in one HTML report.

1. **Score** (``saev_curate.jobs.demo.run_demo`` is this half): build or load the alignment base
   (:data:`saev_curate.testbed.ALIGNMENT_BASE`: a small LLaVA trained here on real digits, faces, photos and drawn
   shapes, whose descriptions state some facts without looking; cached), train or load an SAE-V for its middle
   layer (cached), draw ``rows`` long-answer preference rows over *dev-split* images with ``defect_rate`` of them
   defective (:func:`saev_curate.testbed.alignment_rows`; the ``defect`` column, which no method reads), fit ω,
   score every row with every method, AUROC per defect kind.
2. **Train**: LoRA DPO (``saev_curate.recipes.dpo.main``, the recipe users run; DPO plus an NLL term on the chosen
   response) on the top ``fraction`` by each ``by`` column, on all rows, and on a random subset of the same size,
   once per training seed. Budget policy: the same number of optimizer steps for every run, so a smaller subset is
   seen for more epochs and no run gets more updates than another.
3. **Evaluate** the base model and every policy on held-out *test-split* items no training row touched: greedy
   descriptions (exact-description rate, hallucination rate, recall) and questions (the recipe's likelihood
   accuracy, lmms-eval files).
4. **Report**: ``OUT/report.html`` opens with what each selection bought against all rows and random rows (mean
   over seeds, paired bootstrap intervals over the held-out items), then the score histogram with the cut and
   detection AUROC for every method; ``OUT/pipeline.json`` holds the numbers.

A rerun reuses what is cached: the model and SAE (beside the model, under ``~/.cache/saev-curate``), the scores
(``OUT/scoring``, keyed by what they depend on; changing ``--fraction`` or ``--by`` does not re-score), and each
trained-and-evaluated policy (``OUT/dpo/<name>/seed<s>``, keyed by its subset, seed and training settings; a
policy of other settings there, the job's own earlier one, is removed and trained anew, never mixed).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saev_curate.core.errors import InputError

#: LoRA and DPO settings of recipes/configs/dpo_testbed_cpu.yaml (the recipe's CPU config for the testbed)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEY_VERSION = 3


def default_pipeline_by() -> tuple[str, str]:
    """The main job's ranking methods when none are named, from the methods table's recommendations for preference
    rows: the best SAE-V method (the histogram and cut show it) and, beside it, the best method of any kind."""
    from saev_curate.curation.methods import default_by

    return default_by(shape="preference", saev_only=True), default_by(shape="preference")


#: rows a ``--by auto`` check plants defects into (one copy each)
AUTO_CHECK_ROWS = 200
#: training seeds of every DPO run (error bars: the spread over seeds beside a bootstrap over held-out items)
DEFAULT_SEEDS = (0, 1)


@dataclass
class PipelineResult:
    out_dir: Path
    report: Path
    by: list[str]
    fraction: float
    n_rows: int
    steps: int
    seeds: list[int]
    #: name -> {"label", "train_rows", "defect_share", "steps", "by_seed": {seed: metrics}, "mean": metrics}; names:
    #: base, selected:<by> for each ranking column, full, random; metrics: :data:`METRICS`
    policies: dict[str, dict[str, Any]]
    #: name -> {"vs_full" / "vs_random" / "vs_base": {metric: {"difference", "low", "high"}}}
    effects: dict[str, dict[str, dict]]
    auroc: dict[str, dict[str, float]]
    seconds: float
    reused: list[str] = field(default_factory=list)
    #: ``--by auto``: the check that chose the method (``{"method", "check", "recommended"}``)
    by_from: dict[str, Any] | None = None


def _key(doc: dict) -> str:
    return hashlib.sha256(json.dumps({"v": KEY_VERSION, **doc}, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _scoring_code() -> str:
    """The source the scores come from (capture, SAE, curation, testbed data): another version scores afresh,
    as the testbed SAE it trains is made again (:func:`~saev_curate.jobs.detection.testbed_sae`)."""
    from saev_curate import curation, sae, testbed, vlm
    from saev_curate.io.fingerprint import source_fingerprint

    return source_fingerprint(vlm, sae, curation, testbed)


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


def _auto_by(folder: Path, scores_key: str, model_path: Path, sae: str, weights: Path, scored, progress: bool
             ) -> dict[str, Any]:
    """``--by auto``: run ``saev-curate check`` on 200 of the training rows (cached in ``folder``) and take what it
    measured best for preference rows."""
    key = _key({"scores": scores_key, "n": AUTO_CHECK_ROWS})
    hit = _cached(folder, key)
    if hit is None:
        from saev_curate.jobs.check import check

        rows = scored.remove_columns([c for c in scored.column_names if c.startswith("method_") or c == "saev_error"])
        result = check(str(model_path), sae, str(weights), rows, folder, n=AUTO_CHECK_ROWS, progress=progress)
        hit = {"recommended": result.recommended}
        _mark(folder, key, **hit)
    return {"method": hit["recommended"]["preference"], "check": str(folder / "check.json"),
            "recommended": hit["recommended"]}


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


#: the policy scores the job reports, and which way is better
METRICS = {"exact": ("exact descriptions", True), "hallucination_rate": ("hallucination rate", False),
           "recall": ("fact recall", True), "qa_acc": ("QA accuracy", True)}


def policy_scores(model, processor, n_eval: int, eval_per_type: int, folder: Path) -> dict[str, list]:
    """Per held-out item: greedy descriptions of ``n_eval`` test-split images (``exact`` 0/1, ``false``, ``stated``,
    ``recalled``, ``true`` fact counts) and the recipe's likelihood accuracy on ``eval_per_type`` questions per type
    (``qa``; lmms-eval files in ``folder``)."""
    from saev_curate.recipes.evaluate_policy import evaluate, latest_results
    from saev_curate.testbed import evaluate_descriptions, heldout_descriptions

    per = evaluate_descriptions(model, processor, heldout_descriptions(n_eval, seed=0))["per_image"]
    evaluate(model, processor, eval_rows(eval_per_type, seed=0), task="testbed_heldout", max_new_tokens=0,
             output_dir=folder, log_samples=True, model_name="policy")
    _, samples = latest_results(folder, "testbed_heldout")
    qa = [json.loads(line)["acc"] for line in samples.read_text().splitlines()]
    return {"exact": [float(p["false"] == 0 and p["recalled"] == p["true_facts"]) for p in per],
            "false": [p["false"] for p in per], "stated": [p["stated"] for p in per],
            "recalled": [p["recalled"] for p in per], "true": [p["true_facts"] for p in per], "qa": qa}


def metrics_of(items: dict[str, list], idx=None, qidx=None) -> dict[str, float]:
    """The job's metrics from :func:`policy_scores`' items (over the image indices ``idx`` and question indices
    ``qidx`` when given: a bootstrap resample)."""
    import numpy as np

    a = {k: np.asarray(v, dtype=float) for k, v in items.items()}
    if idx is not None:
        a = {k: (v[qidx] if k == "qa" else v[idx]) for k, v in a.items()}
    return {"exact": float(a["exact"].mean()), "hallucination_rate": float(a["false"].sum() / max(1.0, a["stated"].sum())),
            "recall": float(a["recalled"].sum() / max(1.0, a["true"].sum())), "qa_acc": float(a["qa"].mean())}


def difference(a: list[dict], b: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Mean over seeds of (policy ``a`` - policy ``b``) per metric, with a 95% percentile bootstrap interval over the
    held-out images and questions (the same resample for every seed and both policies: a paired comparison).
    ``a`` and ``b``: :func:`policy_scores` items, one per seed."""
    import numpy as np

    a, b = ([{k: np.asarray(v, dtype=float) for k, v in x.items()} for x in side] for side in (a, b))  # once
    n, q = len(a[0]["exact"]), len(a[0]["qa"])
    point = {m: float(np.mean([metrics_of(x)[m] - metrics_of(y)[m] for x, y in zip(a, b)])) for m in METRICS}
    rng = np.random.default_rng(seed)
    boots = {m: [] for m in METRICS}
    for _ in range(n_boot):
        idx, qidx = rng.integers(0, n, n), rng.integers(0, q, q)
        ms = [(metrics_of(x, idx, qidx), metrics_of(y, idx, qidx)) for x, y in zip(a, b)]
        for m in METRICS:
            boots[m].append(np.mean([mx[m] - my[m] for mx, my in ms]))
    return {m: {"difference": point[m], "low": float(np.percentile(boots[m], 2.5)),
                "high": float(np.percentile(boots[m], 97.5))} for m in METRICS}


def run_pipeline(out_dir: str | Path = "saev-pipeline", *, model: str | None = None, sae: str | None = None,
                 rows: int = 400, defect_rate: float = 0.3, fraction: float = 0.5, by: Sequence[str] | str | None = None,
                 sae_steps: int = 1000, architecture: str = "topk", n_reference: int = 1000, dpo_steps: int = 80,
                 batch_size: int = 8, learning_rate: float = 1e-3, sft_weight: float = 1.0, n_eval: int = 200,
                 eval_per_type: int = 10, seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = True) -> PipelineResult:
    """Score, select, DPO on selected / all / random rows for each seed, evaluate all, write ``OUT/report.html``."""
    from tqdm.auto import tqdm

    from saev_curate.jobs.demo import check_job_arguments, run_demo
    from saev_curate.recipes.common import SaevArguments
    from saev_curate.testbed.data import ALIGNMENT_DESCRIBE_SHARE, ALIGNMENT_MIX

    bys = [by] if isinstance(by, str) else list(by or default_pipeline_by())
    seeds = list(seeds)
    for b in bys:
        check_job_arguments(rows=rows, defect_rate=defect_rate, fraction=fraction, by=b if b != "auto" else None)
    if not 0 < fraction < 1:
        raise InputError(f"--fraction {fraction}: give the share of rows to keep, in (0, 1) (1 is the full-data run)")
    for name, value in (("--dpo-steps", dpo_steps), ("--batch-size", batch_size), ("--n-eval", n_eval),
                        ("--eval-per-type", eval_per_type)):
        if value <= 0:
            raise InputError(f"{name} {value} must be positive")
    if not learning_rate > 0:
        raise InputError(f"--learning-rate {learning_rate:g} must be positive")
    if not sft_weight >= 0:
        raise InputError(f"--sft-weight {sft_weight:g} must be 0 (pure DPO) or positive")
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {seeds}: give one or more distinct training seeds")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reused: list[str] = []
    if model is None:
        from saev_curate.testbed import ALIGNMENT_BASE, build_testbed

        model_path = build_testbed(ALIGNMENT_BASE)
    else:
        model_path = Path(model).expanduser()
        if not model_path.exists():
            raise InputError(f"--model {model}: no such folder (give a local VLM folder, or leave --model out for "
                             "the testbed model)")

    # 1. scores (the demo's half, on the alignment data), cached in OUT/scoring
    scoring = out / "scoring"
    skey = _key({"model": str(model_path.resolve()), "sae": sae, "rows": rows, "defect_rate": defect_rate,
                 "sae_steps": sae_steps, "architecture": architecture, "n_reference": n_reference,
                 "data": "alignment_rows", "split": "dev", "code": _scoring_code()})
    hit = _cached(scoring, skey)
    if hit is not None and (scoring / "scored" / "dataset_info.json").is_file():
        auroc = hit["auroc"]
        reused.append("scores")
        print(f"scores: reusing {scoring}")
    else:
        demo = run_demo(scoring, model=str(model_path), sae=sae, rows=rows, defect_rate=defect_rate,
                        sae_steps=sae_steps, architecture=architecture, n_reference=n_reference, fraction=fraction,
                        by=next((b for b in bys if b != "auto"), None), seed=0, progress=progress, split="dev",
                        report=False, mix=ALIGNMENT_MIX, describe_share=ALIGNMENT_DESCRIBE_SHARE)
        auroc = demo.auroc
        _mark(scoring, skey, auroc=auroc, sae=demo.sae)
        hit = {"sae": demo.sae}
    import datasets

    scored = datasets.load_from_disk(str(scoring / "scored"))
    by_from = None
    if "auto" in bys:  # a check on a sample of the training rows chooses the method (issue 21)
        by_from = _auto_by(out / "check", skey, model_path, hit.get("sae") or sae, scoring / "weights", scored,
                           progress)
        bys = list(dict.fromkeys(by_from["method"] if b == "auto" else b for b in bys))
    methods = sorted(c.removeprefix("method_") for c in scored.column_names if c.startswith("method_"))
    for b in bys:
        if b not in methods:
            raise InputError(f"--by {b!r}: no such method; use one of {', '.join(methods)}")
    train_rows = scored.remove_columns(["saev_error"]) if "saev_error" in scored.column_names else scored
    train_rows = train_rows.rename_columns({f"method_{m}": score_column(m) for m in methods
                                            if score_column(m) != f"method_{m}"})
    defects = list(scored["defect"])

    # 2 + 3. DPO on each subset for each seed (same steps), evaluation of all on held-out test-split items
    runs = {f"selected:{b}": (f"top {fraction:.0%} by {b}", SaevArguments(select_by=score_column(b),
                                                                        select_fraction=fraction)) for b in bys}
    runs["full"] = ("all rows", SaevArguments(select_by=score_column(bys[0])))
    runs["random"] = (f"random {fraction:.0%}", SaevArguments(select_by="random", select_fraction=fraction))
    ekey = {"n_eval": n_eval, "eval_per_type": eval_per_type}
    tkey = {"scores": skey, "steps": dpo_steps, "batch_size": batch_size, "lr": learning_rate,
            "sft_weight": sft_weight, **ekey}
    policies: dict[str, dict[str, Any]] = {}
    items: dict[str, list[dict]] = {}
    bar = tqdm(total=1 + len(runs) * len(seeds), desc="pipeline: DPO + evaluation", disable=not progress)
    base_dir = out / "eval" / "base"
    bkey = _key({"model": str(model_path.resolve()), **ekey})
    if (hit := _cached(base_dir, bkey)) is None:
        from saev_curate.vlm.load import load_vlm

        base, processor = load_vlm(str(model_path), device="cpu")
        hit = {"items": policy_scores(base, processor, n_eval, eval_per_type, base_dir)}
        _mark(base_dir, bkey, **hit)
    else:
        reused.append("base")
    items["base"] = [hit["items"]] * len(seeds)
    policies["base"] = {"label": "base model (no DPO)", "train_rows": 0, "defect_share": None, "steps": 0}
    bar.update()
    for name, (label, saev_args) in runs.items():
        policies[name] = {"label": label, "steps": dpo_steps}
        items[name] = []
        for seed in seeds:
            folder = out / "dpo" / name.replace(":", "-") / f"seed{seed}"
            key = _key({**tkey, "run": name, "fraction": 1.0 if name == "full" else fraction, "seed": seed})
            if (hit := _cached(folder, key)) is not None:
                reused.append(f"{name}/seed{seed}")
            else:
                if folder.exists():  # the job's own run of other settings (its record was stale): trained anew,
                    import shutil  # never mixed with this run's files (the recipe refuses a folder of another run)

                    shutil.rmtree(folder)
                args = replace(saev_args, select_seed=seed)
                policy, processor, selection = train_dpo(model_path, train_rows, folder, args, steps=dpo_steps,
                                                         batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                                         sft_weight=sft_weight, progress=progress,
                                                         dataset_name=str(scoring / "scored"))
                kept = selection["kept_indices"]
                hit = {"items": policy_scores(policy, processor, n_eval, eval_per_type, folder / "eval"),
                       "train_rows": len(kept), "cut": selection.get("cut"),
                       "defect_share": sum(defects[i] != "none" for i in kept) / max(1, len(kept))}
                _mark(folder, key, **hit)
            items[name].append(hit["items"])
            policies[name].update(train_rows=hit["train_rows"], cut=hit["cut"],
                                  defect_share=hit["defect_share"])  # the same rows for every seed but random's
            bar.update()
    bar.close()
    for name, its in items.items():
        per_seed = [metrics_of(x) for x in its]
        policies[name]["by_seed"] = dict(zip(seeds, per_seed))
        policies[name]["mean"] = {m: sum(p[m] for p in per_seed) / len(per_seed) for m in METRICS}
    effects = {f"selected:{b}": {"vs_full": difference(items[f"selected:{b}"], items["full"]),
                                 "vs_random": difference(items[f"selected:{b}"], items["random"]),
                                 "vs_base": difference(items[f"selected:{b}"], items["base"])} for b in bys}
    effects["full"] = {"vs_base": difference(items["full"], items["base"])}

    seconds = time.perf_counter() - start
    result = PipelineResult(out, out / "report.html", bys, fraction, len(scored), dpo_steps, seeds, policies, effects,
                            auroc, seconds, reused, by_from)
    write_pipeline_report(result, scored, model_path=model_path, defect_rate=defect_rate, batch_size=batch_size,
                          learning_rate=learning_rate, sft_weight=sft_weight, n_eval=n_eval,
                          eval_per_type=eval_per_type)
    doc = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    doc["settings"] = {"rows": rows, "defect_rate": defect_rate, "dpo_steps": dpo_steps, "batch_size": batch_size,
                       "learning_rate": learning_rate, "sft_weight": sft_weight, "n_eval": n_eval,
                       "eval_per_type": eval_per_type, "seeds": seeds,
                       "budget_policy": "same number of optimizer steps for every subset", "model": str(model_path)}
    (out / "pipeline.json").write_text(json.dumps(doc, indent=2, default=str))
    return result


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _points(d: dict) -> str:
    return f"{100 * d['difference']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def headline(result: PipelineResult, by: str) -> str:
    """One sentence: what selecting by ``by`` bought against all rows and against random rows."""
    e, m = result.effects[f"selected:{by}"], result.policies[f"selected:{by}"]["mean"]
    full = result.policies["full"]["mean"]
    return (f"Training on the top {result.fraction:.0%} by {by} gave {100 * m['exact']:.1f}% exact descriptions "
            f"against {100 * full['exact']:.1f}% with all rows ({_points(e['vs_full']['exact'])}) and "
            f"{_points(e['vs_random']['exact'])} against a random {result.fraction:.0%}; hallucination rate "
            f"{100 * m['hallucination_rate']:.1f}% vs {100 * full['hallucination_rate']:.1f}%.")


def effect_section(result: PipelineResult) -> str:
    """The first screen: what each selection bought (one sentence each), then every policy's scores."""
    seeds = ", ".join(map(str, result.seeds))
    lead = "".join(f"<p><b>{html.escape(headline(result, b))}</b></p>" for b in result.by)
    if result.by_from:
        lead += (f"<p>--by auto: <code>saev-curate check</code> on {AUTO_CHECK_ROWS} of the training rows measured "
                 f"<b>{html.escape(result.by_from['method'])}</b> best for preference rows on this model "
                 f"(<a href='check/report.html'>its page</a>).</p>")
    head = (f"<h2>What selection bought: DPO on the selection vs all rows vs random rows</h2>{lead}"
            f"<p>Mean over {len(result.seeds)} training seed(s) ({seeds}); [95% interval] from a paired bootstrap "
            "over the held-out images and questions (it covers which items were drawn, not training noise: compare "
            "the per-seed values). Budget: the same number of LoRA DPO steps for every subset. Exact descriptions: "
            "greedy descriptions of held-out test-split images that state every fact of the image and nothing "
            "false; hallucination rate: false facts / stated facts (CHAIR); QA: likelihood accuracy on held-out "
            "questions. The study behind these defaults: benchmarks/alignment_effect.</p>")
    rows = []
    for name, p in result.policies.items():
        shade = ' style="background:#eef3fb"' if name.startswith("selected") else ""
        per_seed = " / ".join(_pct(s["exact"]) for s in p["by_seed"].values()) if len(result.seeds) > 1 and \
            name != "base" else ""  # the base is one model, not one per seed
        cells = "".join(f"<td>{_pct(p['mean'][m])}</td>" for m in METRICS)
        rows.append(f"<tr{shade}><td>{html.escape(p['label'])}</td><td>{p['train_rows']}</td>"
                    f"<td>{_pct(p.get('defect_share'))}</td><td>{p['steps']}</td>{cells}<td>{per_seed}</td></tr>")
    table = ("<table><tr><th>policy</th><th>training rows</th><th>defective</th><th>DPO steps</th>"
             + "".join(f"<th>{METRICS[m][0]}</th>" for m in METRICS) + "<th>exact, per seed</th></tr>"
             + "".join(rows) + "</table>")
    return head + table


def write_pipeline_report(result: PipelineResult, scored, *, model_path, defect_rate: float, batch_size: int,
                          learning_rate: float, sft_weight: float, n_eval: int, eval_per_type: int) -> Path:
    from saev_curate.jobs.report import write_score_report

    by = result.by[0]
    sel = result.policies[f"selected:{by}"]
    site = result.report.parent / "scoring" / "site" / "index.html"
    link = ([f"<p><a href='{site.relative_to(result.report.parent)}'>Look inside: the SAE's features (what each fires "
             "on, with image heat maps) and why the lowest- and highest-scoring training rows score what they "
             "score</a></p>"] if site.is_file() else [])
    return write_score_report(
        scored, result.report, by=f"method_{by}", label="defect", auroc=result.auroc, highlight=by,
        title="saev-curate pipeline: selection, DPO, hallucinations of the trained policies", cut=sel.get("cut"),
        cut_label=f"cut: top {result.fraction:.0%} kept (right)", sections=[effect_section(result), *link],
        extra={"model": str(model_path), "training rows": f"{result.n_rows} preference rows over dev-split images, "
               f"{defect_rate:.0%} with a tagged defect",
               "DPO": f"LoRA, {result.steps} steps at batch {batch_size}, lr {learning_rate:g}, beta 0.1, NLL on the "
                      f"chosen response x{sft_weight:g}, CPU fp32",
               "evaluation": f"{n_eval} held-out images described, {9 * eval_per_type} held-out questions",
               "reused from cache": ", ".join(result.reused) or "nothing", "seconds": round(result.seconds)})

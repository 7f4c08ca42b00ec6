"""What selection buys: LoRA DPO on the top X% of long-answer preference data by each method, vs all rows, random
rows and an oracle, judged by the hallucinations of the trained policy's greedy descriptions.

    python -m benchmarks.alignment_effect [--workers 2] [--quick] [--out DIR]

One command runs the whole study and writes ``benchmarks/alignment_effect/results/``: ``results.json`` (every
cell, the tables, the pre-registered test and its ``met``), ``results.md`` and two plots. Each finished cell is
stored under ``results/cells/`` (one JSON per trained policy); a rerun continues where it stopped. The design is
pre-registered in ``PREREGISTRATION.md``; the earlier one-word study is kept in ``v3-one-word/``.

**Design.**
- Base: :data:`saev_curate.testbed.ALIGNMENT_BASE`, the v4 testbed whose instruction stage taught descriptions that
  state the count of a scene and the parity of a digit *without looking* (values drawn at random: an annotator
  writing from priors) while its questions taught both facts from the image. The base knows the facts (its
  question answers say so) and still states them wrongly in descriptions: the language-prior hallucination that
  preference data (RLAIF-V, POVID) is built to remove.
- Data: :func:`saev_curate.testbed.alignment_rows`: 400 TRL preference rows over dev-split images per seed, 30%
  defective. Clean rows are mostly description pairs (chosen: every fact true; rejected: one or two false), the
  rest one-word questions. Defects: hallucinated details in the chosen description (half of them), the rest
  image/prompt mismatches, flipped preferences, corrupted images and off-topic prompts.
- Scores: every method once per data set with the pre-alignment model and its topk SAE-V (``testbed_sae``, seed
  0); ω and the read-outs fitted on the data set itself (1,000 reference rows at most, seed 42, as the paper).
- Methods: the paper's ``saev_score``; the three SAE-V variants the detection benchmark's dev split ranks first on
  this data's defect mix (:func:`dev_ranking`, fixed in :data:`DEV_TOP_SAEV` when the study was pre-registered);
  ``combined`` (the detection benchmark's rank average of an SAE-V column and a likelihood column); mean response
  perplexity and minimum token log-probability; random; and, as the ceiling rather than a method, an oracle that
  keeps clean rows first by reading the ``defect`` label.
- Selection: every method keeps the top X% of each image kind (``select(stratify_by="image_kind")``): every kind
  has clean and defective rows, so no stratum is all defective. Ties are broken by a seeded random order.
- Training: LoRA DPO through the recipe (r 16, beta 0.1, lr 1e-3 cosine, batch 8, fp32 CPU) with an NLL term on
  the chosen response (TRL's ``loss_type=["sigmoid", "sft"]``, weight 1; pure DPO damaged the base in the
  pilot), 80 steps: **the same number of optimizer steps for every cell** whatever the kept fraction.
- Evaluation: greedy descriptions of 300 held-out test-split images: the **exact-description rate** (every fact
  true and none missing; the primary score), fact precision (true stated facts / stated facts, 1 - the CHAIR-style
  hallucination rate) and recall; and likelihood accuracy on 180 held-out questions (20 per type).
- Cells: fractions {10, 25, 50, 75, 100}% x 5 seeds; DPO on all rows of the clean data set of each seed (how much
  clean data helps). Two cells whose kept rows are identical share one training run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DETECTION_RESULTS = HERE.parent / "defect_detection" / "results" / "results.json"
#: the top three SAE-V variants of the detection benchmark's dev split on this study's defect mix (:func:`dev_ranking`
#: over ``benchmarks/defect_detection/results/`` at commit 8db8723), fixed when the study was pre-registered
DEV_TOP_SAEV = ("saev_token_readout_min_margin", "saev_token_readout_min_chosen", "saev_answer_readout_margin")
#: the detection benchmark's ``combined`` column for the topk SAE at the same commit: (SAE-V column, likelihood
#: column), rank-averaged
COMBINED = ("saev_token_readout_min_chosen", "response_perplexity")
PAPER = "saev_score"
BASELINES = ("response_perplexity", "min_token_logprob", "random")
#: not a method: keeps clean rows first by reading the ``defect`` label (what perfect filtering would give)
ORACLE = "oracle (reads the labels)"
FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
SEEDS = (10, 11, 12, 13, 14)
STRATIFY_BY = "image_kind"
#: the pre-registered primary comparison (PREREGISTRATION.md)
PRIMARY = {"method": DEV_TOP_SAEV[0], "fraction": 0.5, "metric": "exact", "ratio_to_full": 1.10, "alpha": 0.05}
METRICS = {"exact": "share of held-out images described exactly (every fact true, none missing)",
           "precision": "fact precision of greedy descriptions (1 - hallucination rate)",
           "recall": "fact recall of greedy descriptions", "qa_acc": "held-out QA accuracy (likelihood)"}
#: DPO with an NLL term on the chosen response (weight 1): the pilot's pure DPO damaged the base within 150 steps
SFT_WEIGHT = 1.0
#: per-cell costs measured on this CPU, one thread per worker (the printed estimate)
STEP_S, CELL_OVERHEAD_S, EVAL_S = 0.45, 4.0, 12.0


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def dev_ranking(detection: dict, mix: dict[str, float], *, prefix: str = "", sae: str = "topk") -> list[str]:
    """The detection benchmark's methods (those named ``prefix...``; ``saev_`` for the SAE-V variants) by their
    dev-split AUROC averaged over the defect kinds of ``mix`` weighted by their shares, best first."""
    dev = detection["dev_choices"][sae]["dev_auroc"]
    total = sum(mix.values())
    mean = {m: sum(w * a[k] for k, w in mix.items()) / total for m, a in dev.items() if m.startswith(prefix)}
    return sorted(mean, key=mean.get, reverse=True)


def default_methods() -> list[str]:
    return list(dict.fromkeys([PAPER, *DEV_TOP_SAEV, "combined", *BASELINES, ORACLE]))


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def mean_sd(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


# ----------------------------------------------------------------------------------------------------------------
# Data, scores, selections


def data_rows(n: int, rate: float, seed: int) -> list[dict]:
    from saev_curate.testbed import alignment_rows

    return alignment_rows(n, defect_rate=rate, seed=seed)


def score_dataset(ctx: dict, seed: int) -> dict:
    """Every method's scores (higher = cleaner) of seed ``seed``'s data set with the pre-alignment model; cached in
    ``cells/scores-seed<seed>.json``."""
    path = ctx["cells"] / f"scores-seed{seed}.json"
    if (doc := _load(path)) is not None:
        return doc
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.jobs import detection as D

    t = time.perf_counter()
    rows = data_rows(ctx["rows"], ctx["rate"], seed)
    model, processor, sae = ctx["model"], ctx["processor"], ctx["sae"]
    weights = CrossModalWeights.fit(model, processor, sae, datasets.Dataset.from_list(rows), None,
                                    n_reference=min(ctx["n_reference"], len(rows)), seed=42, progress=ctx["progress"])
    scores = D.with_combined(D.method_scores(model, processor, sae, weights, rows, seed=seed), *COMBINED)
    labels = [r["defect"] for r in rows]
    mine = {m: scores[m] for m in ctx["methods"] if m in scores}  # the oracle reads the labels instead
    doc = {"seed": seed, "labels": labels, "groups": [r[STRATIFY_BY] for r in rows], "scores": mine,
           "auroc": D.auroc_table(mine, labels, tasks=[r["task"] for r in rows]),
           "seconds": round(time.perf_counter() - t, 1)}
    _save(path, doc)
    return doc


def method_scores_of(doc: dict, method: str) -> list:
    """A scored data set's values for ``method``; the oracle's are 1 for clean rows and 0 for defective ones."""
    if method != ORACLE:
        return doc["scores"][method]
    return [float(lab == "none") for lab in doc["labels"]]


def kept_indices(scores: list, fraction: float, *, groups: list | None = None, seed: int = 0) -> list[int]:
    """The top ``fraction`` of rows by ``scores`` (of each group's rows with ``groups``: the product's
    ``select(stratify_by=...)``), in row order. Rows without a score are never kept. Ties are broken by a
    ``seed``-ed random order of the rows, not by row order, so a constant score selects like ``random``."""
    import random

    from saev_curate.curation.selection import select

    if fraction >= 1:
        return list(range(len(scores)))
    order = random.Random(seed).sample(range(len(scores)), len(scores))
    rows = [{"i": i, "s": scores[i], "g": groups[i] if groups is not None else 0} for i in order]
    kept = select(rows, by="s", fraction=fraction, min_usable_share=0.0,
                  stratify_by="g" if groups is not None else None)
    return sorted(r["i"] for r in kept)


# ----------------------------------------------------------------------------------------------------------------
# One cell: DPO on the kept rows, evaluation (runs in a worker process)


def run_id(spec: dict) -> str:
    doc = {k: spec[k] for k in ("rate", "seed", "kept", "steps", "batch_size", "lr", "sft_weight", "n_eval", "model")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def evaluate_policy(model, processor, n_eval: int) -> dict:
    """The policy's scores, as the main job computes them (``saev_curate.jobs.pipeline.policy_scores``): exact-description
    rate, fact precision (1 - hallucination rate) and recall of greedy descriptions of ``n_eval`` held-out images,
    and likelihood accuracy on ``n_eval // 15`` held-out questions per type (seed 0, test split)."""
    import shutil
    import tempfile

    from saev_curate.jobs.pipeline import metrics_of, policy_scores

    tmp = Path(tempfile.mkdtemp(prefix="alignment-effect-eval-"))
    try:
        m = metrics_of(policy_scores(model, processor, n_eval, max(1, n_eval // 15), tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"exact": m["exact"], "precision": 1 - m["hallucination_rate"], "recall": m["recall"], "qa_acc": m["qa_acc"]}


def run_cell(spec: dict) -> dict:
    """Train LoRA DPO on ``spec["kept"]`` rows of data set ``(rate, seed)`` and evaluate it; stores the result."""
    import shutil
    import tempfile

    import datasets

    from saev_curate.jobs.pipeline import train_dpo
    from saev_curate.recipes.common import SaevArguments

    path = Path(spec["cell_file"])
    if (doc := _load(path)) is not None:
        return doc
    t = time.perf_counter()
    rows = data_rows(spec["n_rows"], spec["rate"], spec["seed"])
    keep = ("prompt", "chosen", "rejected", "images")
    ds = datasets.Dataset.from_list([{k: rows[i][k] for k in keep} for i in spec["kept"]])
    tmp = Path(tempfile.mkdtemp(prefix="alignment-effect-"))
    try:
        policy, processor, _ = train_dpo(spec["model"], ds, tmp, SaevArguments(), steps=spec["steps"],
                                         batch_size=spec["batch_size"], learning_rate=spec["lr"], seed=spec["seed"],
                                         sft_weight=spec["sft_weight"], progress=False,
                                         dataset_name=f"alignment_rows(rate={spec['rate']}, "
                                                                     f"seed={spec['seed']})")
        train_s = time.perf_counter() - t
        scores = evaluate_policy(policy, processor, spec["n_eval"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    defects = [rows[i]["defect"] != "none" for i in spec["kept"]]
    doc = {"run_id": spec["run_id"], "rate": spec["rate"], "seed": spec["seed"], "steps": spec["steps"],
           "train_rows": len(spec["kept"]), "epochs": spec["steps"] * spec["batch_size"] / max(1, len(spec["kept"])),
           "defect_share": sum(defects) / max(1, len(defects)), **scores,
           "train_seconds": round(train_s, 1), "seconds": round(time.perf_counter() - t, 1)}
    _save(path, doc)
    return doc


def run_base(ctx: dict) -> dict:
    path = ctx["cells"] / "base.json"
    if (doc := _load(path)) is not None:
        return doc
    t = time.perf_counter()
    doc = {**evaluate_policy(ctx["model"], ctx["processor"], ctx["n_eval"]), "seconds": round(time.perf_counter() - t, 1)}
    _save(path, doc)
    return doc


# ----------------------------------------------------------------------------------------------------------------
# The study


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS), help="results folder (cells/ inside it make the study resumable)")
    ap.add_argument("--workers", type=int, default=2, help="cells trained at once, one process and thread each")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="data, DPO and tie-break seeds")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="kept fractions")
    ap.add_argument("--methods", nargs="+", default=None, help="methods (default: see the module docstring)")
    ap.add_argument("--rows", type=int, default=400, help="preference rows per data set")
    ap.add_argument("--defect-rate", type=float, default=0.3, help="share of defective rows in each data set")
    ap.add_argument("--steps", type=int, default=80, help="DPO optimizer steps per cell (the same for all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sft-weight", type=float, default=SFT_WEIGHT, help="weight of the NLL term on the chosen "
                                                                        "response beside the DPO loss (0: pure DPO)")
    ap.add_argument("--n-eval", type=int, default=300, help="held-out images described per policy (and n/15 "
                                                            "questions per question type)")
    ap.add_argument("--sae-steps", type=int, default=1000)
    ap.add_argument("--n-reference", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true", help="a tiny random LLaVA instead of the testbed (smoke tests)")
    ap.add_argument("--replot", action="store_true", help="only redraw the tables and plots from --out's results.json")
    ap.add_argument("--quick", action="store_true", help="the CI smoke run: 1 seed, fractions 0.5 and 1, "
                                                         "3 methods, 2 steps, 40 rows, 15 images")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.fractions = args.seeds[:1], [0.5, 1.0]
        args.methods = args.methods or [PAPER, PRIMARY["method"], "random"]
        args.rows, args.steps, args.n_eval, args.sae_steps, args.n_reference = 40, 2, 15, 20, 40
        args.batch_size = min(args.batch_size, 4)
    out = Path(args.out)
    if args.replot:
        if (doc := _load(out / "results.json")) is None:
            raise SystemExit(f"{out / 'results.json'} is missing or unreadable: run the study first")
        (out / "results.md").write_text(markdown(doc))
        plots(out, doc)
        return doc
    cells = out / "cells"
    t0 = time.perf_counter()

    import torch

    from saev_curate.jobs import detection as D
    from saev_curate.testbed import ALIGNMENT_BASE, build_testbed
    from saev_curate.vlm.load import load_vlm

    torch.set_num_threads(1)
    methods = args.methods or default_methods()
    settings = {"rows": args.rows, "seeds": args.seeds, "defect_rate": args.defect_rate, "fractions": args.fractions,
                "methods": methods, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                "sft_weight": args.sft_weight,
                "n_eval": args.n_eval, "sae": {"architecture": "topk", "steps": args.sae_steps, "seed": 0},
                "n_reference": args.n_reference, "stratify_by": STRATIFY_BY, "combined": list(COMBINED),
                "budget_policy": "same number of optimizer steps for every cell (any kept fraction)",
                "tie_break": "a random order of the rows, seeded by the data set's seed", "primary": PRIMARY}
    if args.tiny:
        from saev_curate.testing import save_tiny_vlm

        model_path = out / "tiny-model"
        if not (model_path / "config.json").is_file():
            save_tiny_vlm("llava", model_path)
        settings["base"] = {"tiny": True}
    else:
        model_path = build_testbed(ALIGNMENT_BASE)
        settings["base"] = {"testbed": model_path.name}
    settings["model"] = str(model_path)
    if (old := _load(out / "settings.json")) is not None and old != json.loads(json.dumps(settings)):
        raise SystemExit(f"{out} holds results of other settings; pass another --out or delete it\n"
                         f"  stored: {json.dumps(old)}\n  now:    {json.dumps(settings)}")
    _save(out / "settings.json", settings)
    model, processor = load_vlm(str(model_path), device="cpu")
    sae, _ = D.testbed_sae(model_path, model, processor, architecture="topk", seed=0, steps=args.sae_steps,
                           progress=True)
    ctx = {"cells": cells, "rows": args.rows, "rate": args.defect_rate, "model": model, "processor": processor,
           "sae": sae, "methods": methods, "n_reference": args.n_reference, "n_eval": args.n_eval, "progress": True}
    timing = {"setup_seconds": round(time.perf_counter() - t0, 1)}

    base = run_base(ctx)
    print(f"base model: exact {base['exact']:.3f}, fact precision {base['precision']:.3f}, recall {base['recall']:.3f}, "
          f"QA {base['qa_acc']:.3f}")
    t = time.perf_counter()
    scores = {}
    for seed in args.seeds:
        scores[seed] = score_dataset(ctx, seed)
        print(f"scored data set seed {seed}")
    timing["scoring_seconds"] = round(time.perf_counter() - t, 1)

    # the cells: (seed, method, fraction) -> a training run (deduplicated by kept rows)
    common = {"n_rows": args.rows, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "sft_weight": args.sft_weight, "n_eval": args.n_eval, "model": str(model_path)}
    cells_index: list[dict] = []
    runs: dict[str, dict] = {}

    def add(rate, seed, method, fraction, kept):
        spec = {"rate": rate, "seed": seed, "kept": kept, **common}
        rid = run_id(spec)
        spec.update(run_id=rid, cell_file=str(cells / f"run-{rid}.json"))
        runs.setdefault(rid, spec)
        cells_index.append({"method": method, "fraction": fraction, "seed": seed, "run_id": rid})

    for seed in args.seeds:
        doc = scores[seed]
        for fraction in args.fractions:
            if fraction >= 1:
                add(args.defect_rate, seed, "all", 1.0, list(range(args.rows)))
                continue
            for m in methods:
                add(args.defect_rate, seed, m, fraction,
                    kept_indices(method_scores_of(doc, m), fraction, groups=doc["groups"], seed=seed))
        add(0.0, seed, "all (clean data)", 1.0, list(range(args.rows)))
    todo = [s for s in runs.values() if _load(Path(s["cell_file"])) is None]
    est = len(todo) * (CELL_OVERHEAD_S + args.steps * STEP_S + EVAL_S * args.n_eval / 300) / max(1, args.workers)
    print(f"{len(cells_index)} cells, {len(runs)} distinct training runs, {len(todo)} to run; "
          f"estimated {est / 60:.0f} min with {args.workers} worker(s)")

    t = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="alignment-effect cells", unit="cell")
    if args.workers <= 1:
        for spec in todo:
            run_cell(spec)
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            for fut in as_completed([pool.submit(run_cell, s) for s in todo]):
                fut.result()
                bar.update()
    bar.close()
    timing["training_seconds"] = round(time.perf_counter() - t, 1)
    timing["total_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    timing["cells_run_this_time"] = len(todo)
    stored = {rid: _load(Path(s["cell_file"])) for rid, s in runs.items()}
    timing["sum_of_cell_seconds_all_runs"] = round(sum(d.get("seconds", 0.0) for d in stored.values() if d), 1)

    doc = summarize(settings, base, scores, cells_index, stored, timing)
    _save(out / "results.json", doc)
    (out / "results.md").write_text(markdown(doc))
    plots(out, doc)
    print((out / "results.md").read_text())
    return doc


# ----------------------------------------------------------------------------------------------------------------
# Summary, the pre-registered test, tables, plots


def paired_test(a: list[float], b: list[float]) -> dict:
    """One-sided paired t-test that ``a`` > ``b`` (seed by seed): the differences, their mean and sd, t and p."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b)]
    out = {"differences": diffs, "mean_difference": statistics.fmean(diffs) if diffs else float("nan"),
           "sd_difference": statistics.stdev(diffs) if len(diffs) > 1 else float("nan"), "n": len(diffs),
           "t": float("nan"), "p": float("nan")}
    if len(diffs) > 1 and out["sd_difference"] > 0:
        res = stats.ttest_rel(a, b, alternative="greater")
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    elif len(diffs) > 1:  # every difference equal: p is 0 when they are positive, 1 otherwise
        out["p"] = 0.0 if out["mean_difference"] > 0 else 1.0
    return out


def summarize(settings: dict, base: dict, scores: dict, cells_index: list[dict], runs: dict, timing: dict) -> dict:
    cells = []
    for c in cells_index:
        r = runs[c["run_id"]]
        cells.append({**c, **{m: r[m] for m in METRICS}, "steps": r["steps"],
                      "train_rows": r["train_rows"], "epochs": round(r["epochs"], 2),
                      "defect_share_kept": r["defect_share"], "seconds": r["seconds"]})
    methods, fractions, seeds = settings["methods"], settings["fractions"], settings["seeds"]

    def values(method: str, fraction: float, metric: str) -> dict[int, float]:
        """seed -> the metric of that cell (100% is the shared full-data cell)."""
        name = "all" if fraction >= 1 and method != "all (clean data)" else method
        return {c["seed"]: c[metric] for c in cells if c["method"] == name and c["fraction"] == fraction}

    tables: dict = {}
    for metric in METRICS:
        full = mean_sd(list(values("all", 1.0, metric).values()))
        t = {"full": full, "clean_full": mean_sd(list(values("all (clean data)", 1.0, metric).values())),
             "base": base[metric], "methods": {}}
        for m in methods:
            row = {}
            for f in fractions:
                ms = mean_sd(list(values(m, f, metric).values()))
                ms["relative_to_full"] = _div(ms["mean"], full["mean"])
                gain = full["mean"] - base[metric]
                ms["gain_relative_to_full_gain"] = _div(ms["mean"] - base[metric], gain)
                row[f"{f:g}"] = ms
            t["methods"][m] = row
        tables[metric] = t
    kept_share: dict = {}
    for seed, doc in scores.items():
        bad = [lab != "none" for lab in doc["labels"]]
        for m in methods:
            for f in fractions:
                idx = kept_indices(method_scores_of(doc, m), f, groups=doc["groups"], seed=int(seed))
                kept_share.setdefault(m, {}).setdefault(f"{f:g}", []).append(sum(bad[i] for i in idx) / max(1, len(idx)))
    kept_share = {m: {f: mean_sd(v) for f, v in fs.items()} for m, fs in kept_share.items()}

    # the pre-registered primary test (both parts must hold)
    p = settings["primary"]
    targets: dict = {}
    if p["method"] in methods and "random" in methods and p["fraction"] in fractions:
        metric = p["metric"]
        mine, rnd, full = (values(p["method"], p["fraction"], metric), values("random", p["fraction"], metric),
                           values("all", 1.0, metric))
        common = sorted(set(mine) & set(rnd))
        test = paired_test([mine[s] for s in common], [rnd[s] for s in common])
        mean = {k: statistics.fmean(v.values()) if v else float("nan") for k, v in (("mine", mine), ("random", rnd),
                                                                                   ("full", full))}
        ratio = _div(mean["mine"], mean["full"])
        targets["preregistered_primary"] = {
            **p, "method_mean": mean["mine"], "full_mean": mean["full"], "random_mean": mean["random"],
            "base": base[metric], "relative_to_full": ratio, "geq_ratio_to_full": bool(ratio >= p["ratio_to_full"]),
            "gain_over_base_relative_to_full_gain": _div(mean["mine"] - base[metric], mean["full"] - base[metric]),
            "vs_random_paired": test, "beats_random": bool(test["n"] > 1 and test["p"] < p["alpha"]),
            "met": bool(ratio >= p["ratio_to_full"] and test["n"] > 1 and test["p"] < p["alpha"])}
        oracle = values(ORACLE, p["fraction"], metric) if ORACLE in methods else {}
        if oracle and full:
            targets["oracle_at_primary_fraction"] = {
                "mean": statistics.fmean(oracle.values()),
                "relative_to_full": _div(statistics.fmean(oracle.values()), mean["full"]),
                "vs_random_paired": paired_test([oracle[s] for s in common if s in oracle],
                                                [rnd[s] for s in common if s in oracle])}
        # secondary, reported not tested: every method vs random at every fraction below 100%, paired
        targets["secondary_vs_random"] = {
            m: {f"{f:g}": paired_test(*zip(*[(values(m, f, metric)[s], values("random", f, metric)[s])
                                              for s in seeds if s in values(m, f, metric) and s in values("random", f, metric)]))
                if values(m, f, metric) else None for f in fractions if f < 1}
            for m in methods if m != "random"}
    detection = {str(seed): doc["auroc"] for seed, doc in scores.items()}
    return {"settings": settings, "base": {k: v for k, v in base.items() if k != "examples"}, "cells": cells,
            "tables": tables, "defect_share_kept": kept_share, "targets": targets, "detection_auroc": detection,
            "timing": timing}


def _fmt(ms: dict | None) -> str:
    if not ms or ms.get("n", 0) == 0 or math.isnan(ms["mean"]):
        return "-"
    return f"{100 * ms['mean']:.1f}" + (f" ± {100 * ms['sd']:.1f}" if ms["n"] > 1 else "")


def markdown(doc: dict) -> str:
    s = doc["settings"]
    fr = [f"{f:g}" for f in s["fractions"]]
    head = ["| method | " + " | ".join(f"{float(f):.0%}" for f in fr) + " |", "|---" * (len(fr) + 1) + "|"]
    lines = ["# What selection buys: DPO on the top X% of long-answer preference data (testbed, LoRA DPO)", "",
             f"Base: {json.dumps(s['base'])}; {s['rows']} preference rows per seed, {s['defect_rate']:.0%} "
             f"defective; {s['steps']} DPO steps at batch {s['batch_size']} for every cell; greedy descriptions of "
             f"{s['n_eval']} held-out images and {9 * max(1, s['n_eval'] // 15)} held-out questions per policy. "
             f"Selection: the top fraction of each {s['stratify_by']}; ties broken by a seeded random order. "
             f"Mean ± sd over {len(s['seeds'])} seeds, in %. Pre-registered: PREREGISTRATION.md.", ""]
    t = doc["targets"].get("preregistered_primary")
    if t:
        test = t["vs_random_paired"]
        lines += ["## The pre-registered test", "",
                  f"- H1: `{t['method']}` at {t['fraction']:.0%} reaches >= {t['ratio_to_full']:.0%} of full-data DPO "
                  f"on {METRICS[t['metric']]} and beats random at {t['fraction']:.0%} (paired one-sided t-test over "
                  f"seeds, p < {t['alpha']}). **{'Met' if t['met'] else 'Not met'}.**",
                  f"- ratio to full data: {t['method_mean']:.3f} / {t['full_mean']:.3f} = {t['relative_to_full']:.3f} "
                  f"({'>=' if t['geq_ratio_to_full'] else '<'} {t['ratio_to_full']}); its gain over the base "
                  f"({t['base']:.3f}) is {t['gain_over_base_relative_to_full_gain']:.2f}x full data's gain",
                  f"- vs random ({t['random_mean']:.3f}): mean difference {test['mean_difference']:+.3f} "
                  f"(sd {test['sd_difference']:.3f}, per seed {', '.join(f'{d:+.3f}' for d in test['differences'])}), "
                  f"t = {test['t']:.2f}, p = {test['p']:.3g}"]
        if (o := doc["targets"].get("oracle_at_primary_fraction")):
            lines.append(f"- oracle (reads the labels) at the same fraction: {o['mean']:.3f}, "
                         f"{o['relative_to_full']:.3f} x full data, vs random p = {o['vs_random_paired']['p']:.3g}")
        lines.append("")
    for metric, tab in doc["tables"].items():
        lines += [f"## {METRICS[metric]} (%)", "",
                  f"Base {100 * tab['base']:.1f}; DPO on all rows {_fmt(tab['full'])}; on all rows of the clean data "
                  f"set {_fmt(tab['clean_full'])}.", ""] + head
        for m, row in tab["methods"].items():
            lines.append(f"| {m} | " + " | ".join(_fmt(row[f]) for f in fr) + " |")
        lines.append("")
        if metric == s["primary"]["metric"]:
            lines += ["Relative to full-data DPO (%):", ""] + head
            for m, row in tab["methods"].items():
                lines.append(f"| {m} | " + " | ".join("-" if math.isnan(row[f]["relative_to_full"]) else
                                                       f"{100 * row[f]['relative_to_full']:.1f}" for f in fr) + " |")
            lines.append("")
    lines += ["## Share of defective rows kept (%)", ""] + head
    for m, row in doc["defect_share_kept"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(row[f]) for f in fr) + " |")
    sec = doc["targets"].get("secondary_vs_random", {})
    if sec:
        lines += ["", "## Every method vs random, paired over seeds (secondary: mean difference in points, one-sided p)",
                  "", "| method | " + " | ".join(f"{float(f):.0%}" for f in fr if float(f) < 1) + " |",
                  "|---" * (len([f for f in fr if float(f) < 1]) + 1) + "|"]
        for m, row in sec.items():
            lines.append(f"| {m} | " + " | ".join("-" if v is None else f"{100 * v['mean_difference']:+.1f} (p {v['p']:.2g})"
                                                   for v in row.values()) + " |")
    lines += ["", f"Timing: {json.dumps(doc['timing'])}", ""]
    return "\n".join(lines)


def _style(method: str) -> dict:
    """SAE-V variants solid, baselines dashed, the oracle black and dotted."""
    if method == ORACLE:
        return {"linestyle": ":", "color": "black"}
    return {"linestyle": "-" if method.startswith("saev_") else "--"}


def plots(out: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(METRICS[m], doc["tables"][m]) for m in ("exact", "precision", "qa_acc")]
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.4))
    for ax, (title, tab) in zip(axes, panels):
        for m, row in tab["methods"].items():
            ax.errorbar([100 * float(f) for f in row], [100 * row[f]["mean"] for f in row],
                        yerr=[100 * row[f]["sd"] for f in row], marker="o", capsize=3, label=m, **_style(m))
        ax.axhline(100 * tab["base"], color="grey", linewidth=1, linestyle=":", label="base (no DPO)")
        if tab["clean_full"]["n"]:
            ax.axhline(100 * tab["clean_full"]["mean"], color="green", linewidth=1, linestyle=":",
                       label="all rows, clean data set")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kept fraction (%)")
        ax.set_ylabel("%")
    for m, row in doc["defect_share_kept"].items():
        axes[3].errorbar([100 * float(f) for f in row], [100 * row[f]["mean"] for f in row],
                         yerr=[100 * row[f]["sd"] for f in row], marker="o", capsize=3, label=m, **_style(m))
    axes[3].set_title("defective share of the kept rows", fontsize=9)
    axes[3].set_xlabel("kept fraction (%)")
    axes[3].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(out / "selection_effect.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

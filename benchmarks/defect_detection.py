"""Does the score find bad rows?  AUROC of every method, clean rows vs each defect kind, on the testbed.

    python -m benchmarks.defect_detection [--seeds 0 1 2] [--rows 1200] [--dev-rows 1000]
                                          [--architectures topk standard] [--sae-steps 1000] [--quick]

The testbed model (:mod:`saev_curate.testbed`, built once and cached) is fixed; what varies with
the seed is what SAE-V itself depends on: the SAE's training seed and the reference sample ω is
fitted on.  Settings are chosen on a **dev** split (rows over dev images, their own seed); numbers
are reported on a **test** split (other images).  The dev choice is the δ of the agreement
variants (one δ = 1, or ``delta_rel`` of each feature's top activation) per SAE architecture, and
for each defect kind which SAE-V variant the ``best`` entry reports.

The rows (:func:`saev_curate.testbed.data.defect_rows`) are half descriptions, half questions, 30%
defective: hallucinated details (twice as often as each other kind), omitted details (a control that
should not be flagged), image/prompt mismatches, flipped one-word answers, corrupted images, off-topic
prompts.  Each kind is compared with the clean rows of its own task.  Also chosen on dev: the
``combined`` column, the rank average of one SAE-V column and one likelihood column (the pair with the
best mean dev AUROC over the kinds that should be flagged).

Writes ``benchmarks/defect_detection/results/``: ``results.json`` (``auroc``: method -> kind ->
``{"mean", "sd", "n"}`` for every method and SAE architecture, ``best``: kind -> the dev-chosen
SAE-V variant's test ``{"method", "mean", "sd"}`` (for the ``omitted_detail`` control: the hallucinated-detail
choice), ``best_prompt_only`` the same among the variants that read image + prompt only, ``recommended`` the same
over every method (SAE-V, baselines, combined), ``localisation``: method -> ``{"mean", "sd"}`` (the share of detected
hallucinated-detail rows whose blamed token states the false fact), ``model_eval``
(``{"hallucination_rate", "recall", "qa": {qtype: accuracy}}`` of the testbed model), ``build_seconds``,
``image_only_control``, ``settings``), ``results.md`` (the table) and ``auroc.png`` / ``histograms.png``.
Each finished (architecture, seed) cell is stored under ``cells/``; a rerun continues where it stopped.
The one-word testbed's results (v3) are kept in ``benchmarks/defect_detection/v3-one-word/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "defect_detection" / "results"
DELTA_CHOICES = (None, 0.3, 0.1)  # one δ = 1 (the paper's), or a share of each feature's top activation
FLAGGED = ("hallucinated_detail", "image_prompt_mismatch", "chosen_contradicts_image", "corrupted_image",
           "off_topic_prompt")  # every kind but the omitted-detail control
BEYOND_PAPER = ("saev_score_content", "saev_grounding", "saev_grounding_vs_control", "saev_grounding_margin",
                "saev_pair_agreement", "saev_pair_agreement_margin")


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _save(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def run_cell(ctx: dict, arch: str, seed: int, rows: list[dict], delta_rel, perplexity, *, ref_seed: int) -> dict:
    """Scores + AUROC table of one (SAE architecture, seed) on ``rows``."""
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.jobs import detection as D

    sae, _ = D.testbed_sae(ctx["path"], ctx["model"], ctx["processor"], architecture=arch, seed=seed,
                           steps=ctx["sae_steps"], progress=ctx["progress"])
    weights = CrossModalWeights.fit(ctx["model"], ctx["processor"], sae, datasets.Dataset.from_list(rows), None,
                                    n_reference=min(1000, len(rows)), seed=ref_seed, progress=ctx["progress"])
    scores = D.method_scores(ctx["model"], ctx["processor"], sae, weights, rows, delta_rel=delta_rel, seed=seed,
                             perplexity=perplexity)
    labels, tasks = [r["defect"] for r in rows], [r["task"] for r in rows]
    return {"auroc": D.auroc_table(scores, labels, tasks), "localisation": D.localisation(scores, rows),
            "scores": {k: v for k, v in scores.items() if k != "_error"},
            "labels": labels, "tasks": tasks, "weights": weights.summary(), "delta_rel": delta_rel,
            "n_errors": sum(e is not None for e in scores["_error"])}


def choose_combined(cell: dict, candidates) -> tuple[str, str]:
    """The (SAE-V column, likelihood column) whose rank average has the best mean AUROC over the kinds that
    should be flagged, on ``cell``'s (dev) scores."""
    from saev_curate.jobs import detection as D

    kinds = [k for k in FLAGGED if k in cell["labels"]]

    def mean_auc(a, b):
        comb = D.with_combined(cell["scores"], a, b)["combined"]
        return sum(D.auroc(comb, cell["labels"], k, tasks=cell["tasks"]) for k in kinds) / len(kinds)

    return max(((a, b) for a in candidates for b in D.LIKELIHOOD), key=lambda ab: mean_auc(*ab))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="SAE / reference-sample seeds")
    ap.add_argument("--rows", type=int, default=1200, help="test rows (30%% defective, kinds mixed)")
    ap.add_argument("--dev-rows", type=int, default=1000, help="dev rows used to choose settings")
    ap.add_argument("--architectures", nargs="+", default=["topk", "standard"], choices=["topk", "standard"])
    ap.add_argument("--sae-steps", type=int, default=1000, help="SAE training steps (1024 tokens each)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 200 rows, topk only, short SAE")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.rows, args.dev_rows, args.architectures, args.sae_steps = [0], 200, 200, ["topk"], 200
    out = Path(args.out)
    cells = out / "cells"

    import torch

    from saev_curate.jobs import detection as D
    from saev_curate.testbed import build_testbed
    from saev_curate.testbed import evaluate as E
    from saev_curate.testbed.data import DEFECT_KINDS, defect_rows
    from saev_curate.vlm.load import load_vlm

    t0 = time.perf_counter()
    torch.manual_seed(0)
    path = build_testbed()
    model, processor = load_vlm(str(path))
    ctx = {"path": path, "model": model, "processor": processor, "sae_steps": args.sae_steps, "progress": True}
    settings = {"rows": args.rows, "dev_rows": args.dev_rows, "seeds": args.seeds, "architectures": args.architectures,
                "sae_steps": args.sae_steps, "defect_rate": 0.3,
                "model": Path(path).name}  # the testbed build (its cache name), wherever the cache lies
    if (old := _load(out / "settings.json")) is not None and old != settings:
        raise SystemExit(f"{out} holds results of other settings ({old}); pass another --out or delete it")
    _save(out / "settings.json", settings)

    model_eval = _load(cells / "model_eval.json")
    if model_eval is None:
        questions = E.heldout_questions(100, split="test")
        model_eval = {"accuracy": E.evaluate_accuracy(model, processor, questions),
                      "sentence_answers": E.evaluate_sentence_answers(model, processor, questions),
                      "descriptions": E.evaluate_descriptions(model, processor,
                                                              E.heldout_descriptions(500, split="test"))}
        _save(cells / "model_eval.json", model_eval)
    acc, desc = model_eval["accuracy"], model_eval["descriptions"]
    print(f"model: descriptions hallucination rate {desc['hallucination_rate']:.3f}, recall {desc['recall']:.3f}; "
          "QA (likelihood over options): " + ", ".join(f"{q} {v['likelihood']:.2f}" for q, v in acc.items()))

    dev = defect_rows(args.dev_rows, split="dev", seed=1)
    test = defect_rows(args.rows, split="test", seed=2)
    ppl = {}
    for name, rows in (("dev", dev), ("test", test)):
        cached = _load(cells / f"perplexity-{name}.json")
        if cached is None:
            from saev_curate.curation.scorers import ResponsePerplexityScorer

            cached = D._scored(ResponsePerplexityScorer(model, processor), rows)
            _save(cells / f"perplexity-{name}.json", cached)
        ppl[name] = cached

    # dev: choose δ for the agreement variants per architecture, and each kind's best SAE-V variant
    choice = {}
    for arch in args.architectures:
        tables, dev_cells = {}, {}
        for rel in DELTA_CHOICES:
            f = cells / f"dev-{arch}-rel{rel}.json"
            cell = _load(f)
            if cell is None:
                cell = run_cell(ctx, arch, args.seeds[0], dev, rel, ppl["dev"], ref_seed=42)
                _save(f, cell)
            tables[rel], dev_cells[rel] = cell["auroc"], cell
        mean = {rel: sum(t[m][k] for m in BEYOND_PAPER for k in FLAGGED) / (len(BEYOND_PAPER) * len(FLAGGED))
                for rel, t in tables.items()}
        rel = max(DELTA_CHOICES, key=lambda r: mean[r])
        combined = choose_combined(dev_cells[rel], D.SAEV_METHODS)
        comb = D.with_combined(dev_cells[rel]["scores"], *combined)["combined"]
        dev_all = {**tables[rel], "combined": {k: D.auroc(comb, dev_cells[rel]["labels"], k, tasks=dev_cells[rel]["tasks"])
                                               for k in DEFECT_KINDS}}
        # the control kind should not be flagged: its entry is what the hallucinated-detail choice does on it
        best, prompt_only, recommended = ({k: max(methods, key=lambda m: dev_all[m][k]) for k in FLAGGED}
                                          for methods in (D.SAEV_METHODS, D.PROMPT_ONLY, dev_all))
        for chosen in (best, prompt_only, recommended):
            chosen["omitted_detail"] = chosen["hallucinated_detail"]
        choice[arch] = {"delta_rel": rel, "dev_mean_auroc_of_beyond_paper_variants": mean, "best_on_dev": best,
                        "best_prompt_only_on_dev": prompt_only, "recommended_on_dev": recommended,
                        "combined": combined, "dev_auroc": dev_all}
        print(f"dev, {arch}: delta_rel={rel} (mean AUROC of the variants beyond the paper by δ: {mean}); "
              f"best variant per kind: {best}; combined: rank average of {combined}")

    # test: every seed x architecture with the dev choices
    results = {}
    for arch in args.architectures:
        for seed in args.seeds:
            f = cells / f"test-{arch}-seed{seed}.json"
            cell = _load(f)
            if cell is None:
                t = time.perf_counter()
                cell = run_cell(ctx, arch, seed, test, choice[arch]["delta_rel"], ppl["test"], ref_seed=42 + seed)
                cell["seconds"] = round(time.perf_counter() - t, 1)
                _save(f, cell)
            comb = D.with_combined(cell["scores"], *choice[arch]["combined"])["combined"]
            cell["auroc"]["combined"] = {k: D.auroc(comb, cell["labels"], k, tasks=cell["tasks"])
                                         for k in cell["auroc"]["random"]}
            results[(arch, seed)] = cell
            print(f"test, {arch}, seed {seed}: " + ", ".join(
                f"{m} {cell['auroc'][m]['image_prompt_mismatch']:.3f}" for m in ("saev_score", "saev_grounding_vs_control")))

    auroc = {}
    for arch in args.architectures:
        for m in results[(arch, args.seeds[0])]["auroc"]:
            shared = m in (*D.LIKELIHOOD, "random")
            key = m if shared else f"{m}/{arch}"
            if shared and key in auroc:
                continue
            auroc[key] = {k: D.mean_sd([results[(arch, s)]["auroc"][m][k] for s in args.seeds]) for k in DEFECT_KINDS}
    main_arch = args.architectures[0]
    def name(m: str) -> str:
        return m if m in auroc else f"{m}/{main_arch}"

    best, best_prompt_only, recommended = ({k: {"method": name(choice[main_arch][key][k]),
                                                **auroc[name(choice[main_arch][key][k])][k]} for k in DEFECT_KINDS}
                                           for key in ("best_on_dev", "best_prompt_only_on_dev", "recommended_on_dev"))
    best_any = {k: max(((m, v[k]) for m, v in auroc.items() if m.split("/")[0] in D.SAEV_METHODS),
                       key=lambda mv: mv[1]["mean"]) for k in DEFECT_KINDS}
    localisation = {f"{m}/{arch}" if m.startswith("saev_") else m: D.mean_sd(
        [results[(arch, s)]["localisation"][m]["detected"] for s in args.seeds])
        for arch in args.architectures for m in results[(arch, args.seeds[0])]["localisation"]}
    build = json.loads((Path(path) / "build_info.json").read_text())
    build_seconds = {"total": build["seconds"]["total_this_run"],
                     **{st: build[st]["seconds"] for st in ("stage0", "stage1", "stage2") if st in build}}
    doc = {
        "auroc": auroc,
        "best": best,
        "best_prompt_only": best_prompt_only,
        "recommended": recommended,
        "best_on_test_for_reference": {k: {"method": m, **v} for k, (m, v) in best_any.items()},
        "localisation": localisation,
        "combined": {arch: choice[arch]["combined"] for arch in args.architectures},
        "model_eval": {"hallucination_rate": desc["hallucination_rate"], "recall": desc["recall"],
                       "qa": {q: v["likelihood"] for q, v in acc.items() if q != "all"},
                       "qa_greedy": {q: v["greedy"] for q, v in acc.items() if q != "all"},
                       "sentence_answers": model_eval["sentence_answers"], "descriptions": desc},
        "build_seconds": build_seconds,
        "image_only_control": auroc[f"image_only_control/{main_arch}"],
        "dev_choices": choice,
        "settings": settings,
        "seconds": {"this_run": round(time.perf_counter() - t0, 1),
                    "cells": {f"{a}-seed{s}": results[(a, s)].get("seconds") for a, s in results}},
    }
    _save(out / "results.json", doc)
    (out / "results.md").write_text(_markdown(doc, DEFECT_KINDS))
    _plots(out, results[(main_arch, args.seeds[0])], auroc, DEFECT_KINDS, main_arch)
    print((out / "results.md").read_text())
    return doc


def _markdown(doc: dict, kinds) -> str:
    lines = ["| method | " + " | ".join(k.replace("_", " ") for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    best = {k: max(v[k]["mean"] for v in doc["auroc"].values()) for k in kinds}
    for m, row in doc["auroc"].items():
        cells = []
        for k in kinds:
            c = f"{row[k]['mean']:.3f} ± {row[k]['sd']:.3f}"
            cells.append(f"**{c}**" if math.isclose(row[k]["mean"], best[k]) else c)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    s = doc["settings"]
    lines += ["", f"AUROC of clean rows vs each defect kind (higher score = cleaner), mean ± sd over seeds "
              f"{s['seeds']} (SAE training seed and ω reference sample), {s['rows']} test rows, 30% defective. "
              "Bold: best per kind over all methods.", "",
              "Best SAE-V variant per kind, chosen on the dev split, reported on test (for omitted_detail, the "
              "control that should not be flagged: what the hallucinated-detail choice does on it): " + ", ".join(
                  f"{k}: {v['method']} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in doc["best"].items()),
              "", "Best prompt-only SAE-V variant (image + prompt, no response), chosen on dev: " + ", ".join(
                  f"{k}: {v['method']} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in doc["best_prompt_only"].items()),
              "", "Best of all methods per kind (SAE-V, baselines, combined), chosen on dev, reported on test: "
              + ", ".join(f"{k}: {v['method']} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in doc["recommended"].items()),
              "", "Combined column (rank average, chosen on dev): " + ", ".join(
                  f"{a}: {' + '.join(v)}" for a, v in doc["combined"].items()),
              "", "Localisation: share of the detected hallucinated-detail rows (scored below the 10% quantile of "
              "clean descriptions) whose blamed token states the false fact: " + ", ".join(
                  f"{m} {v['mean']:.3f} ± {v['sd']:.3f}" for m, v in doc["localisation"].items()),
              "", f"Testbed model on held-out images: greedy descriptions hallucination rate "
              f"{doc['model_eval']['hallucination_rate']:.3f}, recall {doc['model_eval']['recall']:.3f}; "
              "QA (likelihood over options) " + ", ".join(f"{q} {v:.2f}" for q, v in doc["model_eval"]["qa"].items())
              + "; sentence answers (greedy, exact) " + ", ".join(
                  f"{q} {v:.2f}" for q, v in doc["model_eval"]["sentence_answers"].items()),
              "", f"Build: {doc['build_seconds']}"]
    return "\n".join(lines) + "\n"


def _plots(out: Path, cell: dict, auroc: dict, kinds, arch: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in auroc if m.endswith(f"/{arch}") or "/" not in m]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 0.28 * len(methods) + 1.5), sharey=True)
    for ax, k in zip(axes, kinds):
        means = [auroc[m][k]["mean"] for m in methods]
        sds = [auroc[m][k]["sd"] for m in methods]
        y = np.arange(len(methods))
        ax.barh(y, means, xerr=sds, color=["#3b6fb6" if m.startswith("saev_") else "#999" for m in methods])
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_title(k.replace("_", " "), fontsize=10)
        ax.set_yticks(y, [m.split("/")[0] for m in methods], fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(f"AUROC, clean vs defect kind (SAE: {arch}; mean ± sd over seeds; dotted = chance)")
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=110)
    plt.close(fig)

    show = [m for m in ("saev_score", "saev_pair_agreement", "saev_answer_readout_chosen",
                        "saev_token_readout_min_chosen", "min_token_logprob", "response_perplexity")
            if m in cell["scores"]]
    labels = cell["labels"]
    fig, axes = plt.subplots(1, len(show), figsize=(4 * len(show), 3.2))
    for ax, m in zip(axes, show):
        vals = cell["scores"][m]
        if m == "response_perplexity":  # -perplexity has a long tail: show -log(perplexity)
            vals = [None if v is None else -float(np.log(-v)) for v in vals]
        finite = [v for v in vals if v is not None]
        bins = np.linspace(min(finite), max(finite) + 1e-9, 30)
        for kind in ("none", *kinds):
            ax.hist([v for v, lab in zip(vals, labels) if lab == kind and v is not None], bins=bins, histtype="step",
                    density=True, lw=1.4, label=kind.replace("_", " "))
        ax.set_title(m if m != "response_perplexity" else "-log response perplexity", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Score distributions by defect kind (test rows, SAE {arch}, first seed; higher = cleaner)")
    fig.tight_layout()
    fig.savefig(out / "histograms.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Which image patches carry what the model needs?  QA accuracy with only the top p% of patches kept.

    python -m benchmarks.patch_filter [--seeds 0 1 2] [--per-type 40] [--reference-rows 300] [--keep 25 50 75]

The reference code's experiment (SAE-V ``crop_image_by_activation``) on the embedded testbed: held-out
(test-split) images' questions, each image filtered by :func:`saev_curate.inspect.patch_filter.filter_rows` to
keep 25 / 50 / 75% of its 16 patches (image tokens) ranked by

* ``l0``: how many SAE features fire on the patch's token,
* ``cross_modal``: the summed activation of the SAE's cross-modal features (ω fitted on clean dev-split rows),
* ``random``: a seeded random order (the control),

the rest filled with the image's mean colour; then the testbed model's accuracy by likelihood over each question
type's answer options (:func:`saev_curate.testbed.evaluate.evaluate_accuracy`).  100% is the unfiltered images.
Seeds: the topk SAE's training seed (the detection benchmark's cached SAEs), the reference sample's seed
(42 + seed) and the random order's seed; mean ± sd over seeds.  The activations are read with the evaluation's
own prompt (image first, then the question).

Writes ``benchmarks/patch_filter/results.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path(__file__).resolve().parent / "patch_filter"
METHODS = ("l0", "cross_modal", "random")


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-type", type=int, default=40, help="questions per image question type (9 types)")
    ap.add_argument("--reference-rows", type=int, default=300, help="clean dev rows the cross-modal weights are fit on")
    ap.add_argument("--keep", type=float, nargs="+", default=[25, 50, 75], help="percent of patches kept")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    out = Path(args.out)

    import datasets
    import torch

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.inspect.patch_filter import filter_rows
    from saev_curate.jobs.detection import testbed_sae
    from saev_curate.testbed import build_testbed
    from saev_curate.testbed import evaluate as E
    from saev_curate.testbed import language as lang
    from saev_curate.testbed.data import defect_rows
    from saev_curate.vlm.load import load_vlm

    t0 = time.perf_counter()
    torch.manual_seed(0)
    path = build_testbed()
    model, processor = load_vlm(str(path))
    questions = E.heldout_questions(args.per_type, split="test")
    prompts = [{"messages": lang.chat_prompt(q["question"], image=True), "images": [q["image"]]} for q in questions]
    reference = datasets.Dataset.from_list(defect_rows(args.reference_rows, split="dev", seed=1, defect_rate=0.0))

    def accuracy(images) -> dict:
        rows = [{**q, "image": im} for q, im in zip(questions, images)]
        acc = E.evaluate_accuracy(model, processor, rows)
        return {"all": acc["all"]["likelihood"], **{k: v["likelihood"] for k, v in acc.items() if k != "all"}}

    full = accuracy([q["image"] for q in questions])
    print(f"unfiltered: accuracy {full['all']:.3f} over {len(questions)} questions")
    cells: dict[str, dict[str, list[dict]]] = {m: {f"{p:g}": [] for p in args.keep} for m in METHODS}
    kept_share: dict[str, list[float]] = {}
    n_cross: list[int] = []
    for seed in args.seeds:
        t = time.perf_counter()
        sae, _ = testbed_sae(path, model, processor, architecture="topk", seed=seed)
        weights = CrossModalWeights.fit(model, processor, sae, reference, None, n_reference=len(reference),
                                        seed=42 + seed, progress=True)
        n_cross.append(weights.class_counts()["cross_modal"])
        for method in METHODS:
            if method == "cross_modal" and not n_cross[-1]:
                raise SystemExit(f"seed {seed}: the weights fitted on {len(reference)} rows classify no feature as "
                                 "cross-modal; pass more --reference-rows")
            for p in args.keep:
                res = filter_rows(model, processor, sae, prompts, keep_percent=p, by=method, weights=weights,
                                  seed=seed, batch_size=64, progress=True)
                bad = [e for e in res.errors if e is not None]
                if bad:
                    raise SystemExit(f"{len(bad)} rows could not be filtered, e.g. {bad[0]}")
                acc = accuracy([imgs[0] for imgs in res.images])
                cells[method][f"{p:g}"].append(acc)
                kept_share.setdefault(f"{p:g}", []).extend(res.kept_share)
                print(f"seed {seed}, {method}, keep {p:g}%: accuracy {acc['all']:.3f}")
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s ({n_cross[-1]} cross-modal features)")

    qtypes = [k for k in full if k != "all"]
    table = {m: {p: {"all": mean_sd([c["all"] for c in v]), **{q: mean_sd([c[q] for c in v]) for q in qtypes}}
                 for p, v in per.items()} for m, per in cells.items()}
    doc = {
        "accuracy": table,
        "unfiltered": full,
        "kept_pixel_share": {p: statistics.fmean(v) for p, v in kept_share.items()},
        "cross_modal_features": n_cross,
        "settings": {"seeds": args.seeds, "questions": len(questions), "per_type": args.per_type,
                     "question_types": qtypes, "reference_rows": args.reference_rows, "keep_percent": args.keep,
                     "sae": "topk x8, 1000 steps (jobs.detection.testbed_sae)", "fill": "the image's mean colour",
                     "model": Path(path).name},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "results.md").write_text(_markdown(doc))
    print((out / "results.md").read_text())
    return doc


def _markdown(doc: dict) -> str:
    s = doc["settings"]
    keeps = list(next(iter(doc["accuracy"].values())))
    lines = [f"QA accuracy (likelihood over each type's options) of the testbed model on {s['questions']} held-out "
             f"questions ({s['per_type']} per type, {len(s['question_types'])} types) with the top p% of each image's "
             f"16 patches kept and the rest filled with the image's mean colour; mean ± sd over seeds {s['seeds']} "
             f"(topk SAE seed, reference-sample seed, random-order seed).  Unfiltered: **{doc['unfiltered']['all']:.3f}**.",
             "", "| patches ranked by | " + " | ".join(f"keep {p}%" for p in keeps) + " | keep 100% |",
             "|---|" + "---|" * (len(keeps) + 1)]
    for m, per in doc["accuracy"].items():
        cells = [f"{per[p]['all']['mean']:.3f} ± {per[p]['all']['sd']:.3f}" for p in keeps]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {doc['unfiltered']['all']:.3f} |")
    lines += ["", "Per question type at keep " + keeps[0] + "% (mean over seeds):", "",
              "| question type | unfiltered | " + " | ".join(doc["accuracy"]) + " |",
              "|---|---|" + "---|" * len(doc["accuracy"])]
    for q in s["question_types"]:
        lines.append(f"| {q} | {doc['unfiltered'][q]:.2f} | " + " | ".join(
            f"{doc['accuracy'][m][keeps[0]][q]['mean']:.2f}" for m in doc["accuracy"]) + " |")
    lines += ["", f"Cross-modal features per seed: {doc['cross_modal_features']}; share of seen pixels kept: "
              + ", ".join(f"{p}%: {v:.3f}" for p, v in doc["kept_pixel_share"].items())
              + f"; wall time {doc['seconds']:.0f} s.", "",
              "Command: `python -m benchmarks.patch_filter " + " ".join(
                  ["--seeds", *map(str, s["seeds"]), "--per-type", str(s["per_type"]), "--reference-rows",
                   str(s["reference_rows"])]) + "`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

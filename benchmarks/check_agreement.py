"""Does `saev-curate check` rank methods as the detection benchmark does, and what does it cost?

    python -m benchmarks.check_agreement [--rows 400] [--repeats 3]

On the embedded testbed (the detection benchmark's model, its topk SAE with seed 0, ω fitted on the rows, δ_rel 0.1
and the neutral control prompt as the benchmark chose on its dev split), `check` plants defects in clean test-split
rows; its AUROC of every method per planted kind is compared with the benchmark's committed test AUROC
(``benchmarks/defect_detection/results/results.json``) on the kinds that correspond:

* prompt_swap ~ image_prompt_mismatch (the image with another row's prompt)
* corrupted_image ~ corrupted_image
* image_free_question ~ off_topic_prompt
* fact_word_replaced ~ hallucinated_detail (one false fact in the chosen answer)
* chosen_rejected_swap ~ chosen_contradicts_image (the chosen answer is the wrong one)

Agreement: Spearman's rho over the methods both measured, per kind. Cost: the check's wall time against scoring the
same sample once with the same methods (one MethodScorer pass), interleaved, ``--repeats`` times each; medians.
Writes ``benchmarks/check_agreement/results.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
OUT = HERE / "check_agreement"
DETECTION = HERE / "defect_detection" / "results" / "results.json"
PAIRS = {"prompt_swap": "image_prompt_mismatch", "corrupted_image": "corrupted_image",
         "image_free_question": "off_topic_prompt", "fact_word_replaced": "hallucinated_detail",
         "chosen_rejected_swap": "chosen_contradicts_image"}


def main() -> None:
    import datasets
    import numpy as np
    from scipy.stats import spearmanr

    from saev_curate.curation.check import run_check
    from saev_curate.curation.config import ScoreConfig
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import MethodScorer
    from saev_curate.jobs import detection as D
    from saev_curate.testbed import build_testbed
    from saev_curate.testbed.data import NEUTRAL_PROMPT, defect_rows
    from saev_curate.vlm.load import load_vlm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    detection = json.loads(DETECTION.read_text())
    path = build_testbed()
    model, processor = load_vlm(str(path))
    sae, _ = D.testbed_sae(path, model, processor, architecture="topk", seed=0)
    rows = defect_rows(args.rows, defect_rate=0.0, split="test", seed=5)
    data = datasets.Dataset.from_list(rows)
    weights = CrossModalWeights.fit(model, processor, sae, data, None, n_reference=min(1000, len(rows)))
    config = ScoreConfig(delta_rel=0.1, control_prompt=NEUTRAL_PROMPT)

    check_s, score_s, result = [], [], None
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = run_check(model, processor, sae, weights, data, tmp, n=args.rows, config=config, progress=False)
            check_s.append(time.perf_counter() - t0)
            scorer = MethodScorer(model, processor, sae, weights, methods=result.settings["methods"], config=config)
            canonical = datasets.Dataset.from_list([{k: v for k, v in row.items()
                                                     if k in ("prompt", "images", "chosen", "rejected")}
                                                    for row in rows])
            t0 = time.perf_counter()
            for s in range(0, len(canonical), 8):
                scorer(canonical[s:s + 8])
            score_s.append(time.perf_counter() - t0)
        print(f"repeat {r}: check {check_s[-1]:.1f} s, one scoring pass {score_s[-1]:.1f} s")

    bench = detection["auroc"]
    agreement = {}
    for kind, bkind in PAIRS.items():
        methods = [m for m in result.auroc if kind in result.auroc[m]
                   and (f"{m}/topk" in bench or m in bench)]
        ours = [result.auroc[m][kind]["mean"] for m in methods]
        theirs = [bench.get(f"{m}/topk", bench.get(m))[bkind]["mean"] for m in methods]
        rho = float(spearmanr(ours, theirs).statistic)
        agreement[kind] = {"benchmark_kind": bkind, "spearman": rho, "n_methods": len(methods),
                           "check_best": max(methods, key=lambda m: result.auroc[m][kind]["mean"]),
                           "benchmark_best": methods[int(np.argmax(theirs))]}
    ratio = [c / s for c, s in zip(check_s, score_s)]
    doc = {"rows": args.rows, "agreement": agreement,
           "mean_spearman": statistics.fmean(a["spearman"] for a in agreement.values()),
           "recommended": result.recommended, "auroc": result.auroc,
           "check_seconds": check_s, "score_seconds": score_s, "ratio": ratio,
           "ratio_median": statistics.median(ratio), "ratio_range": [min(ratio), max(ratio)]}
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(doc, indent=1))
    lines = ["| planted kind (check) | benchmark kind | Spearman rho | methods | best by check | best by benchmark |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {a['benchmark_kind']} | {a['spearman']:.2f} | {a['n_methods']} | {a['check_best']} | "
              f"{a['benchmark_best']} |" for k, a in agreement.items()]
    lines.append(f"\nMean rho {doc['mean_spearman']:.2f}. Recommended by the check: {result.recommended}.")
    lines.append(f"\nCost: check / one scoring pass of the same {args.rows} rows with the same methods = "
                 f"{doc['ratio_median']:.2f} (median of {args.repeats}, range {min(ratio):.2f}-{max(ratio):.2f}; "
                 f"check {statistics.median(check_s):.0f} s, pass {statistics.median(score_s):.0f} s).")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(OUT / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()

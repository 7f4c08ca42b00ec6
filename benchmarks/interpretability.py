"""How interpretable the testbed's SAEs are: the share of live features whose best concept has precision >= 0.8.

For each architecture (topk and standard, the testbed SAEs ``saev-curate demo`` trains and caches), every
test-split row goes through the model and the SAE once (:func:`saev_curate.inspect.collect.collect`); a feature
"fires on" a row when its activation exceeds 0 on any of the row's tokens (image, prompt and chosen response).  Its
best concept is the label of the row's image (``digit=7``, ``colour=red``, ``kind=face``, ...) that holds on the
largest share of its firing rows; that share is its precision.  Features firing on fewer than 5 rows count as not
meeting the bar.  Prints and writes ``benchmarks/interpretability/results.json``.

    python benchmarks/interpretability.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "interpretability"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000, help="test-split rows (default 2000)")
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    import datasets

    from saev_curate.inspect.collect import collect
    from saev_curate.inspect.labels import concept_precision, interpretable_share
    from saev_curate.jobs.detection import testbed_sae
    from saev_curate.testbed import build_testbed
    from saev_curate.testbed.data import defect_rows
    from saev_curate.vlm.load import load_vlm

    path = build_testbed()
    model, processor = load_vlm(str(path))
    data = datasets.Dataset.from_list(defect_rows(args.rows, split="test", seed=0))
    out = {"command": "python benchmarks/interpretability.py" + (f" --rows {args.rows}" if args.rows != 2000 else ""),
           "rows": args.rows, "by_architecture": {}}
    for arch in ("topk", "standard"):
        sae, folder = testbed_sae(path, model, processor, architecture=arch, progress=False)
        stats = collect(model, processor, sae, None, data, progress=False).stats
        share = interpretable_share(stats, threshold=args.threshold)
        prec = concept_precision(stats)
        best = sorted(prec.items(), key=lambda kv: (-kv[1]["precision"], -kv[1]["rows"]))[:10]
        out["by_architecture"][arch] = {"sae": Path(folder).name, "d_sae": int(sae.cfg.d_sae), **share,
                                        "examples": [{"feature": k, **v} for k, v in best]}
        print(f"{arch:9s}: {share['meeting']} of {share['live']} live features ({share['share']:.1%}) have a concept "
              f"precision >= {args.threshold} ({share['with_support']} fire on >= {share['min_rows']} rows: "
              f"{share['share_with_support']:.1%} of those)", flush=True)
        for k, v in best[:3]:
            print(f"    feature {k} fires on {v['concept']}: {v['precision']:.2f} ({v['rows']} rows)")
    HERE.mkdir(exist_ok=True)
    (HERE / "results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

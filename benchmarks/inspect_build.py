"""How long the feature site takes over testbed rows, and whether its memory stays flat in the number of rows.

Builds the site (:func:`saev_curate.inspect.site.build_site`) for every live feature with its 20 top rows (and an
8-row sample for the quantile bands) over 500 and over 2,000 test-split rows of the testbed, each in its own process
(so each peak RSS is its own), side by side in one run, with the same model, topk SAE and weights (fitted once on
500 rows, outside the timing).  Prints and writes ``benchmarks/inspect_build/results.json``.

    python benchmarks/inspect_build.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "inspect_build"


def _testbed():
    from saev_curate.jobs.detection import testbed_sae
    from saev_curate.testbed import build_testbed
    from saev_curate.vlm.load import load_vlm

    path = build_testbed()
    model, processor = load_vlm(str(path))
    sae, _ = testbed_sae(path, model, processor, progress=False)
    return model, processor, sae


def child(rows: int, weights: str, out: str) -> None:
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.inspect.site import build_site
    from saev_curate.testbed.data import defect_rows

    model, processor, sae = _testbed()
    data = datasets.Dataset.from_list(defect_rows(rows, split="test", seed=0))
    w = CrossModalWeights.load(weights)
    t0 = time.perf_counter()
    r = build_site(model, processor, sae, w, data, out, top_k=20, sample=8, n_rows=8, progress=False)
    seconds = time.perf_counter() - t0
    files = sum(1 for p in Path(out).rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "live_features": len(r.features), "row_pages": len(r.rows), "files": files,
                      "site_mib": size / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.weights, args.out)
        return
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.testbed.data import defect_rows

    with tempfile.TemporaryDirectory() as tmp:
        model, processor, sae = _testbed()
        ref = datasets.Dataset.from_list(defect_rows(500, split="test", seed=0))
        CrossModalWeights.fit(model, processor, sae, ref, None, n_reference=500, progress=False).save(f"{tmp}/w")
        del model
        runs: dict[int, list[dict]] = {n: [] for n in args.sizes}
        for rep in range(args.repeats):
            for n in args.sizes:  # interleaved: both sizes see the same machine load
                out = subprocess.run([sys.executable, __file__, "--child", str(n), "--weights", f"{tmp}/w",
                                      "--out", f"{tmp}/site-{n}-{rep}"], capture_output=True, text=True, check=True)
                runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(runs[n][-1], flush=True)
    summary = {}
    for n, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        rss = [r["peak_rss_mib"] for r in rs]
        summary[n] = {"seconds_median": statistics.median(secs), "seconds_range": [min(secs), max(secs)],
                      "peak_rss_mib_median": statistics.median(rss), "peak_rss_mib_range": [min(rss), max(rss)],
                      "live_features": rs[0]["live_features"], "files": rs[0]["files"], "site_mib": rs[0]["site_mib"]}
    lo, hi = min(args.sizes), max(args.sizes)
    ratio = summary[hi]["peak_rss_mib_median"] / summary[lo]["peak_rss_mib_median"]
    doc = {"command": "python benchmarks/inspect_build.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
           "repeats": args.repeats, "by_rows": summary, f"peak_rss_ratio_{hi}_vs_{lo}": ratio,
           "target": "every live feature, 20 examples each, 2,000 rows: < 180 s; memory flat in rows"}
    HERE.mkdir(exist_ok=True)
    (HERE / "results.json").write_text(json.dumps(doc, indent=2))
    for n, s in summary.items():
        print(f"{n:>6} rows: {s['seconds_median']:.1f} s (range {s['seconds_range'][0]:.1f}-{s['seconds_range'][1]:.1f}), "
              f"peak RSS {s['peak_rss_mib_median']:.0f} MiB, {s['live_features']} live features, {s['files']} files, "
              f"{s['site_mib']:.0f} MiB")
    print(f"peak RSS {hi} / {lo} rows: {ratio:.3f}")


if __name__ == "__main__":
    main()

"""SAE-V scoring speed and cross-modal fit memory on a ~36M-parameter LLaVA built from config (CPU).

Scoring (same rows, 64 image + ~32 text tokens each, SAE 512 -> 8192, batch size 8):
  floor      prepare_batch + capture_activations (forward stopped after layer L): nothing scores faster
  scorer     ds.map(SaevScorer, batched=True, batch_size=8)   (target: >= 0.85x the floor)
  reference  the brute-force loops of tests/test_crossmodal_reference.py (on --reference-rows rows)
Fit memory: peak RSS of CrossModalWeights.fit, each size in a fresh subprocess (target: < 10% growth
from the first to the last size).

    python benchmarks/scoring.py [--rows 256] [--fit-rows 1000 4000] [--reference-rows 8] [--threads N]

Real proportions (d_in 4,096, 576 / 2,304 image tokens, d_sae 16k / 65k, standard and topk SAEs; see
benchmarks/scoring_real.py):

    python -m benchmarks.scoring --real [--out benchmarks/scoring/real_proportions]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

LAYER = 4
QUESTIONS = [
    "What is the person in the photo holding in their hand right now?",
    "Describe the colours of the objects on the table in a few words.",
    "How many animals can you count in this picture, and where are they?",
    "Is there any written text visible in the image, and what does it say?",
]


def build_model():
    from saev_curate.testing import build_tiny_vlm

    return build_tiny_vlm("llava", seed=0, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=8, image_size=64, patch_size=8,
                          vision_hidden_size=256)


def build_sae(d_in=512, d_sae=8192):
    from saev_curate.sae import SAE, SAEConfig

    sae = SAE.init_paper(SAEConfig(d_in=d_in, d_sae=d_sae, hook_layer=LAYER), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # activations O(1) on this model's residuals, so that delta = 1 matters
        x = sae.W_enc.new_empty(d_in, d_sae).normal_(generator=g)
        sae.W_enc.copy_(x * 0.15)
        sae.b_enc.fill_(-0.5)
    return sae


def make_rows(n, seed=0):
    from PIL import Image

    rng = np.random.RandomState(seed)
    return [{"prompt": QUESTIONS[i % len(QUESTIONS)],
             "image": Image.fromarray((rng.rand(96, 128, 3) * 255).astype("uint8"))} for i in range(n)]


def bench_scoring(args):
    import datasets

    from saev_curate.curation.capture import capture_rows
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import SaevScorer
    from saev_curate.vlm import capture_activations, prepare_batch

    model, processor = build_model()
    sae = build_sae()
    rows = make_rows(args.rows)
    w = CrossModalWeights.fit(model, processor, sae, rows[:args.weight_rows], LAYER, n_reference=None, batch_size=8)
    ds = datasets.Dataset.from_list(rows)
    scorer = SaevScorer(model, processor, sae, w, LAYER, responses=False)
    bs = 8
    n_tokens = 0

    def floor():
        nonlocal n_tokens
        n_tokens = 0
        for s in range(0, len(rows), bs):
            pb = prepare_batch(processor, rows[s:s + bs], mode="prompt")
            a = capture_activations(model, pb, LAYER)
            n_tokens += int(a.attention_mask.sum())

    def score():
        ds.map(scorer, batched=True, batch_size=bs, load_from_cache_file=False, keep_in_memory=True,
               features=scorer.features(ds))

    sae_bf16 = sae.copy().to(torch.bfloat16)
    scorer_bf16 = SaevScorer(model, processor, sae_bf16, w, LAYER, responses=False)

    def score_bf16():
        ds.map(scorer_bf16, batched=True, batch_size=bs, load_from_cache_file=False, keep_in_memory=True,
               features=scorer_bf16.features(ds))

    times = {"floor": [], "scorer": [], "scorer_bf16_sae": []}
    for _ in range(args.repeats):  # interleaved, medians: a slow moment hits both alike
        for name, fn in (("floor", floor), ("scorer", score), ("scorer_bf16_sae", score_bf16)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {"rows": len(rows), "tokens_per_row": n_tokens / len(rows), "repeats": args.repeats,
           "floor_rows_per_s": len(rows) / med["floor"], "scorer_rows_per_s": len(rows) / med["scorer"],
           "scorer_vs_floor": med["floor"] / med["scorer"],
           "scorer_bf16_sae_vs_floor": med["floor"] / med["scorer_bf16_sae"], "class_counts": w.class_counts()}
    if args.reference_rows:
        tests = Path(__file__).resolve().parents[1] / "tests"
        sys.path[:0] = [str(tests), str(tests / "curation")]  # the brute-force reference and its shared rows
        from test_crossmodal_reference import reference_score

        omega = w.omega.tolist()
        ref_rows = rows[:args.reference_rows]
        t = time.perf_counter()
        for s in range(0, len(ref_rows), bs):
            acts, kept, _ = capture_rows(model, processor, ref_rows[s:s + bs], LAYER)
            for j in range(len(kept)):
                valid = acts.image_mask[j] | acts.text_mask[j]
                reference_score(acts.resid[j][valid], acts.image_mask[j][valid].tolist(), sae, omega)
        out["reference_rows_per_s"] = len(ref_rows) / (time.perf_counter() - t)
    return out


def fit_child(n_rows: int) -> None:
    from saev_curate.curation.crossmodal import CrossModalWeights

    model, processor = build_model()
    sae = build_sae()

    class Rows:  # rows made on demand: the data set itself must not be what grows
        def __len__(self):
            return n_rows

        def __getitem__(self, i):
            return make_rows(1, seed=i)[0]

    rows = Rows()
    t = time.perf_counter()
    w = CrossModalWeights.fit(model, processor, sae, _ListView(rows), LAYER, n_reference=None, batch_size=8)
    dt = time.perf_counter() - t
    print(json.dumps({"rows": n_rows, "seconds": dt, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cross_modal": w.class_counts()["cross_modal"]}))


class _ListView(list):
    """A list-like over lazily generated rows (iter_rows indexes lists)."""

    def __init__(self, src):
        super().__init__()
        self.src = src

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        return self.src[i]


def bench_fit(args):
    out = []
    for n in args.fit_rows:
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        res = subprocess.run([sys.executable, __file__, "--fit-child", str(n)], capture_output=True, text=True,
                             env=env, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    if len(out) >= 2:
        out.append({"peak_rss_growth": out[-1]["peak_rss_mib"] / out[0]["peak_rss_mib"] - 1})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--weight-rows", type=int, default=64, help="rows used to fit the weights scored with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-rows", type=int, default=8)
    ap.add_argument("--fit-rows", type=int, nargs="*", default=[1000, 4000])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-scoring", action="store_true")
    ap.add_argument("--fit-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--real", action="store_true", help="the real-proportions run (benchmarks/scoring_real.py)")
    ap.add_argument("--real-quick", action="store_true", help="a smoke run of --real with a few rows per shape")
    ap.add_argument("--out", type=Path, default=None, help="--real: write OUT.json and OUT.md")
    ap.add_argument("--parts", nargs="*", choices=("fit_rows", "ratio", "shape"), default=None,
                    help="--real: re-measure only these parts, keeping the others of OUT.json")
    ap.add_argument("--real-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_child is not None:
        fit_child(args.fit_child)
        return
    if args.real_child is not None or args.real or args.real_quick:
        from benchmarks import scoring_real  # run from the repository root (python -m benchmarks.scoring)

        if args.real_child is not None:
            print(json.dumps(scoring_real.run_child(json.loads(args.real_child))))
        else:
            doc = scoring_real.run_all(args.out, quick=args.real_quick, parts=args.parts)
            print(scoring_real.markdown(doc))
        return
    result = {"threads": torch.get_num_threads()}
    if not args.skip_scoring:
        result["scoring"] = bench_scoring(args)
    if args.fit_rows:
        result["fit_memory"] = bench_fit(args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["children_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

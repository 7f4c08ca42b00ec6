"""Real proportions (issue 23): memory and speed of the cross-modal fit and of scoring at LLaVA-NeXT's shapes.

Run through ``python -m benchmarks.scoring --real [--out benchmarks/scoring/real_proportions]``; every
configuration runs in a fresh subprocess, its peak memory read from the kernel (VmHWM, reset before each phase
through /proc/self/clear_refs, so fit, bare forward and scoring each have their own peak).

Three parts, all with d_in = 4,096 (LLaVA-NeXT-7B's residual width), random weights built from configs:

* **shapes**: 576 and 2,304 image tokens per row x d_sae 16,384 and 65,536 x a standard (ReLU, bias calibrated to
  ~64 active features per token) and a topk (k = 64) SAE.  The language model is a cheap stand-in (one LLaMA
  layer of width 4,096; a tiny CLIP whose patch grid gives the LM exactly that many image tokens): it measures the
  SAE side's memory and speed, not the model's.  Its fit uses ``tokens_per_modality=1`` (ω from one text and one
  image token: a one-row fit of 2,304 image tokens rarely gives a feature 5 text tokens among its top 30, and the
  scorer refuses weights without ω) and ``pair_min_count=1`` (every pair known, so scoring pays its look-ups).
  Fit = ``CrossModalWeights.fit`` on preference rows (ω, feature pairs, answer pairs, both read-outs); score =
  ``ds.map(SaevScorer(..., responses=False))``; forward = the bare
  truncated forward (``prepare_batch`` + ``capture_activations``) on the same rows.
* **fit_rows**: the fit-memory flatness target: 1,000 vs 4,000 reference rows at d_sae 65,536 (standard SAE:
  the most pairs), rows of 4 image tokens and a few words, and d_in 256 (a one-layer LM of that width): at
  d_in 4,096 one fit row costs ~0.3 s on this shared 2-core CPU, too slow for 5,000 rows in a 20-minute run.
  What grows with rows - the pair and read-out tables, the fitter's records - does not depend on d_in; of what
  does, the SAE's weights are fixed, and the cross-modal sums (cross-modal features x d_in x 16 bytes) are
  reported as they would be at d_in 4,096 (``cross_modal_sums_mib_at_4096``).  The rows are small, but dense
  enough in pairs (~64 active features per token) that the pair table reaches its cap before 1,000 rows, as a
  real row (576+ image tokens: millions of pairs per row) does after a few rows; with one image token and ~32
  active features per token (an earlier run) the table was still exact at 4,000 rows and grew with them.
* **ratio**: the scorer against the bare truncated forward at the model:SAE cost ratio of a real deployment.
  LLaVA-NeXT-7B (Vicuna-7B: width 4,096, MLP 11,008, 32 heads, no GQA) truncated at its middle layer runs 16
  decoder layers: 2 x 16 x (4 x 4096^2 + 3 x 4096 x 11008) = 6.48 GFLOP per token in matmuls (attention scores,
  the vision tower and the projector add more, so this is the ratio least favourable to the scorer); the paper's
  SAE (4,096 x 65,536) encodes at 2 x 4096 x 65536 = 0.537 GFLOP per token: 12.06 : 1.  The CPU stand-in keeps
  the ratio and d_in and divides both sides by 8: 2 Vicuna-7B-shaped layers (0.81 GFLOP per token) and a
  4,096 x 8,192 SAE (0.067 GFLOP per token), 576 image tokens per row.  Keeping d_in keeps the SAE's own balance
  (2 x d_in FLOPs per code entry against the per-entry passes: ReLU, maxima, counts).  Both sides are warmed up
  first (the scorer's one-time content fingerprint of the model is not a per-row cost).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

D_IN = 4096
TOKENS = (576, 2304)
WIDTHS = (16384, 65536)
ARCHS = ("standard", "topk")
K = 64  # topk's k, and the standard SAE's calibrated active features per token
PATCH = 4
GIB = 1024.0
WORDS = ("a photo of a cat sitting on a red sofa next to a window what color is the bus the dog runs across the "
         "green field how many apples are on the table describe the image in detail").split()
#: Vicuna-7B per decoder layer: q, k, v, o (4 x 4096^2) and the gated MLP (3 x 4096 x 11008)
REAL_LAYER_PARAMS = 4 * 4096 ** 2 + 3 * 4096 * 11008
REAL_MODEL_FLOP = 2 * 16 * REAL_LAYER_PARAMS  # LLaVA-NeXT-7B truncated at its middle layer (16 of 32), per token
REAL_SAE_FLOP = 2 * 4096 * 65536  # the SAE-V release's encode, per token


# ---------------------------------------------------------------------------------------------
# memory


def _status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    return _status_mib("VmHWM")


# ---------------------------------------------------------------------------------------------
# model, SAE and rows


def build_model(image_tokens: int, *, d_in: int = D_IN, layers: int = 1, intermediate: int = 1024, heads: int = 32,
                kv_heads: int = 8):
    from saev_curate.testing import build_tiny_vlm

    side = math.isqrt(image_tokens)
    assert side * side == image_tokens
    return build_tiny_vlm("llava", seed=0, hidden_size=d_in, intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                          image_size=side * PATCH, patch_size=PATCH, vision_hidden_size=32)


def make_rows(n: int, image_tokens: int, seed: int, *, responses: bool = True, words: tuple[int, int] = (4, 12)
              ) -> list[dict]:
    """Rows whose images are a few flat-coloured rectangles on a background (like a simple scene: neighbouring
    patches alike), a question of a few words, and two short answers."""
    from PIL import Image

    side = math.isqrt(image_tokens) * PATCH
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        img = np.empty((side, side, 3), dtype=np.uint8)
        img[:] = rng.integers(0, 255, 3)
        for _ in range(int(rng.integers(2, 6))):
            y0, x0 = rng.integers(0, side, 2)
            h, w = rng.integers(1, side // 2 + 2, 2)
            img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 255, 3)
        row = {"prompt": " ".join(rng.choice(WORDS, int(rng.integers(*words)))),
               "images": [Image.fromarray(img)]}
        if responses:
            row["chosen"] = " ".join(rng.choice(WORDS, int(rng.integers(words[0], min(words[1], 5)))))
            row["rejected"] = " ".join(rng.choice(WORDS, int(rng.integers(words[0], min(words[1], 5)))))
        rows.append(row)
    return rows


@torch.no_grad()
def build_sae(model, processor, layer: int, d_sae: int, architecture: str, image_tokens: int, *, d_in: int = D_IN,
              calibration_rows: int = 2, active: int = K):
    """A random SAE calibrated on the stand-in's own residuals: each feature's pre-activation has std 3 over a few
    rows' tokens, and (standard) a bias that lets ~``active`` features per token fire (a normal tail; the real
    count, higher on these heavy-tailed residuals, is reported as ``l0_per_token``); topk keeps K."""
    from statistics import NormalDist

    from saev_curate.curation.capture import capture_rows
    from saev_curate.sae import SAE, SAEConfig

    sae = SAE.init_paper(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture,
                                   k=K if architecture == "topk" else None, hook_layer=layer), seed=0)
    acts, _, _ = capture_rows(model, processor, make_rows(calibration_rows, image_tokens, seed=999, responses=False),
                              layer)
    x = acts.resid[acts.image_mask | acts.text_mask]
    s1 = torch.zeros(d_sae, dtype=torch.float64)
    s2 = torch.zeros(d_sae, dtype=torch.float64)
    for c in range(0, x.shape[0], 256):
        pre = sae.pre_activations(x[c:c + 256]).double()
        s1 += pre.sum(0)
        s2 += (pre ** 2).sum(0)
    n = x.shape[0]
    mean = s1 / n
    std = (s2 / n - mean ** 2).clamp_min(1e-12).sqrt()
    scale = (3.0 / std).float()
    t = NormalDist().inv_cdf(1 - active / d_sae) if architecture == "standard" else 0.0
    sae.W_enc.mul_(scale[None, :])
    sae.b_enc.copy_((-(mean * 3.0 / std) - 3.0 * t).float())
    return sae


def _layer_flop(model, layer: int) -> float:
    """Matmul FLOPs per token of the decoder layers up to ``layer`` (2 x their weight count)."""
    layers = model.get_decoder().layers[:layer + 1]
    return 2.0 * sum(p.numel() for m in layers for n, p in m.named_parameters() if p.dim() == 2)


# ---------------------------------------------------------------------------------------------
# one configuration (runs in a fresh process)


def _forward(model, processor, rows, layer, bs):
    from saev_curate.vlm import capture_activations, prepare_batch

    n_tokens = 0
    for s in range(0, len(rows), bs):
        a = capture_activations(model, prepare_batch(processor, rows[s:s + bs], mode="prompt"), layer)
        n_tokens += int(a.attention_mask.sum())
    return n_tokens


def _score(scorer, ds, bs):
    return ds.map(scorer, batched=True, batch_size=bs, load_from_cache_file=False, keep_in_memory=True,
                  features=scorer.features(ds))


def _warm_up(scorer, rows) -> None:
    """The scorer's one-time costs (the content fingerprint a ``map`` hashes, its template ids), paid once per
    scorer in a real run of many rows, and a first forward."""
    scorer.fingerprint()
    scorer(rows[:1])


def child_shape(spec: dict) -> dict:
    """Fit, bare forward and score at one (image tokens, d_sae, architecture)."""
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import SaevScorer

    tokens, d_sae, arch = spec["tokens"], spec["d_sae"], spec["arch"]
    n, bs, repeats = spec["rows"], spec["batch_size"], spec["repeats"]
    model, processor = build_model(tokens)
    sae = build_sae(model, processor, 0, d_sae, arch, tokens)
    built = _status_mib("VmRSS")
    out = {**spec, "rss_after_build_mib": built}
    rows = make_rows(n, tokens, seed=1)
    reset_peak()
    t = time.perf_counter()
    # every feature known (pair_min_count=1): scoring pays for its pair look-ups; tokens_per_modality=1: a one-row
    # fit of 2,304 image tokens has few features with 5 text tokens among their top 30, and the scorer refuses
    # weights that define no omega
    w = CrossModalWeights.fit(model, processor, sae, rows, 0, n_reference=None, batch_size=bs,
                              pair_min_count=1, tokens_per_modality=1)
    fit_s = time.perf_counter() - t
    out.update(fit_peak_mib=peak_mib(), fit_rows_per_s=n / fit_s, fit_seconds=fit_s,
               classes=w.class_counts(), pairs=w.pairs.summary(), answer_pairs=w.answer_pairs.summary(),
               token_readout=w.token_readout.summary(),
               image_features_per_row=float(w.pairs.n_image.sum()) / max(w.pairs.n_rows, 1),
               text_features_per_row=float(w.pairs.n_text.sum()) / max(w.pairs.n_rows, 1))
    score_rows = make_rows(n, tokens, seed=2, responses=False)
    ds = datasets.Dataset.from_list(score_rows)
    scorer = SaevScorer(model, processor, sae, w, 0, responses=False)
    _warm_up(scorer, score_rows)
    times = {"forward": [], "score": []}
    peaks = {"forward": 0.0, "score": 0.0}
    result = None
    for _ in range(repeats):  # interleaved
        reset_peak()
        t = time.perf_counter()
        out["tokens_per_row"] = _forward(model, processor, score_rows, 0, bs) / n
        times["forward"].append(time.perf_counter() - t)
        peaks["forward"] = max(peaks["forward"], peak_mib())
        reset_peak()
        t = time.perf_counter()
        result = _score(scorer, ds, bs)
        times["score"].append(time.perf_counter() - t)
        peaks["score"] = max(peaks["score"], peak_mib())
    l0 = [v for v in result["saev_l0"] if v is not None]  # active features per token of the scored rows
    out.update(forward_peak_mib=peaks["forward"], score_peak_mib=peaks["score"],
               forward_rows_per_s=n / statistics.median(times["forward"]),
               score_rows_per_s=n / statistics.median(times["score"]),
               score_vs_forward=statistics.median(times["forward"]) / statistics.median(times["score"]),
               times=times, l0_per_token=sum(l0) / max(len(l0), 1),
               scored=sum(v is not None for v in result["saev_score"]))
    return out


class _LazyRows(list):
    """A list-like over rows made on demand (``iter_rows`` indexes lists): the data set itself must not grow."""

    def __init__(self, n: int, image_tokens: int):
        super().__init__()
        self.n, self.image_tokens = n, image_tokens

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return make_rows(1, self.image_tokens, seed=10_000 + i, words=(3, 8))[0]


def child_fit_rows(spec: dict) -> dict:
    """Fit on ``spec["rows"]`` real rows at d_sae 65,536: peak memory of the whole process and of the fit."""
    from saev_curate.curation.crossmodal import CrossModalWeights

    tokens, d_in = spec["tokens"], spec["d_in"]
    model, processor = build_model(tokens, d_in=d_in, heads=8, kv_heads=2)
    sae = build_sae(model, processor, 0, spec["d_sae"], spec["arch"], tokens, d_in=d_in, calibration_rows=16,
                    active=spec["active"])
    built = _status_mib("VmRSS")
    reset_peak()
    t = time.perf_counter()
    w = CrossModalWeights.fit(model, processor, sae, _LazyRows(spec["rows"], tokens), 0, n_reference=None,
                              batch_size=spec["batch_size"], progress=True)
    fit_s = time.perf_counter() - t
    return {**spec, "rss_after_build_mib": built, "fit_peak_mib": peak_mib(),
            "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "fit_seconds": fit_s, "fit_rows_per_s": spec["rows"] / fit_s, "classes": w.class_counts(),
            "cross_modal_sums_mib_at_4096": w.class_counts()["cross_modal"] * 4096 * 16 / 2 ** 20,
            "pairs": w.pairs.summary(), "answer_pairs": w.answer_pairs.summary(),
            "answer_readout": w.answer_readout.summary(), "token_readout": w.token_readout.summary(),
            "image_features_per_row": float(w.pairs.n_image.sum()) / max(w.pairs.n_rows, 1),
            "text_features_per_row": float(w.pairs.n_text.sum()) / max(w.pairs.n_rows, 1)}


def child_ratio(spec: dict) -> dict:
    """Scorer vs bare truncated forward, interleaved, on the stand-in with the real model:SAE FLOP ratio."""
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import SaevScorer

    tokens, layers, bs, n = spec["tokens"], spec["layers"], spec["batch_size"], spec["rows"]
    model, processor = build_model(tokens, layers=layers, intermediate=11008, heads=32, kv_heads=32)
    layer = layers - 1
    sae = build_sae(model, processor, layer, spec["d_sae"], "standard", tokens, calibration_rows=1)
    model_flop, sae_flop = _layer_flop(model, layer), 2.0 * D_IN * spec["d_sae"]
    # pairs known from one row on (pair_min_count=1), so that scoring pays for real pair look-ups
    w = CrossModalWeights.fit(model, processor, sae, make_rows(bs, tokens, seed=1, responses=False), layer,
                              n_reference=None, batch_size=bs, pair_min_count=1)
    rows = make_rows(n, tokens, seed=2, responses=False)
    ds = datasets.Dataset.from_list(rows)
    scorer = SaevScorer(model, processor, sae, w, layer, responses=False)
    _warm_up(scorer, rows)
    times = {"forward": [], "score": []}
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        _forward(model, processor, rows, layer, bs)
        times["forward"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _score(scorer, ds, bs)
        times["score"].append(time.perf_counter() - t)
    ratios = [f / s for f, s in zip(times["forward"], times["score"])]
    return {**spec, "model_flop_per_token": model_flop, "sae_flop_per_token": sae_flop,
            "standin_flop_ratio": model_flop / sae_flop, "real_flop_ratio": REAL_MODEL_FLOP / REAL_SAE_FLOP,
            "times": times, "forward_rows_per_s": n / statistics.median(times["forward"]),
            "score_rows_per_s": n / statistics.median(times["score"]),
            "score_vs_forward": statistics.median(times["forward"]) / statistics.median(times["score"]),
            "score_vs_forward_range": [min(ratios), max(ratios)]}


CHILDREN = {"shape": child_shape, "fit_rows": child_fit_rows, "ratio": child_ratio}


def run_child(spec: dict) -> dict:
    torch.manual_seed(0)
    return CHILDREN[spec["kind"]](spec)


# ---------------------------------------------------------------------------------------------
# the parent: every configuration in a fresh process, side by side in one run


def plan(quick: bool = False) -> list[dict]:
    specs = []
    for n in (1000, 4000):  # d_in 256: 5,000 real rows through the fit in minutes (see the module doc)
        specs.append({"kind": "fit_rows", "tokens": 4, "d_in": 256, "d_sae": 65536, "arch": "standard", "rows": n,
                      "batch_size": 64, "active": 64})
    specs.append({"kind": "ratio", "tokens": 576, "layers": 2, "d_sae": 8192, "rows": 2, "batch_size": 2,
                  "repeats": 5})
    for tokens in TOKENS:
        for d_sae in WIDTHS:
            for arch in ARCHS:
                small = tokens == TOKENS[0]  # the 2,304-token shapes: one row (a fit pass costs ~15 s per row)
                specs.append({"kind": "shape", "tokens": tokens, "d_sae": d_sae, "arch": arch,
                              "rows": 2 if small else 1, "batch_size": 2 if small else 1, "repeats": 1})
    if quick:  # a smoke run of the machinery
        for s in specs:
            s["rows"] = min(s["rows"], 20 if s["kind"] == "fit_rows" else 2)
            s["repeats"] = 1
    return specs


def run_all(out: Path | None, quick: bool = False, parts: list[str] | None = None) -> dict:
    """Every configuration of :func:`plan`, or with ``parts`` only those kinds, replacing them in ``out``'s
    existing results (the rest kept as they were measured)."""
    kept: list[dict] = []
    if parts and out is not None and out.with_suffix(".json").is_file():
        kept = [r for r in json.loads(out.with_suffix(".json").read_text())["results"] if r["kind"] not in parts]
    results = list(kept)
    t0 = time.perf_counter()
    for spec in plan(quick):
        if parts and spec["kind"] not in parts:
            continue
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "benchmarks.scoring", "--real-child", json.dumps(spec)],
                             capture_output=True, text=True, env=dict(os.environ))
        if res.returncode != 0:  # kept in the results (and the table says so); the other configurations still run
            print(res.stderr[-4000:], file=sys.stderr)
            r = {**spec, "failed": f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:] or ''}"}
        else:
            r = json.loads(res.stdout.strip().splitlines()[-1])
        r["wall_seconds"] = time.perf_counter() - t
        results.append(r)
        print(f"[{time.perf_counter() - t0:7.0f}s] {spec}: {r['wall_seconds']:.0f}s", file=sys.stderr, flush=True)
        _write(out, _document(_in_plan_order(results, quick)))  # a partial result survives an interruption
    doc = _document(_in_plan_order(results, quick))
    _write(out, doc)
    return doc


def _write(out: Path | None, doc: dict) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
        out.with_suffix(".md").write_text(markdown(doc))


def _in_plan_order(results: list[dict], quick: bool) -> list[dict]:
    keys = [json.dumps(s, sort_keys=True) for s in plan(quick)]

    def key(r: dict) -> int:
        for i, k in enumerate(keys):
            if all(r.get(a) == b for a, b in json.loads(k).items()):
                return i
        return len(keys)

    return sorted(results, key=key)


def _document(results: list[dict]) -> dict:
    doc = {"threads": torch.get_num_threads(), "torch": torch.__version__, "results": results,
           "total_seconds": sum(r.get("wall_seconds", 0.0) for r in results),
           "largest_in_24gib": largest_fitting(results)}
    fits = [r for r in results if r["kind"] == "fit_rows" and "failed" not in r]
    if len(fits) == 2:
        doc["fit_peak_growth_1k_to_4k"] = fits[1]["fit_peak_mib"] / fits[0]["fit_peak_mib"] - 1
        doc["process_peak_growth_1k_to_4k"] = fits[1]["process_peak_mib"] / fits[0]["process_peak_mib"] - 1
    return doc


def largest_fitting(results: list[dict], limit_mib: float = 24 * 1024) -> list[dict]:
    """Per (image tokens, architecture): the largest d_sae whose fit and score peaks stay under ``limit_mib``,
    extrapolated linearly in d_sae from the two measured widths (every part that grows with d_sae - the SAE's
    weights, the fitter's per-feature records, the cross-modal sums, the chunk buffers - is linear in it; the pair
    table is capped)."""
    out = []
    for tokens in TOKENS:
        for arch in ARCHS:
            pts = sorted((r["d_sae"], max(r["fit_peak_mib"], r["score_peak_mib"])) for r in results
                         if r["kind"] == "shape" and "failed" not in r and r["tokens"] == tokens and r["arch"] == arch)
            if len(pts) < 2:
                continue
            (d0, p0), (d1, p1) = pts[0], pts[-1]
            slope = (p1 - p0) / (d1 - d0)
            d_max = d1 + (limit_mib - p1) / slope if slope > 0 else math.inf
            out.append({"tokens": tokens, "arch": arch, "measured": pts, "mib_per_1k_features": slope * 1024,
                        "largest_d_sae": None if math.isinf(d_max) else int(d_max), "how": "extrapolated"})
    return out


def markdown(doc: dict) -> str:
    failed = [r for r in doc["results"] if "failed" in r]
    rs = [r for r in doc["results"] if "failed" not in r]
    lines = ["# Real proportions: fit and scoring memory and speed (d_in 4,096, random weights, this CPU)", "",
             "Written by `python -m benchmarks.scoring --real --out benchmarks/scoring/real_proportions` "
             f"({doc['threads']} threads, torch {doc['torch']}, {doc['total_seconds'] / 60:.1f} min of configurations "
             "in all; `--parts fit_rows` re-measures one part in place). "
             "Peak memory is each phase's own peak RSS (VmHWM reset before it) in a fresh process per row of the "
             "table; the language model is a one-layer stand-in, so scoring vs forward here measures the SAE "
             "side against a cheap model (the deployment ratio is the last table).", "",
             "| image tokens | d_sae | SAE | rows | fit peak (GiB) | fit rows/s | forward peak (GiB) | forward rows/s | "
             "score peak (GiB) | score rows/s | score / forward | feats/row img, txt | pairs kept (undercount) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rs:
        if r["kind"] != "shape":
            continue
        lines.append(f"| {r['tokens']} | {r['d_sae']} | {r['arch']} | {r['rows']} | {r['fit_peak_mib'] / GIB:.2f} | "
                     f"{r['fit_rows_per_s']:.3f} | {r['forward_peak_mib'] / GIB:.2f} | {r['forward_rows_per_s']:.3f} | "
                     f"{r['score_peak_mib'] / GIB:.2f} | {r['score_rows_per_s']:.3f} | {r['score_vs_forward']:.2f}x | "
                     f"{r['image_features_per_row']:.0f}, {r['text_features_per_row']:.0f} | "
                     f"{r['pairs']['n_pairs']} ({r['pairs'].get('max_undercount', 0)}) |")
    fits = [r for r in rs if r["kind"] == "fit_rows"]
    if fits:
        lines += ["", "## Fit memory from 1k to 4k reference rows (d_sae 65,536, d_in 256, standard SAE, rows of 4 "
                  "image tokens)",
                  "", "| rows | fit peak (GiB) | process peak (GiB) | fit rows/s | pairs kept | undercount | "
                  "cross-modal features | their sums at d_in 4,096 (GiB) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in fits:
            lines.append(f"| {r['rows']} | {r['fit_peak_mib'] / GIB:.2f} | {r['process_peak_mib'] / GIB:.2f} | "
                         f"{r['fit_rows_per_s']:.2f} | {r['pairs']['n_pairs']} | {r['pairs'].get('max_undercount', 0)}"
                         f" | {r['classes']['cross_modal']} | {r['cross_modal_sums_mib_at_4096'] / GIB:.2f} |")
        if "fit_peak_growth_1k_to_4k" in doc:
            lines += ["", f"Fit peak growth 1k -> 4k rows: {doc['fit_peak_growth_1k_to_4k'] * 100:+.1f}% "
                          f"(process peak {doc['process_peak_growth_1k_to_4k'] * 100:+.1f}%; target < +10%)."]
    for r in rs:
        if r["kind"] == "ratio":
            lo, hi = r["score_vs_forward_range"]
            lines += ["", "## Scorer vs the bare truncated forward at the deployment's model:SAE ratio", "",
                      f"Real: LLaVA-NeXT-7B to its middle layer {REAL_MODEL_FLOP / 1e9:.2f} GFLOP/token vs the "
                      f"4,096 x 65,536 SAE {REAL_SAE_FLOP / 1e9:.3f} GFLOP/token = {r['real_flop_ratio']:.2f} : 1. "
                      f"Stand-in: {r['layers']} Vicuna-7B-shaped layers {r['model_flop_per_token'] / 1e9:.2f} "
                      f"GFLOP/token vs a 4,096 x {r['d_sae']} SAE {r['sae_flop_per_token'] / 1e9:.3f} GFLOP/token = "
                      f"{r['standin_flop_ratio']:.2f} : 1, {r['tokens']} image tokens per row, batch {r['batch_size']}.",
                      "", f"Scorer / forward: **{r['score_vs_forward']:.3f}x** (median of {r['repeats']} interleaved "
                      f"repeats, range {lo:.3f}-{hi:.3f}; target >= 0.90x); forward {r['forward_rows_per_s']:.3f} "
                      f"rows/s, scorer {r['score_rows_per_s']:.3f} rows/s."]
    for r in failed:
        lines += ["", f"**Failed**: {r['kind']} {({k: v for k, v in r.items() if k not in ('failed', 'kind')})}: "
                      f"{r['failed']}"]
    lines += ["", "## Largest shape in 24 GiB (extrapolated linearly in d_sae from the two measured widths)", "",
              "| image tokens | SAE | GiB per 1k features | largest d_sae |", "|---:|---|---:|---:|"]
    for e in doc["largest_in_24gib"]:
        lines.append(f"| {e['tokens']} | {e['arch']} | {e['mib_per_1k_features'] / GIB:.3f} | {e['largest_d_sae']} |")
    return "\n".join(lines) + "\n"

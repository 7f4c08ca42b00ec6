"""Defect detection on the testbed: an SAE for it, every method's scores, AUROC per defect kind.

Shared by the main job (``saev-curate demo``) and ``benchmarks/defect_detection.py``.  Every method
gives "higher = cleaner" scores, so AUROC of clean rows against the rows of one defect kind reads
the same way for all: 1.0 = every clean row outranks every defective one, 0.5 = chance.  A kind is
compared with the clean rows of its own task (the ``task`` its rows have: descriptions or questions): a long
description and a one-word answer differ in every score for reasons that are not defects.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from pathlib import Path

import numpy as np

from saev_curate.curation.methods import METHODS, SAEV, methods_for
from saev_curate.testbed.data import DEFECT_KINDS, NEUTRAL_PROMPT, defect_rows

#: method -> (scorer column, sign), from the methods table: the SAE-V families first, then the baselines (a CLIP
#: score needs another model; the difficulty family is a baseline reversed)
SAEV_METHODS = {m.name: (m.column, 1 if m.higher_is_cleaner else -1) for m in METHODS.values() if m.family in SAEV}
BASELINES = {m.name: (m.column, 1 if m.higher_is_cleaner else -1) for m in METHODS.values()
             if m.family == "baseline" and "clip" not in m.needs}
LIKELIHOOD = tuple(n for n in BASELINES if METHODS[n].needs == frozenset({"response"}))
#: where each method's blame lands (an index among the chosen response's tokens)
BLAME = {m.name.removesuffix("_chosen"): m.blame for m in METHODS.values() if m.blame}
PROMPT_ONLY = tuple(methods_for("prompt_only", families=SAEV))
RESPONSE_AWARE = tuple(n for n in SAEV_METHODS if n not in PROMPT_ONLY)


def sae_training_rows(n: int = 3000, seed: int = 100) -> list[dict]:
    """Clean rows over *train* images: the SAE's own corpus (never the rows it will score)."""
    return defect_rows(n, defect_rate=0.0, split="train", seed=seed)


def testbed_sae(model_path: str | os.PathLike, model, processor, *, architecture: str = "topk", seed: int = 0,
                steps: int = 1000, expansion_factor: int = 8, k: int = 32, progress: bool = True):
    """Train (once; cached beside the model) an SAE-V for the testbed's middle layer.

    ``architecture="standard"`` is the paper preset (ReLU, decoder-norm-weighted L1 with λ = 5 warmed
    up over 5%, no decoder constraint; lr 4e-4 for a short run), ``"topk"`` the modern alternative.
    """
    import datasets

    from saev_curate import sae as sae_package
    from saev_curate import vlm as vlm_package
    from saev_curate.core.errors import SaevError
    from saev_curate.io.fingerprint import path_fingerprint, source_fingerprint
    from saev_curate.sae import load_sae
    from saev_curate.sae.training import SaevTrainConfig, train_sae

    model_path = Path(model_path)
    out = model_path.parent / f"{model_path.name}-sae-{architecture}-x{expansion_factor}-s{steps}-seed{seed}"
    act_cache = model_path.parent / f"{model_path.name}-act-cache"
    # a rebuilt model keeps its folder's name; changed capture, caching or training code (another shard layout,
    # hence another batch order; another float order) makes other activations or another SAE
    stamp = {"model_fingerprint": path_fingerprint(model_path),
             "code_fingerprint": source_fingerprint(vlm_package, sae_package)}
    for folder in (out, act_cache):
        if folder.exists() and _read_stamp(folder) != stamp:
            print(f"{folder} was made from another build of {model_path.name} or by other code; making it again")
            shutil.rmtree(folder)
    if (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file():
        try:
            return load_sae(str(out)), out
        except SaevError as e:  # a damaged cache: trained again
            print(f"the cached SAE at {out} cannot be loaded ({e}); training it again")
            shutil.rmtree(out)
    data = model_path.parent / f"{model_path.name}-sae-data"
    try:
        datasets.load_from_disk(str(data))
    except Exception:  # missing or half-written: written again, atomically
        tmp = data.with_name(data.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.Dataset.from_list(sae_training_rows()).save_to_disk(str(tmp))
        shutil.rmtree(data, ignore_errors=True)
        tmp.rename(data)
    kw = (dict(architecture="topk", k=k, lr=1e-3) if architecture == "topk"
          else dict(architecture="standard", lr=4e-4, l1_coefficient=5.0))
    cfg = SaevTrainConfig(model=str(model_path), dataset=str(data), layer="middle", mode="full",
                          expansion_factor=expansion_factor, total_steps=steps, batch_size=1024,
                          checkpoint_every=None, buffer_tokens=32768, output_dir=str(out),
                          activation_cache=str(act_cache), seed=seed, **kw)
    sae = train_sae(cfg, model=model, processor=processor, dataset=datasets.load_from_disk(str(data)), progress=progress)
    for folder in (out, act_cache):
        (folder / STAMP).write_text(json.dumps(stamp))
    return sae, out


#: beside a cached testbed SAE and activation cache: the content fingerprint of the model they were made from and of
#: the source that captured, cached and trained (the vlm and sae packages)
STAMP = "testbed_model.json"


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _scored(scorer, rows: list[dict], batch_size: int = 32) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in range(0, len(rows), batch_size):
        for k, v in scorer(rows[s:s + batch_size]).items():
            out.setdefault(k, []).extend(list(v))
    return out


def method_scores(model, processor, sae, weights, rows: list[dict], *, delta_rel: float | None = None,
                  seed: int = 0, perplexity: dict[str, list] | None = None) -> dict[str, list]:
    """Every method's scores of ``rows`` (higher = cleaner; None where a row could not be scored).

    ``perplexity``: the response-perplexity columns when already computed (they do not depend on
    the SAE); otherwise they are computed here.
    """
    from saev_curate.curation.scorers import MethodScorer

    scored = [n for n, (col, _) in {**SAEV_METHODS, **BASELINES}.items() if col is not None]
    if perplexity is not None:
        scored = [n for n in scored if n not in LIKELIHOOD]
    main = _scored(MethodScorer(model, processor, sae, weights, methods=scored, control_prompt=NEUTRAL_PROMPT,
                                delta_rel=delta_rel), rows)
    if perplexity is not None:
        main.update(perplexity)
    rng = np.random.RandomState(seed)
    main["random"] = rng.rand(len(rows)).tolist()
    out = {}
    for name, (col, sign) in {**SAEV_METHODS, **BASELINES}.items():
        vals = main["random"] if col is None else main[col]
        out[name] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else sign * float(v) for v in vals]
    out["_error"] = main.get("saev_error", [None] * len(rows))
    for col in BLAME.values():
        out[f"_{col}"] = main.get(col, [None] * len(rows))
    return out


def with_combined(methods: dict[str, list], saev: str, likelihood: str) -> dict[str, list]:
    """``methods`` plus ``combined``: the rank average of an SAE-V column and a likelihood column (a row either
    cannot score counts as the lowest, as in :func:`auroc`)."""
    from saev_curate.curation.selection import rank_average

    low = lambda v: [-1e300 if x is None else x for x in v]  # noqa: E731
    return {**methods, "combined": rank_average({"a": low(methods[saev]), "b": low(methods[likelihood])})}


def localisation(methods: dict[str, list], rows: list[dict], *, fpr: float = 0.1) -> dict[str, dict]:
    """For each blaming method: among ``hallucinated_detail`` rows it detects (scores below the ``fpr`` quantile
    of clean description rows), the share whose blamed token is one of the false fact's words; also over all
    hallucinated rows."""
    out = {}
    for method, col in BLAME.items():
        score_of = methods.get(method if method in methods else f"{method}_chosen")
        blamed = methods.get(f"_{col}")
        if score_of is None or blamed is None:
            continue
        clean = sorted(s for s, r in zip(score_of, rows) if r["defect"] == "none" and r["task"] == "describe"
                       and s is not None)
        cut = clean[int(fpr * len(clean))] if clean else -math.inf
        hits, hits_all = [], []
        for s, b, r in zip(score_of, blamed, rows):
            if r["defect"] != "hallucinated_detail":
                continue
            hit = b is not None and int(b) in set(r["defect_words"])
            hits_all.append(hit)
            if s is None or s < cut:
                hits.append(hit)
        out[method] = {"detected": float(np.mean(hits)) if hits else float("nan"), "n_detected": len(hits),
                       "all": float(np.mean(hits_all)) if hits_all else float("nan"), "n": len(hits_all)}
    return out


def auroc(scores: list, labels: list[str], kind: str, clean: str = "none", tasks: list[str] | None = None) -> float:
    """AUROC of ``clean`` rows against rows of defect ``kind`` (higher score = cleaner; ties count half).

    A row without a score counts as the lowest score: a method that cannot score a row flags it.  With
    ``tasks`` (each row's task), only clean rows of the tasks the kind's rows have take part.
    """
    from saev_curate.jobs.report import auc

    keep = [True] * len(labels)
    if tasks is not None:
        own = {t for t, lab in zip(tasks, labels) if lab == kind}
        keep = [lab == kind or t in own for t, lab in zip(tasks, labels)]
    pairs = [(-math.inf if s is None else s, lab == clean) for s, lab, k in zip(scores, labels, keep)
             if k and lab in (clean, kind)]
    if not any(p for _, p in pairs) or all(p for _, p in pairs):
        return float("nan")
    return auc([s for s, _ in pairs], [p for _, p in pairs])


def auroc_table(methods: dict[str, list], labels: list[str], tasks: list[str] | None = None
                ) -> dict[str, dict[str, float]]:
    """``{method: {defect kind: AUROC}}`` over the kinds present in ``labels`` (each against the clean rows of its
    own task when ``tasks`` is given)."""
    kinds = [k for k in DEFECT_KINDS if k in labels]
    return {m: {k: auroc(v, labels, k, tasks=tasks) for k in kinds} for m, v in methods.items()
            if not m.startswith("_")}


def mean_sd(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}

"""The embedded default job: real digit images with true and false claims, curated end to end.

Rows are TRL preference rows over real MNIST digits: the prompt claims which digit the image shows
(true for half the rows, false for the rest), `chosen` names the right digit, `rejected` a wrong
one. SAE-V should score the rows whose image and text agree higher; the report's AUC for `matched`
says how well it does. Everything is offline: a tiny LLaVA built locally (random weights, so its
scores are a smoke test) or any local VLM, e.g. the MNIST LLaVA from `benchmarks/`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    import os

    return Path(os.environ.get("SAEV_CACHE", Path.home() / ".cache" / "saev-curate"))


def digit_preference_rows(n: int = 400, *, seed: int = 0, mismatch_fraction: float = 0.5) -> list[dict]:
    """`n` preference rows over real digits; `matched` says whether the prompt's claim is true."""
    from PIL import Image

    from saev_curate.io.images_offline import mnist_digits

    images, labels = mnist_digits()
    rng = random.Random(seed)
    picks = rng.sample(range(len(labels)), min(n, len(labels)))
    rows = []
    for i, idx in enumerate(picks):
        digit = int(labels[idx])
        matched = i >= int(round(mismatch_fraction * len(picks)))
        claimed = digit if matched else rng.choice([d for d in range(10) if d != digit])
        wrong = rng.choice([d for d in range(10) if d != digit])
        rows.append({
            "prompt": f"This handwritten digit is a {claimed}. What digit is this?",
            "images": [Image.fromarray(images[idx]).convert("RGB")],
            "chosen": str(digit), "rejected": str(wrong),
            "digit": digit, "claimed": claimed, "matched": matched,
        })
    rng.shuffle(rows)
    return rows


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    auc_matched: float
    n_rows: int
    n_scored: int
    n_kept: int
    kept_matched_share: float
    all_matched_share: float


def run_demo(out_dir: str | Path = "saev-demo", *, model: str | None = None, sae: str | None = None,
             rows: int = 400, sae_steps: int = 400, n_reference: int = 200, fraction: float = 0.5,
             layer: str = "middle", seed: int = 0) -> DemoResult:
    """Build/take a model and an SAE, fit ω, score every row, keep the top `fraction`, write a report."""
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import SaevScorer
    from saev_curate.curation.selection import select
    from saev_curate.report import auc, write_score_report
    from saev_curate.sae.io import load_sae
    from saev_curate.sae.training import SaevTrainConfig, train_sae
    from saev_curate.testing import save_tiny_vlm
    from saev_curate.vlm.layers import resolve_sae_layer
    from saev_curate.vlm.load import load_vlm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if model is None:
        model = str(cache_root() / "demo" / "tiny-llava")
        if not (Path(model) / "config.json").exists():
            print(f"building a tiny LLaVA (random weights) in {model}")
            save_tiny_vlm("llava", model, seed=seed)
    vlm, processor = load_vlm(model)
    data_dir = out / "data"
    ds = datasets.Dataset.from_list(digit_preference_rows(rows, seed=seed))
    ds.save_to_disk(str(data_dir))
    ds = datasets.load_from_disk(str(data_dir))
    print(f"{len(ds)} preference rows over real digits ({sum(ds['matched'])} with a true claim) in {data_dir}")

    if sae is None:
        cfg = SaevTrainConfig(model=model, dataset=str(data_dir), layer=layer, mode="full", architecture="topk",
                              k=32, expansion_factor=8, total_steps=sae_steps, batch_size=256, lr=1e-3,
                              checkpoint_every=None, buffer_tokens=8192, output_dir=str(out / "sae"), seed=seed)
        sae_model = train_sae(cfg, model=vlm, processor=processor, dataset=ds)
        sae = str(out / "sae")
    else:
        sae_model = load_sae(sae)
    layer_index = resolve_sae_layer(vlm, sae_model, default=layer)

    weights = CrossModalWeights.fit(vlm, processor, sae_model, ds, layer_index, n_reference=n_reference, progress=True)
    weights.save(out / "weights")
    print(f"cross-modal weights: {weights.summary()}")
    scorer = SaevScorer(vlm, processor, sae_model, weights, layer_index)
    scored = scorer.map(ds, batch_size=8)
    scored.save_to_disk(str(out / "scored"))
    kept = select(scored, by="saev_score", fraction=fraction)
    kept.save_to_disk(str(out / "selected"))

    scores = [(s, m) for s, m in zip(scored["saev_score"], scored["matched"]) if s is not None]
    value = auc([s for s, _ in scores], [m for _, m in scores])
    result = DemoResult(out, out / "report.html", value, len(scored), len(scores), len(kept),
                        sum(kept["matched"]) / max(1, len(kept)), sum(scored["matched"]) / len(scored))
    write_score_report(scored, result.report, label="matched", title="SAE-V scores: digits with true and false claims",
                       extra={"model": model, "SAE": sae, "layer": layer_index, "weights": weights.summary(),
                              f"kept (top {fraction:.0%})": f"{len(kept)} rows, {result.kept_matched_share:.0%} "
                              f"with a true claim (all rows: {result.all_matched_share:.0%})",
                              "seconds": round(time.perf_counter() - start)})
    (out / "summary.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                  for k, v in result.__dict__.items()}, indent=2))
    return result

"""The embedded default job: find the defective rows of an alignment set, on real images, offline.

The model is the testbed (:mod:`saev_curate.testbed`: a small LLaVA trained here on real digits,
faces, photos and drawn shapes, built on first use and cached); the data are TRL preference rows
over its held-out images, half descriptions and half questions, with tagged defects (a hallucinated detail
in a description, an omitted one as a control, image/prompt mismatch, chosen contradicting the image,
corrupted image, off-topic prompt; the ``defect`` column, which no method reads).  The job trains
(once, cached) an SAE-V on the model's middle layer, fits ω on the rows, scores every row with the
paper's score and the variants beyond it, keeps the top ``fraction`` by ``by``, and writes an HTML
report: AUROC per defect kind for every method, the score histogram by kind, and the lowest- and
highest-scoring rows as pictures.  ``model=`` takes any local VLM instead (with ``sae=``, any SAE).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from saev_curate.core.errors import InputError


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    auroc: dict[str, dict[str, float]]
    by: str
    n_rows: int
    n_scored: int
    n_kept: int
    kept_defect_share: float
    all_defect_share: float
    seconds: float
    #: the SAE folder the scores came from
    sae: str = ""
    #: the feature browser (``saev-curate inspect``) of the SAE over the rows, when built
    site: Path | None = None


def default_demo_by() -> str:
    """The demo's ranking method when none is named: the methods table's recommendation for its preference rows."""
    from saev_curate.curation.methods import default_by

    return default_by(shape="preference")


def check_job_arguments(*, rows: int, defect_rate: float, fraction: float, by: str) -> None:
    """The main jobs' arguments, checked before anything is built or loaded (an empty cache starts a build)."""
    from saev_curate.jobs.detection import BASELINES, SAEV_METHODS

    if rows < 10:
        raise InputError(f"--rows {rows}: the job needs at least 10 rows to compare clean and defective ones")
    if not 0 <= defect_rate <= 1:
        raise InputError(f"--defect-rate {defect_rate}: give the share of defective rows, between 0 and 1")
    if not 0 < fraction <= 1:
        raise InputError(f"--fraction {fraction}: give the share of rows to keep, in (0, 1]")
    if by is not None and by not in SAEV_METHODS and by not in BASELINES:
        raise InputError(f"--by {by!r}: the job compares the methods of the table it can compute; use one of "
                         f"{', '.join([*SAEV_METHODS, *BASELINES])}")


def run_demo(out_dir: str | Path = "saev-demo", *, model: str | None = None, sae: str | None = None,
             rows: int = 600, defect_rate: float = 0.3, sae_steps: int = 1000, architecture: str = "topk",
             n_reference: int = 1000, fraction: float = 0.5, by: str | None = None, seed: int = 0,
             progress: bool = True, split: str = "test", report: bool = True, mix: dict[str, float] | None = None,
             describe_share: float = 0.5, site_features: int = 200) -> DemoResult:
    """Build/take the model and an SAE, fit ω, score every row with every method, select, report.

    ``split``: the testbed images the rows are drawn from (``saev-curate pipeline`` trains on ``"dev"`` rows and
    evaluates on ``"test"`` items); ``report=False`` skips the HTML page (the pipeline writes its own); ``mix`` and
    ``describe_share``: the defect kinds and the share of description rows (:func:`~saev_curate.testbed.data.defect_rows`);
    ``site_features``: the feature browser (``out/site``, linked from the report, and from the pipeline's with
    ``report=False``) shows the most frequent this many live features (0: no site).
    """
    import datasets

    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.selection import select
    from saev_curate.jobs.detection import auroc_table, method_scores, testbed_sae
    from saev_curate.jobs.report import write_score_report
    from saev_curate.sae import load_sae
    from saev_curate.testbed import build_testbed
    from saev_curate.testbed.data import defect_rows
    from saev_curate.vlm.load import load_vlm

    by = by or default_demo_by()
    check_job_arguments(rows=rows, defect_rate=defect_rate, fraction=fraction, by=by)
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(model) if model is not None else build_testbed()
    vlm, processor = load_vlm(str(model_path))
    if sae is None:
        sae_model, sae_dir = testbed_sae(model_path, vlm, processor, architecture=architecture, steps=sae_steps,
                                         seed=seed, progress=progress)
    else:
        sae_model, sae_dir = load_sae(sae), Path(sae)
    data = defect_rows(rows, defect_rate=defect_rate, split=split, seed=seed, mix=mix, describe_share=describe_share)
    labels = [r["defect"] for r in data]
    print(f"{len(data)} preference rows over {split}-split images, {sum(lab != 'none' for lab in labels)} with a defect")
    ds = datasets.Dataset.from_list(data)
    weights = CrossModalWeights.fit(vlm, processor, sae_model, ds, None, n_reference=min(n_reference, len(ds)),
                                    progress=progress)
    weights.save(out / "weights")
    print(f"cross-modal weights: {weights.summary()}")
    scores = method_scores(vlm, processor, sae_model, weights, data, seed=seed)
    table = auroc_table(scores, labels, [r["task"] for r in data])
    columns = {name: scores[name] for name in table}
    scored = ds.add_column("saev_error", scores["_error"])
    for name, values in columns.items():
        scored = scored.add_column(f"method_{name}", values)
    scored.save_to_disk(str(out / "scored"))
    col = f"method_{by}"
    kept = select(scored, by=col, fraction=fraction)
    kept.save_to_disk(str(out / "selected"))
    n_scored = sum(v is not None for v in columns[by])
    kept_bad = sum(d != "none" for d in kept["defect"]) / max(1, len(kept))
    all_bad = sum(d != "none" for d in labels) / len(labels)
    seconds = time.perf_counter() - start
    result = DemoResult(out, out / "report.html", table, by, len(scored), n_scored, len(kept), kept_bad, all_bad, seconds,
                        str(sae_dir))
    if site_features:
        from saev_curate.inspect.site import build_site

        result.site = build_site(vlm, processor, sae_model, weights, ds, out / "site", top_k=10, sample=10,
                                 max_features=site_features, progress=progress,
                                 title="SAE-V on the testbed: the feature browser").index
    if report:
        link = ([f"<p><a href='{result.site.relative_to(out)}'>Look inside: the SAE's features and why the lowest- and "
                 "highest-scoring rows score what they score</a></p>"] if result.site else [])
        write_score_report(
            scored, result.report, by=col, label="defect", auroc=table, highlight=by,
            title="SAE-V on the testbed: which rows are defective?",
            extra={"model": str(model_path), "SAE": str(sae_dir), "weights": weights.summary(),
                   f"kept (top {fraction:.0%} by {by})": f"{len(kept)} rows, {kept_bad:.0%} defective "
                   f"(all rows: {all_bad:.0%})", "seconds": round(seconds)}, sections=link)
    (out / "summary.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}, indent=2, default=str))
    return result

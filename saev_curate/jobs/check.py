"""`saev-curate check` / :func:`saev_curate.check`: which score works on the user's own model and data: the
measurement (:func:`saev_curate.curation.check.run_check`), then its page (``report.html``) beside ``check.json``."""

from __future__ import annotations

from pathlib import Path

from saev_curate.curation.check import CheckResult, run_check

__all__ = ["check"]


def check(model, sae, weights, data, out: str | Path = "saev-check", *, processor=None, n: int = 400, seed: int = 0,
          methods: list[str] | None = None, config=None, n_boot: int = 1000, n_reference: int = 1000,
          batch_size: int = 8, device: str | None = None, dtype: str | None = None, rank: int = 0, world: int = 1,
          progress: bool = True) -> CheckResult | None:
    """Plant defects in a sample of ``data`` (a ``datasets.Dataset`` or a path), score every method the data allow
    with ``model`` (an object or a folder), ``sae`` and ``weights`` (objects or folders; ``sae=None``: only the
    methods that need no SAE; ``weights=None``: ω fitted on ``n_reference`` rows of ``data``), and write
    ``out/check.json`` and ``out/report.html``. Returns the result (None on ranks other than 0)."""
    from saev_curate.curation.config import ScoreConfig
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.io.datasets import load_local_dataset
    from saev_curate.jobs.report import write_check_report
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    config = config if config is not None else ScoreConfig()
    if isinstance(data, (str, Path)):
        data = load_local_dataset(data)
    if isinstance(model, (str, Path)):
        model, loaded = load_vlm(str(model), dtype=dtype, device=device)
        processor = processor or loaded
    if processor is None:
        raise ValueError("check(model=<an object>) needs processor=")
    if isinstance(sae, (str, Path)):
        sae = load_sae(str(sae), device=device)
    if sae is not None and weights is None:
        weights = CrossModalWeights.fit(model, processor, sae, data, config.layer_value, n_reference=n_reference,
                                        batch_size=batch_size, max_length=config.score_max_length, progress=progress)
        if rank == 0:
            weights.save(Path(out) / "crossmodal_weights")
    elif isinstance(weights, (str, Path)):
        weights = CrossModalWeights.load(str(weights))
    result = run_check(model, processor, sae, weights, data, out, n=n, seed=seed, methods=methods, config=config,
                       n_boot=n_boot, batch_size=batch_size, rank=rank, world=world, progress=progress)
    if result is not None:
        import datasets

        write_check_report(result, datasets.load_from_disk(str(Path(out) / "scored")), Path(out) / "report.html")
    return result

"""`saev-curate inspect` / :func:`run_inspect`: the static feature browser for a model, an SAE and data, with the
embedded testbed as the default (its model, its cached SAE, held-out rows with their concepts)."""

from __future__ import annotations

from pathlib import Path

from saev_curate.core.errors import InputError

__all__ = ["run_inspect"]


def run_inspect(out: str | Path = "site", *, model=None, processor=None, sae=None, weights=None, data=None,
                rows: int = 400, n_reference: int = 1000, architecture: str = "topk", top_k: int = 20,
                sample: int = 20, n_rows: int = 8, by: str | None = None, max_features: int | None = None,
                batch_size: int = 32, config=None, seed: int = 0, progress: bool = True):
    """Build the site (:func:`~saev_curate.inspect.site.build_site`) into ``out``.

    ``model``/``sae``/``weights``/``data``: objects or paths.  Without ``model``: the testbed, its cached
    ``architecture`` SAE and ``rows`` test-split preference rows (with ``defect`` and ``concept`` columns).  Without
    ``weights``: ω fitted on ``n_reference`` rows of the data and saved to ``out/weights``.  Returns the
    :class:`~saev_curate.inspect.site.SiteResult`."""
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.inspect.explain import load_parts
    from saev_curate.inspect.site import build_site
    from saev_curate.io.datasets import load_local_dataset

    out = Path(out)
    if model is not None and sae is None:
        raise InputError("--sae: give the SAE folder for this model (or leave --model out for the testbed)")
    if model is not None and data is None:
        raise InputError("--data: give the rows to inspect (or leave --model out for the testbed)")
    if model is None:
        import datasets

        from saev_curate.jobs.detection import testbed_sae
        from saev_curate.testbed import build_testbed
        from saev_curate.testbed.data import defect_rows
        from saev_curate.vlm.load import load_vlm

        model = build_testbed()
        vlm, processor = load_vlm(str(model))
        if sae is None:
            sae = testbed_sae(model, vlm, processor, architecture=architecture, progress=progress)[0]
        if data is None:
            data = datasets.Dataset.from_list(defect_rows(rows, split="test", seed=seed))
        model = vlm
    model, processor, sae, weights = load_parts(model, processor, sae, weights, need_weights=False)
    if isinstance(data, (str, Path)):
        data = load_local_dataset(data)
    if weights is None:
        weights = CrossModalWeights.fit(model, processor, sae, data, None, n_reference=min(n_reference, len(data)),
                                        progress=progress)
        weights.save(out / "weights")
    return build_site(model, processor, sae, weights, data, out, top_k=top_k, sample=sample, n_rows=n_rows, by=by,
                      max_features=max_features, batch_size=batch_size, config=config, progress=progress)

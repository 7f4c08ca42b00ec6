"""A small site built once per module on the tiny LLaVA (random SAE, weights fitted on the same rows)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def small_site(tiny_vlm, tmp_path_factory):
    from scoring_rows import fitted

    from saev_curate.inspect.site import build_site

    model, processor, sae, weights, rows = fitted(tiny_vlm, 12, seed=7)
    out = tmp_path_factory.mktemp("site")
    result = build_site(model, processor, sae, weights, rows, out, top_k=4, sample=6, n_rows=2, max_features=6,
                        batch_size=5, progress=False)
    return {"model": model, "processor": processor, "sae": sae, "weights": weights, "rows": rows, "out": out,
            "result": result}

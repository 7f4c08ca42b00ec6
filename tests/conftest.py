"""Shared test fixtures: offline hub, tiny vision-language models built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models: threads only add overhead, and on a shared 2-core machine they oversubscribe badly
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

_TINY_CACHE: dict[str, tuple] = {}


def get_tiny_vlm(family: str):
    """Build (once per session) the tiny model + processor of ``family`` with default sizes."""
    if family not in _TINY_CACHE:
        from saev_curate.testing import build_tiny_vlm

        _TINY_CACHE[family] = build_tiny_vlm(family, seed=0)
    return _TINY_CACHE[family]


@pytest.fixture(scope="session")
def tiny_vlm():
    """``tiny_vlm(family) -> (model, processor)``; each family is built at most once per session."""
    return get_tiny_vlm


def make_image(seed: int, width: int, height: int, mode: str = "RGB"):
    """A deterministic random PIL image."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    arr = (rng.rand(height, width, 3) * 255).astype("uint8")
    img = Image.fromarray(arr, mode="RGB")
    return img if mode == "RGB" else img.convert(mode)


@pytest.fixture(scope="session")
def images():
    """A few small images of different sizes (so per-image token counts differ where they can)."""
    return [make_image(0, 40, 30), make_image(1, 20, 50), make_image(2, 64, 64), make_image(3, 33, 33)]


# A small site built once per module on the tiny LLaVA (random SAE, weights fitted on the same rows).
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

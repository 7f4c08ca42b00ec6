"""Rows and SAEs shared by the scoring tests (reference, scorer, selection, CLI): preference rows over random
images (row 3 without an image), and a random SAE whose activations on the tiny models are O(1)."""

from __future__ import annotations

import numpy as np
import torch

from saev_curate.sae import SAE, SAEConfig

LAYER = 2


def make_rows(n: int, seed: int = 0, *, with_bad: bool = True) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ("a photo of a cat sitting on a red sofa next to a window what color is the bus the dog runs "
             "across the green field how many apples are on the table describe the image in detail").split()
    rows = []
    for i in range(n):
        h, w = int(rng.integers(24, 72)), int(rng.integers(24, 72))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        prompt = " ".join(rng.choice(words, size=int(rng.integers(3, 14))))
        rows.append({"prompt": prompt, "images": [img], "chosen": " ".join(rng.choice(words, 5)),
                     "rejected": " ".join(rng.choice(words, 3))})
    if with_bad:
        rows[3] = {"prompt": "no image in this row", "images": [], "chosen": "x", "rejected": "y"}
    return rows


def make_sae(d_in: int, d_sae: int = 192, *, seed: int = 0, scale: float = 2.5, bias: float = -0.15,
             architecture: str = "standard", k: int | None = None) -> SAE:
    """Random SAE whose activations on the tiny models' residuals (norm ~0.2) are O(1)."""
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, hook_layer=LAYER)
    sae = SAE.init_paper(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * scale)
        sae.b_enc.fill_(bias)
    return sae


def make_rlaif_v_rows(n: int, seed: int = 0) -> list[dict]:
    """RLAIF-V-shaped rows (``question``, ``image``, ``chosen``, ``rejected``; strings), every row with an image."""
    return [{"question": r["prompt"], "image": r["images"][0], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in make_rows(n, seed, with_bad=False)]


def fitted(tiny_vlm, n_rows: int, seed: int):
    """The tiny LLaVA, a random SAE for it, ``make_rows(n_rows, seed)`` and the cross-modal weights fitted on them."""
    from saev_curate.curation.crossmodal import CrossModalWeights

    model, processor = tiny_vlm("llava")
    sae = make_sae(model.config.get_text_config().hidden_size)
    rows = make_rows(n_rows, seed=seed)
    weights = CrossModalWeights.fit(model, processor, sae, rows, LAYER, n_reference=None)
    return model, processor, sae, weights, rows


def save_launch_inputs(root, rows: list[dict]) -> list[str]:
    """A saved tiny LLaVA, ``rows`` saved as a dataset (``root/data``) and an SAE active enough to score them
    (``root/sae``), for runs in other processes; returns the ``--model ... --sae ...`` flags."""
    import datasets

    from saev_curate.testing import save_tiny_vlm

    save_tiny_vlm("llava", root / "model")
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "data"))
    sae = SAE.init_paper(SAEConfig(d_in=64, d_sae=256, hook_name="blocks.2.hook_resid_post"), seed=0)
    with torch.no_grad():
        sae.W_enc.mul_(40)
    sae.save(root / "sae")
    return ["--model", str(root / "model"), "--sae", str(root / "sae")]


def save_qwen_parts(root, n_rows: int, seed: int = 4):
    """A tiny Qwen2-VL, a random SAE for its layer 1 and ``make_rows(n_rows, seed)`` saved under ``root`` (``model``,
    ``sae``, ``data``): what a CLI test runs a command on."""
    import datasets

    from saev_curate.testing import save_tiny_vlm
    from saev_curate.vlm.load import load_vlm

    save_tiny_vlm("qwen2_vl", root / "model", seed=0)
    model, _ = load_vlm(str(root / "model"))
    sae = make_sae(model.config.get_text_config().hidden_size)
    sae.cfg.hook_layer = 1
    sae.save(root / "sae")
    datasets.Dataset.from_list(make_rows(n_rows, seed=seed)).save_to_disk(str(root / "data"))
    return root

"""train_sae: the caller's config is never changed (provenance goes into the run's own copy)."""

from __future__ import annotations

import copy

from saev_curate.sae.training import SaevTrainConfig, train_sae


def test_train_sae_does_not_mutate_its_config(tiny_vlm, images, tmp_path):
    model, processor = tiny_vlm("llava")
    rows = [{"prompt": f"what is in picture {i}?", "images": [images[i % len(images)]]} for i in range(6)]
    cfg = SaevTrainConfig(layer="middle", mode="prompt", architecture="topk", k=4, expansion_factor=2,
                          total_steps=2, batch_size=16, checkpoint_every=None, buffer_tokens=64,
                          output_dir=str(tmp_path / "sae"))
    before = copy.deepcopy(cfg)
    sae = train_sae(cfg, model=model, processor=processor, dataset=rows, progress=False)
    assert cfg == before
    assert sae.cfg.hook_layer == 2 and sae.cfg.hook_name == "blocks.2.hook_resid_post"

"""Test and example support, not exported from ``saev_curate``: tiny vision-language models built from
configs with random weights and a tokenizer trained on the fly (every supported family, no downloads).

    from saev_curate.testing import build_tiny_vlm, save_tiny_vlm
    model, processor = build_tiny_vlm("qwen2_vl", seed=0)
"""

from saev_curate.testing.tiny_vlms import FAMILIES, build_tiny_vlm, save_tiny_vlm

__all__ = ["FAMILIES", "build_tiny_vlm", "save_tiny_vlm"]

"""Small labelled rows for tests: real digits whose prompt claims a digit, truly for half of them."""

from __future__ import annotations

import random


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

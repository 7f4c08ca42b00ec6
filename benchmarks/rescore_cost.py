"""Cost of one SaevRescoreCallback re-score relative to one DPO training step (tiny models, CPU).

    python benchmarks/rescore_cost.py [--rows 64] [--steps 20] [--repeats 5] [--families llava qwen2_vl]

For each tiny family: a DPOTrainer with LoRA (r=8 on q/v) at batch size 2 trains ``--steps`` steps
(the first 3 are warm-up and not timed); then ``callback.rescore()`` scores all ``--rows`` training rows
with the policy ``--repeats`` times.  Prints medians with [min, max], the ratio re-score / step, and
the per-row ratio (scoring a row vs training on a preference pair).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ("a photo of a cat on a red sofa what color is the bus the dog runs across the green field how many "
             "apples are on the table describe the image").split()
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3),
                                           dtype=np.uint8))
        say = lambda k: " ".join(rng.choice(words, k))  # noqa: E731
        out.append({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": say(8)}]}],
                    "chosen": [{"role": "assistant", "content": [{"type": "text", "text": say(6)}]}],
                    "rejected": [{"role": "assistant", "content": [{"type": "text", "text": say(5)}]}],
                    "images": [img]})
    return out


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:8.1f} ms [{min(xs) * 1000:.1f}, {max(xs) * 1000:.1f}]"


def run(family: str, n_rows: int, steps: int, repeats: int, batch_size: int) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from saev_curate import SAE, CrossModalWeights, SAEConfig, SaevRescoreCallback
    from saev_curate.testing import build_tiny_vlm

    model, processor = build_tiny_vlm(family, seed=0)
    d_in = model.config.get_text_config().hidden_size
    layer = model.config.get_text_config().num_hidden_layers // 2
    sae = SAE.init_paper(SAEConfig(d_in=d_in, d_sae=16 * d_in, hook_layer=layer), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, 16 * d_in, generator=g) * 2.5)
        sae.b_enc.fill_(-0.15)
    weights = CrossModalWeights(omega=torch.rand(16 * d_in, generator=g) * 0.3,
                                classes=torch.full((16 * d_in,), 2, dtype=torch.int8))
    ds = datasets.Dataset.from_list(preference_rows(n_rows))

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    args = DPOConfig(output_dir=f"/tmp/rescore_cost_{family}", use_cpu=True, bf16=False, gradient_checkpointing=False,
                     per_device_train_batch_size=batch_size, max_steps=steps, logging_steps=10_000, report_to=[],
                     save_strategy="no", max_length=None, disable_tqdm=True, seed=0)
    torch.manual_seed(0)
    trainer = DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=ds, processing_class=processor,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
                         callbacks=[Clock()])
    cb = SaevRescoreCallback(sae=sae, weights=weights, fraction=0.5, batch_size=8).attach(trainer)
    trainer.train()
    step_times = np.diff(stamps)[2:].tolist()  # steps 4.. (warm-up excluded)
    cb.rescore()  # warm-up
    rescore_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cb.rescore()
        rescore_times.append(time.perf_counter() - t0)
    step, rescore = statistics.median(step_times), statistics.median(rescore_times)
    print(f"{family:9s} training step (bs {batch_size}, {len(step_times)} steps): {spread(step_times)}")
    print(f"{family:9s} re-score of {n_rows} rows ({repeats} repeats):     {spread(rescore_times)}")
    print(f"{family:9s} re-score / step = {rescore / step:.2f}x; per row: scoring a row = "
          f"{(rescore / n_rows) / (step / batch_size):.3f}x training on one pair; "
          f"EV of the SAE on the policy {cb.last_metrics.get('saev/explained_variance', float('nan')):.3f}")
    return {"step": step, "rescore": rescore}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--families", nargs="+", default=["llava", "qwen2_vl"])
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"torch threads {torch.get_num_threads()}")
    for fam in a.families:
        run(fam, a.rows, a.steps, a.repeats, a.batch_size)


if __name__ == "__main__":
    main()

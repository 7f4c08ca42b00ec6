"""Shared by the TRL integration tests and their two-process script: tiny rows, SAE, ω, trainers."""

from __future__ import annotations

import copy

import numpy as np
import torch

LAYER = 2
_BASE: dict = {}


def base_vlm(family: str):
    """A tiny model of ``family`` (built once per process) and its processor; copy before training."""
    if family not in _BASE:
        from saev_curate.testing import build_tiny_vlm

        _BASE[family] = build_tiny_vlm(family, seed=0)
    return _BASE[family]


def fresh_vlm(family: str):
    model, processor = base_vlm(family)
    return copy.deepcopy(model), processor


def rows(n: int, seed: int = 0, *, kind: str = "dpo") -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ("a photo of a cat on a red sofa what color is the bus the dog runs across the green field how many "
             "apples are on the table describe the image").split()
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3),
                                           dtype=np.uint8))
        prompt = [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": f"{i} " + " ".join(rng.choice(words, 6))}]}]
        good = [{"role": "assistant", "content": [{"type": "text", "text": " ".join(rng.choice(words, 4))}]}]
        bad = [{"role": "assistant", "content": [{"type": "text", "text": " ".join(rng.choice(words, 3))}]}]
        if kind == "dpo":
            out.append({"prompt": prompt, "chosen": good, "rejected": bad, "images": [img]})
        else:
            out.append({"messages": prompt + good, "images": [img]})
    return out


def sae_and_weights(d_in: int = 64, d_sae: int = 128, seed: int = 0):
    from saev_curate import SAE, CrossModalWeights, SAEConfig

    sae = SAE.init_paper(SAEConfig(d_in=d_in, d_sae=d_sae, hook_layer=LAYER), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # activations O(1) on the tiny models' residuals (norm ~0.2)
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 2.5)
        sae.b_enc.fill_(-0.15)
    omega = torch.rand(d_sae, generator=g) * 0.3
    weights = CrossModalWeights(omega=omega, classes=torch.full((d_sae,), 2, dtype=torch.int8))
    return sae, weights


def trainer(kind: str, family: str, ds, out_dir, *, peft: bool = True, callbacks=None, **overrides):
    """A DPO or SFT trainer on CPU with LoRA (model and LoRA init deterministic)."""
    from peft import LoraConfig

    model, processor = fresh_vlm(family)
    args = dict(output_dir=str(out_dir), use_cpu=True, bf16=False, gradient_checkpointing=False,
                per_device_train_batch_size=2, max_steps=4, logging_steps=1, report_to=[], save_strategy="no",
                max_length=None, learning_rate=5e-3, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    args.update(overrides)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if peft else None
    torch.manual_seed(0)  # LoRA's A matrices
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(model=model, args=DPOConfig(**args), train_dataset=ds, processing_class=processor,
                          peft_config=lora, callbacks=callbacks)
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=ds, processing_class=processor,
                      peft_config=lora, callbacks=callbacks)


def losses(tr) -> list[float]:
    return [h["loss"] for h in tr.state.log_history if "loss" in h]


def record_collated(tr, key: str) -> list:
    """Wrap the trainer's collator to record ``example[key]`` of every example it collates."""
    seen: list = []
    inner = tr.data_collator

    def collate(examples):
        seen.extend(str(e[key]) for e in examples)
        return inner(examples)

    tr.data_collator = collate
    return seen

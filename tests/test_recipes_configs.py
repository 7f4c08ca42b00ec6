"""Every recipe config parses with its recipe's TrlParser and builds its trainer arguments (no GPU touched)."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

CONFIGS = ROOT / "recipes" / "configs"
TRAIN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name.startswith(("dpo_", "sft_")))
REAL = [p for p in TRAIN_CONFIGS if "_cpu" not in p.name]


def _parse(path: Path):
    from recipes import dpo, sft

    recipe = dpo if path.name.startswith("dpo_") else sft
    return recipe.make_parser().parse_args_and_config(args=["--config", str(path)])


def test_the_expected_configs_exist():
    names = {p.name for p in TRAIN_CONFIGS}
    for model in ("llava_next_7b", "qwen2_5_vl_7b"):
        for data in ("align_anything", "rlaif_v"):
            for peft in ("lora", "qlora"):
                assert f"dpo_{model}_{data}_{peft}.yaml" in names
    assert {"dpo_testbed_cpu.yaml", "sft_testbed_cpu.yaml"} <= names


@pytest.mark.parametrize("path", [p for p in TRAIN_CONFIGS if "_cpu" in p.name], ids=lambda p: p.name)
def test_cpu_configs_build_on_this_machine(path):
    script, saev, train, model = _parse(path)
    assert train.use_cpu and not train.bf16 and not train.gradient_checkpointing
    assert train.max_length is None  # never cuts image tokens
    assert model.dtype == "float32" and model.use_peft
    assert saev.select_by == "auto" and saev.select_fraction == 0.5
    assert type(train).__name__ == ("DPOConfig" if path.name.startswith("dpo_") else "SFTConfig")


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_scale_configs_parse_and_build(path, monkeypatch):
    import transformers.training_args as ta
    from peft import LoraConfig
    from trl import get_peft_config, get_quantization_config

    # bf16 needs an Ampere GPU: pretend one is there so the config builds exactly as it will on the GPU machine
    monkeypatch.setattr(ta, "is_torch_bf16_gpu_available", lambda: True)
    script, saev, train, model = _parse(path)
    assert train.bf16 and not train.use_cpu and train.gradient_checkpointing
    assert model.dtype == "bfloat16" and model.use_peft
    assert model.model_name_or_path in ("llava-hf/llava-v1.6-mistral-7b-hf", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert script.dataset_name in ("PKU-Alignment/align-anything", "openbmb/RLAIF-V-Dataset")
    if "align_anything" in path.name:
        assert script.dataset_config == "text-image-to-text"
    assert train.max_length == 4096 and train.seed == 42
    assert train.lr_scheduler_type == "cosine" and train.warmup_steps == pytest.approx(0.03)
    assert train.adam_beta2 == pytest.approx(0.95) and train.num_train_epochs == 3
    assert saev.n_reference == 1000 and saev.reference_seed == 42 and saev.delta == 1.0
    assert saev.score_max_length == 256 and saev.select_fraction == 0.5
    if path.name.startswith("dpo_"):
        assert train.beta == pytest.approx(0.1) and train.learning_rate == pytest.approx(5e-6)
        assert train.per_device_train_batch_size * train.gradient_accumulation_steps == 32
    assert isinstance(get_peft_config(model), LoraConfig)
    quant = get_quantization_config(model)
    if "qlora" in path.name:
        assert model.load_in_4bit and quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    else:
        assert quant is None


def test_deepspeed_zero2_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert str(cfg.distributed_type).endswith("DEEPSPEED") and cfg.deepspeed_config["zero_stage"] == 2
    assert cfg.mixed_precision == "bf16" and not cfg.use_cpu


def test_recipe_docstrings_and_arguments():
    from recipes import dpo, evaluate_policy, sft
    from saev_curate.recipes.common import SaevArguments
    from saev_curate.recipes.evaluate_policy import EvalArguments

    for mod in (dpo, sft):
        doc = mod.__doc__
        m = re.search(r"accelerate launch --config_file (\S+) (\S+) \\\s+--config (\S+)", doc)
        assert m, f"{mod.__name__}: no accelerate launch line"
        for rel in (m.group(1), m.group(2), m.group(3)):
            assert (ROOT / rel).is_file(), rel
    assert "results.json" in evaluate_policy.__doc__
    for cls in (SaevArguments, EvalArguments):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_entry_files_run_the_package_core():
    """One implementation: recipes/*.py (what users run) import the core installed with the package."""
    import saev_curate.recipes.dpo
    import saev_curate.recipes.evaluate_policy
    import saev_curate.recipes.sft
    from recipes import dpo, evaluate_policy, sft

    assert dpo.main is saev_curate.recipes.dpo.main and sft.main is saev_curate.recipes.sft.main
    assert evaluate_policy.evaluate is saev_curate.recipes.evaluate_policy.evaluate
    assert not (ROOT / "recipes" / "common.py").exists()


def test_issue24_item14_qwen_configs_bound_the_image_tokens(tmp_path, monkeypatch):
    """Every Qwen2.5-VL config sets max_pixels so the largest image (28 x 28 pixels per token after the 2 x 2 merge of
    14-pixel patches) plus the scoring text fits max_length; the recipe's processor applies it: a 2000 x 2000 image
    gives at most max_pixels / 784 image tokens."""
    import numpy as np
    import yaml
    from PIL import Image

    from saev_curate.recipes.common import load_model_and_processor

    configs = sorted(CONFIGS.glob("*qwen*"))
    assert len(configs) == 4
    for path in configs:
        doc = yaml.safe_load(path.read_text())
        assert doc["max_pixels"] == 1280 * 28 * 28, path.name
        assert doc["max_pixels"] // (28 * 28) + doc["score_max_length"] < doc["max_length"], path.name
    # the key the Qwen2-VL / Qwen2.5-VL image processor takes: a 2000 x 2000 image comes out at most max_pixels
    # / 784 tokens (grid t*h*w 14-pixel patches, merged 2 x 2), and without it far more
    from transformers import Qwen2VLImageProcessorPil

    limit = 64 * 28 * 28
    big = Image.fromarray(np.zeros((2000, 2000, 3), dtype=np.uint8))
    for kwargs, bound in (({"max_pixels": limit}, lambda n: 0 < n <= 64), ({}, lambda n: n > 64)):
        grid = Qwen2VLImageProcessorPil(**kwargs)(images=[big], return_tensors="pt")["image_grid_thw"][0]
        assert bound(int(grid.prod()) // 4), (kwargs, grid)
    # the recipe hands it to the processor (AutoProcessor.from_pretrained(..., max_pixels=...)), only when set
    import transformers

    from saev_curate.testing import save_tiny_vlm

    model_dir = save_tiny_vlm("llava", tmp_path / "llava", seed=0)
    seen = []
    real = transformers.AutoProcessor.from_pretrained

    def spy(*a, **k):
        seen.append({key: k[key] for key in k if key == "max_pixels"})
        return real(*a, **{key: v for key, v in k.items() if key != "max_pixels"})

    from types import SimpleNamespace

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", spy)
    model_args = SimpleNamespace(model_name_or_path=str(model_dir), model_revision="main", attn_implementation=None,
                                 dtype="float32", load_in_4bit=False, load_in_8bit=False, use_bnb_nested_quant=False)
    load_model_and_processor(model_args, SimpleNamespace(), max_pixels=limit)
    load_model_and_processor(model_args, SimpleNamespace())
    assert seen == [{"max_pixels": limit}, {}]

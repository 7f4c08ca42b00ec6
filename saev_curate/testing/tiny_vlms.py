"""Tiny vision-language models built from configs: random weights, a tokenizer trained on the fly.

They exist so that tests, benchmarks and demos exercise the *real* Hugging Face model classes and
processors of every supported family without downloading anything.  Nothing here is meant to give
meaningful outputs: the weights are random.  Everything is deterministic for a given ``seed``.

    model, processor = build_tiny_vlm("qwen2_vl", seed=0)
    model, processor = build_tiny_vlm("llava", hidden_size=512, num_hidden_layers=8)  # benchmark size

Families: ``llava``, ``llava_next``, ``qwen2_vl``, ``qwen2_5_vl``, ``idefics3``, ``gemma3``,
``paligemma``.  (SmolVLM's processor needs a torchvision video processor and ``num2words``; its
model shares Idefics3's architecture, which ``idefics3`` covers.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saev_curate.core.errors import InputError
from saev_curate.testing.tokenizer import CHAT_ROLES, chat_template, train_tokenizer
from saev_curate.vlm.load import without_video_processor

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "paligemma")

def _text_sizes(sizes: dict, defaults: dict) -> dict:
    out = dict(defaults)
    for k in list(sizes):
        if k in out:
            out[k] = sizes.pop(k)
    return out


_TEXT_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def build_tiny_vlm(family: str = "llava", *, seed: int = 0, **sizes: Any):
    """Build a randomly initialised vision-language model of ``family`` and its processor.

    ``sizes`` override the text model's config (``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``) and a few vision
    settings: ``image_size`` (pixels the image processor resizes to) and ``vision_hidden_size``.
    Returns ``(model, processor)``; the model is fp32, in eval mode, deterministic for ``seed``.
    """
    if family not in FAMILIES:
        raise InputError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")
    sizes = dict(sizes)
    text = _text_sizes(sizes, _TEXT_DEFAULTS)
    builder = globals()[f"_build_{family}"]
    model_config, processor = builder(text, sizes)
    if sizes:
        raise InputError(f"build_tiny_vlm({family!r}): unknown size settings {sorted(sizes)}")

    from transformers import AutoModelForImageTextToText

    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(model_config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(rng_state)
    model.eval()
    # Tie generation defaults to the tokenizer so generate() works in demos.
    tok = processor.tokenizer
    text_cfg = getattr(model.config, "text_config", None) or model.config
    for cfg in (text_cfg, model.generation_config):
        if cfg is not None:
            cfg.pad_token_id = tok.pad_token_id
            cfg.eos_token_id = tok.eos_token_id
            if tok.bos_token_id is not None:
                cfg.bos_token_id = tok.bos_token_id
    return model, processor


def save_tiny_vlm(family: str, path, *, seed: int = 0, **sizes: Any) -> Path:
    """Build a tiny model and ``save_pretrained`` it with its processor, so ``load_vlm(path)`` works."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_vlm(family, seed=seed, **sizes)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------
# Per-family builders: return (model config, processor).  Each keeps image token counts small.


def _vocab(tok) -> int:
    return len(tok)


def _llama_text(tok, text: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=_vocab(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        **text,
    )


def _clip_vision(sizes: dict, image_size: int, patch: int):
    from transformers import CLIPVisionConfig

    vh = sizes.pop("vision_hidden_size", 32)
    return CLIPVisionConfig(
        hidden_size=vh,
        intermediate_size=vh * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=vh,
    )


def _clip_image_processor(image_size: int, cls=None, **kw):
    from transformers import CLIPImageProcessorPil

    cls = cls or CLIPImageProcessorPil
    return cls(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        **kw,
    )


def _build_llava(text: dict, sizes: dict):
    from transformers import LlavaConfig, LlavaProcessor

    image_size = sizes.pop("image_size", 32)
    patch = sizes.pop("patch_size", 8)
    tok = train_tokenizer(["<pad>", "<s>", *CHAT_ROLES, "<image>"], vocab_size=400, bos="<s>",
                           extra={"extra_special_tokens": {"image_token": "<image>"}})
    config = LlavaConfig(
        vision_config=_clip_vision(sizes, image_size, patch),
        text_config=_llama_text(tok, text),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(image_size),
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n"),
    )
    return config, processor


def _build_llava_next(text: dict, sizes: dict):
    from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor

    image_size = sizes.pop("image_size", 16)
    patch = sizes.pop("patch_size", 8)
    pinpoints = [[image_size, image_size * 2], [image_size * 2, image_size], [image_size * 2, image_size * 2]]
    tok = train_tokenizer(["<pad>", "<s>", *CHAT_ROLES, "<image>"], vocab_size=400, bos="<s>",
                           extra={"extra_special_tokens": {"image_token": "<image>"}})
    config = LlavaNextConfig(
        vision_config=_clip_vision(sizes, image_size, patch),
        text_config=_llama_text(tok, text),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n"),
    )
    return config, processor


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def _build_qwen(text: dict, sizes: dict, *, v25: bool):
    from transformers import Qwen2VLImageProcessorPil

    patch = sizes.pop("patch_size", 8)
    min_px = sizes.pop("min_pixels", (patch * 4) ** 2)
    max_px = sizes.pop("max_pixels", (patch * 8) ** 2)
    vh = sizes.pop("vision_hidden_size", 32)
    tok = train_tokenizer(["<pad>", *CHAT_ROLES, *_QWEN_SPECIALS], vocab_size=400, bos=None)
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    # mrope sections must sum to head_dim // 2
    half = head_dim // 2
    t_sec = half // 4
    hw = (half - t_sec) // 2
    mrope = [half - 2 * hw, hw, hw]
    text_kw = dict(
        vocab_size=_vocab(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        tie_word_embeddings=False,
        **text,
    )
    if v25:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

        vision = dict(depth=2, hidden_size=vh, intermediate_size=vh * 2, num_heads=2, patch_size=patch,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text["hidden_size"],
                      window_size=patch * 4, fullatt_block_indexes=[1])
        config_cls, proc_base = Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    else:
        from transformers import Qwen2VLConfig, Qwen2VLProcessor

        vision = dict(depth=2, embed_dim=vh, hidden_size=text["hidden_size"], num_heads=2, mlp_ratio=2,
                      patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
        config_cls, proc_base = Qwen2VLConfig, Qwen2VLProcessor
    config = config_cls(
        text_config=text_kw,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2, min_pixels=min_px, max_pixels=max_px
    )
    processor = without_video_processor(proc_base)(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return config, processor


def _build_qwen2_vl(text: dict, sizes: dict):
    return _build_qwen(text, sizes, v25=False)


def _build_qwen2_5_vl(text: dict, sizes: dict):
    return _build_qwen(text, sizes, v25=True)


def _build_idefics3(text: dict, sizes: dict):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    tile = sizes.pop("image_size", 16)
    patch = sizes.pop("patch_size", 4)
    scale = sizes.pop("scale_factor", 2)
    vh = sizes.pop("vision_hidden_size", 32)
    rowcol = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<pad>", "<s>", *CHAT_ROLES, "<fake_token_around_image>", "<image>", "<end_of_utterance>",
                "<global-img>", *rowcol]
    tok = train_tokenizer(specials, vocab_size=450, bos="<s>")
    image_seq_len = int(((tile // patch) ** 2) / (scale**2))
    config = Idefics3Config(
        vision_config=dict(hidden_size=vh, intermediate_size=vh * 2, num_hidden_layers=2, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=dict(_llama_text(tok, text).to_dict()),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": tile * 2},
        max_image_size={"longest_edge": tile},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=image_seq_len,
        chat_template=chat_template("<image>"),
    )
    return config, processor


def _build_gemma3(text: dict, sizes: dict):
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    image_size = sizes.pop("image_size", 16)
    patch = sizes.pop("patch_size", 4)
    tokens_per_image = sizes.pop("mm_tokens_per_image", 4)
    vh = sizes.pop("vision_hidden_size", 32)
    specials = ["<pad>", "<bos>", *CHAT_ROLES, "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = train_tokenizer(
        specials, vocab_size=400, bos="<bos>",
        extra={"extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                        "image_token": "<image_soft_token>"}},
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text_cfg = dict(
        vocab_size=_vocab(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        head_dim=text["hidden_size"] // text["num_attention_heads"],
        sliding_window=8,
        layer_types=None,
        **text,
    )
    config = Gemma3Config(
        text_config=text_cfg,
        vision_config=dict(hidden_size=vh, intermediate_size=vh * 2, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch, vision_use_head=False),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=tokens_per_image,
        chat_template=chat_template("<start_of_image>"),
    )
    return config, processor


def _build_paligemma(text: dict, sizes: dict):
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessorPil

    image_size = sizes.pop("image_size", 16)
    patch = sizes.pop("patch_size", 4)
    vh = sizes.pop("vision_hidden_size", 32)
    tok = train_tokenizer(["<pad>", "<bos>", *CHAT_ROLES, "<image>"], vocab_size=400, bos="<bos>",
                           extra={"extra_special_tokens": {"image_token": "<image>"}})
    num_image_tokens = (image_size // patch) ** 2
    text_cfg = dict(
        model_type="gemma",
        vocab_size=_vocab(tok) + 1024 + 128,  # PaliGemmaProcessor adds <loc>/<seg> tokens
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        head_dim=text["hidden_size"] // text["num_attention_heads"],
        **text,
    )
    config = PaliGemmaConfig(
        text_config=text_cfg,
        vision_config=dict(hidden_size=vh, intermediate_size=vh * 2, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch, projection_dim=text["hidden_size"],
                           vision_use_head=False),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projection_dim=text["hidden_size"],
    )
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = num_image_tokens
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok,
                                   chat_template=chat_template("<image>"))
    return config, processor

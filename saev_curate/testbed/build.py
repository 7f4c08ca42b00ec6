"""Build (or reuse) the testbed: a small LLaVA whose image tokens speak its language's concepts.

Offline, on a CPU, in a few minutes, deterministic for a seed; cached under
``$SAEV_CACHE/testbed/<name>`` (default ``~/.cache/saev-curate``) with ``save_pretrained`` so
``saev_curate.load_vlm(path)`` loads it.  Trained like LLaVA, in three stages:

0. the vision tower (a CLIP ViT from config: 32x32 images, 8x8 patches -> 16 image tokens) learns
   to classify what images show (kind, digit, shape, colour, count, size, the sides the shapes lie on,
   brightness; random shifts of up to 1 pixel, which keeps a shape in its grid cell),
   as CLIP is pretrained first; then it is frozen, as LLaVA freezes its CLIP tower;
1. alignment: projector + language model learn captions, interleaved facts (the image where a word
   would be) and plain text of the language (:mod:`saev_curate.testbed.language`);
2. instruction: chat-formatted questions with one-word or sentence answers and descriptions that state
   every fact of the image (loss on the answer), with some stage-1 text replayed, in length-bucketed
   batches (a batch pads to a length close to its own); the yes/no checks that compare a word with the
   image ("is this a seven ?") are
   asked 5x as often as other questions (``claim_weight``): their answer is an XOR of question and image,
   which sat at chance for 800 steps at weight 1 and starts to be learned after ~800 steps at weight 3-5.

Text tower: a 6-layer Llama (hidden 256) trained here.  Why not the pretrained SmolLM2-135M: the
MNIST build with SmolLM2 took 18.7 min for one question type (frozen tower, 300 steps), and its
30 layers of width 576 cost ~25x more per token than this tower, which the alignment study's many
DPO runs cannot afford on two cores.  ``build_info.json`` holds the held-out accuracy per
question type, the loss curves and the times.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from saev_curate.testbed import images as timg
from saev_curate.testbed import language as lang
from saev_curate.testbed.evaluate import evaluate_accuracy, evaluate_descriptions, heldout_descriptions, heldout_questions

BUILD_VERSION = 4
PATCH = 8
N_IMAGE_TOKENS = (timg.SIZE // PATCH) ** 2


@dataclass
class TestbedConfig:
    """What the testbed build trains; every field is part of the cache key."""

    seed: int = 0
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    vision_hidden_size: int = 128
    vision_layers: int = 3
    n_train_images: int = 12000
    stage0_epochs: int = 6
    stage1_steps: int = 300
    stage2_steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    #: how much more often the instruction stage asks the yes/no checks that compare a word with the image
    #: (digit claim, parity, scene claim) than other questions: their answer is an XOR of question and image,
    #: which has no first-order gradient signal and stays at chance for hundreds of steps at weight 1
    claim_weight: float = 5.0
    #: share of instruction examples that ask for a description ("describe the image .") and share of the
    #: remaining questions answered in a sentence
    describe_share: float = 0.35
    sentence_share: float = 0.2
    #: question types left out of the instruction stage (a base with room to improve, for studies);
    #: ``"describe"`` leaves out the descriptions
    holdout_qtypes: tuple[str, ...] = field(default_factory=tuple)
    #: facts that the instruction stage's descriptions state without looking (a value drawn at random, as an
    #: annotator writing from priors would): a base that knows a fact (its questions are taught) but states it
    #: at random in descriptions, the language-prior hallucination that preference data is built to remove
    ungrounded_facts: tuple[str, ...] = field(default_factory=tuple)

    def name(self) -> str:
        """The cache folder name: ``default`` for the defaults of a seed, else a short hash."""
        base = TestbedConfig(seed=self.seed)
        if self == base:
            return f"v{BUILD_VERSION}-seed{self.seed}"
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=list).encode()).hexdigest()[:10]
        return f"v{BUILD_VERSION}-seed{self.seed}-{h}"


#: the base of the alignment study and of ``saev-curate pipeline``: a model with room to improve, whose descriptions
#: state a scene's count and a digit's parity without looking although its questions taught both from the image
#: (:attr:`TestbedConfig.ungrounded_facts`), so it knows the facts and still hallucinates them in long answers
ALIGNMENT_BASE = TestbedConfig(stage2_steps=800, ungrounded_facts=("count", "parity"))


def default_cache_root() -> Path:
    return Path(os.environ.get("SAEV_CACHE") or Path.home() / ".cache" / "saev-curate") / "testbed"


def testbed_path(config: TestbedConfig | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    config = config or TestbedConfig()
    return Path(cache_dir) if cache_dir is not None else default_cache_root() / config.name()


def is_built(path: str | os.PathLike, config: TestbedConfig | None = None) -> bool:
    """A finished, intact build of ``config`` lies at ``path``."""
    return build_problem(path, config) is None


def build_problem(path: str | os.PathLike, config: TestbedConfig | None = None) -> str | None:
    """Why ``path`` does not hold a finished, intact build of ``config`` (None when it does): every file the build
    wrote is checked against the SHA-256 recorded in ``build_info.json``, so a truncated or damaged cache is found."""
    path = Path(path)
    try:
        meta = json.loads((path / "build_info.json").read_text())
    except (OSError, ValueError):
        return "no readable build_info.json"
    if meta.get("build_version") != BUILD_VERSION or meta.get("config") != _config_doc(config or TestbedConfig()):
        return "another build version or configuration"
    files = meta.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return "no file digests recorded (a build from an older version)"
    for name, digest in files.items():
        f = path / name
        if not f.is_file() or _sha256(f) != digest:
            return f"{name} is missing or differs from the build's record"
    return None


def _config_doc(cfg: TestbedConfig) -> dict:
    """``cfg`` as ``build_info.json`` stores it (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Model + processor


def build_untrained(cfg: TestbedConfig):
    """``(model, processor)`` with random weights (deterministic for ``cfg.seed``)."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = lang.build_tokenizer()
    text = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                       num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=512,
                       tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    vision = CLIPVisionConfig(image_size=timg.SIZE, patch_size=PATCH, num_channels=3,
                              hidden_size=cfg.vision_hidden_size, intermediate_size=4 * cfg.vision_hidden_size,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=4,
                              projection_dim=cfg.vision_hidden_size)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(lang.IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(rng)
    for c in (model.config.text_config, model.generation_config):
        c.pad_token_id, c.eos_token_id, c.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    model.generation_config.do_sample = False
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": timg.SIZE},
                                              crop_size={"height": timg.SIZE, "width": timg.SIZE}),
        tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=lang.CHAT_TEMPLATE)
    return model, processor


# ----------------------------------------------------------------------------------------------
# Training sequences: (text with <image> markers, index where the loss starts, images)


class _Encoder:
    """Token ids of marked-up text, with each ``<image>`` expanded to the image's 16 tokens."""

    def __init__(self, processor):
        self.tok = processor.tokenizer
        self.processor = processor
        self.image_id = self.tok.convert_tokens_to_ids(lang.IMAGE_TOKEN)

    def ids(self, text: str) -> list[int]:
        return self.tok(text.replace(lang.IMAGE_TOKEN, lang.IMAGE_TOKEN * N_IMAGE_TOKENS),
                        add_special_tokens=False)["input_ids"]

    def chat(self, question: str, answer: str, image: bool) -> tuple[list[int], int]:
        prompt = self.processor.apply_chat_template(lang.chat_prompt(question, image=image), tokenize=False,
                                                    add_generation_prompt=True)
        p = self.ids(prompt)
        return p + self.ids(answer + " <|im_end|>"), len(p)


def _stage1_example(enc: _Encoder, item, rng) -> tuple[list[int], int, list]:
    img, c = item
    r = rng.rand()
    bos, eos = "<|im_start|> ", " <|im_end|>"
    if r < 0.45:
        ids = enc.ids(bos + lang.IMAGE_TOKEN + " " + lang.caption(c, rng) + eos)
        return ids, 1, [img]
    word, with_image = lang.interleaved(c, rng)
    if r < 0.8:
        return enc.ids(bos + with_image + eos), 1, [img]
    if r < 0.9:
        return enc.ids(bos + word + eos), 1, []
    q = lang.text_only_question(rng)
    return enc.ids(bos + q["question"] + " " + q["answer"] + eos), 1, []


CLAIM_QTYPES = ("digit_claim", "digit_parity", "scene_claim")


def _stage2_example(enc: _Encoder, item, rng, holdout: tuple[str, ...], claim_weight: float = 1.0,
                    describe_share: float = 0.0, sentence_share: float = 0.0,
                    ungrounded: tuple[str, ...] = ()) -> tuple[list[int], int, list]:
    img, c = item
    r = rng.rand()
    if r < 0.1:
        return _stage1_example(enc, item, rng)
    if r < 0.18:
        q = lang.text_only_question(rng)
        ids, start = enc.chat(q["question"], q["answer"], image=False)
        return ids, start, []
    if r < 0.18 + describe_share * 0.82 and "describe" not in holdout:
        ids, start = enc.chat(lang.DESCRIBE_PROMPTS[rng.randint(len(lang.DESCRIBE_PROMPTS))],
                              lang.describe(c, ungrounded, rng), image=True)
        return ids, start, [img]
    fits = [t for t in lang.QTYPES if lang.fits(t, c) and t not in holdout]
    if not fits:
        return _stage1_example(enc, item, rng)
    w = np.asarray([claim_weight if t in CLAIM_QTYPES else 1.0 for t in fits])
    q = lang.question(c, rng, fits[rng.choice(len(fits), p=w / w.sum())])
    if rng.rand() < sentence_share:
        q = lang.sentence_question(q)
    ids, start = enc.chat(q["question"], q["answer"], image=True)
    return ids, start, [img]


def _collate(examples, pad_id: int, pixel_of) -> dict:
    T = max(len(e[0]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    pix = []
    for i, (seq, start, imgs) in enumerate(examples):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        lab = torch.tensor(seq[start:])
        lab[lab == pad_id] = -100
        labels[i, start:len(seq)] = lab
        pix.extend(pixel_of(im) for im in imgs)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if pix:
        out["pixel_values"] = torch.stack(pix)
    return out


def _lm_loss(model, batch, image_id: int) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch.get("pixel_values"))
    logits = out.logits[:, :-1]
    target = batch["labels"][:, 1:].clone()
    target[target == image_id] = -100
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


def _schedule(opt, total: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))


def _step(loss: torch.Tensor, opt, sched, losses: list[float], bar, clip=None) -> None:
    """One optimizer step (gradient norm clipped to 1 when ``clip`` names the parameters) + progress."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())
    bar.update()
    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")


def _targets(concepts: list) -> dict[str, torch.Tensor]:
    return {
        "kind": torch.tensor([timg.KINDS.index(c.kind) for c in concepts]),
        "digit": torch.tensor([c.digit if c.digit is not None else -100 for c in concepts]),
        "shape": torch.tensor([timg.SHAPES.index(c.shape) if c.shape else -100 for c in concepts]),
        "colour": torch.tensor([list(timg.COLOURS).index(c.colour) if c.colour else -100 for c in concepts]),
        "count": torch.tensor([c.count - 1 if c.count else -100 for c in concepts]),
        "size": torch.tensor([timg.SIZES.index(c.size) if c.size else -100 for c in concepts]),
        "brightness": torch.tensor([timg.BRIGHTNESS.index(c.brightness) if c.brightness else -100 for c in concepts]),
        **{side: torch.tensor([int(side in c.position) if c.position is not None else -100 for c in concepts])
           for side in timg.SIDES},
    }


def _stage0(model, pv: torch.Tensor, concepts: list, cfg: TestbedConfig, log, processor_of_dev) -> dict:
    """Pretrain the vision tower as a multi-head classifier of what images show (heads discarded)."""
    from tqdm.auto import tqdm

    vt = model.model.vision_tower
    H = cfg.vision_hidden_size
    heads = torch.nn.ModuleDict({"kind": torch.nn.Linear(H, len(timg.KINDS)), "digit": torch.nn.Linear(H, 10),
                                 "shape": torch.nn.Linear(H, 3), "colour": torch.nn.Linear(H, 4),
                                 "count": torch.nn.Linear(H, timg.MAX_COUNT), "size": torch.nn.Linear(H, 2),
                                 "brightness": torch.nn.Linear(H, 2),
                                 **{side: torch.nn.Linear(H, 2) for side in timg.SIDES}})
    tgt = _targets(concepts)
    params = list(vt.parameters()) + list(heads.parameters())
    bs = 64
    steps = cfg.stage0_epochs * (len(concepts) // bs)
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    sched = _schedule(opt, steps, 30)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    vt.train()
    g_shift = torch.Generator().manual_seed(cfg.seed + 2)
    bar = tqdm(total=steps, desc="testbed stage 0: vision tower", unit="step", file=sys.stdout, mininterval=2.0)
    losses = []
    for _ in range(cfg.stage0_epochs):
        order = torch.randperm(len(concepts), generator=g)
        for b in range(len(concepts) // bs):
            j = order[b * bs:(b + 1) * bs]
            f = vt(pixel_values=_shift(pv[j], 1, g_shift)).last_hidden_state[:, 1:].mean(1)
            loss = sum(torch.nn.functional.cross_entropy(h(f), tgt[k][j], ignore_index=-100)
                       for k, h in heads.items() if bool((tgt[k][j] >= 0).any()))
            _step(loss, opt, sched, losses, bar)
    bar.close()
    vt.eval()
    for p in vt.parameters():  # frozen from here on, as LLaVA freezes its CLIP tower
        p.requires_grad_(False)
    acc = _probe_accuracy(vt, heads, processor_of_dev)
    log(f"stage 0: final loss {np.mean(losses[-20:]):.4f}; dev accuracy of the heads " +
        ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    return {"final_loss": float(np.mean(losses[-20:])), "steps": steps, "dev_head_accuracy": acc}


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (edges replicated): cheap, label-safe augmentation."""
    B, _, H, W = x.shape
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=g).tolist()
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=g).tolist()
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


@torch.no_grad()
def _probe_accuracy(vt, heads, dev) -> dict[str, float]:
    """Accuracy of the stage-0 heads on dev images (how well the frozen tower sees each concept)."""
    pv, tgt = dev
    f = vt(pixel_values=pv).last_hidden_state[:, 1:].mean(1)
    out = {}
    for k, h in heads.items():
        keep = tgt[k] >= 0
        out[k] = float((h(f[keep]).argmax(-1) == tgt[k][keep]).float().mean()) if bool(keep.any()) else float("nan")
    return out


def _length_buckets(make, steps: int, batch_size: int, *, rng: np.random.RandomState, group: int = 8):
    """``steps`` batches of examples from ``make()``: each ``group`` batches are drawn together, sorted by
    length and cut, so a batch pads to a length close to its own (descriptions beside one-word answers
    would pad every short example to the longest); the group's batches come in a random order."""
    for s in range(0, steps, group):
        n = min(group, steps - s)
        examples = sorted((make() for _ in range(n * batch_size)), key=lambda e: len(e[0]))
        for b in rng.permutation(n):
            yield examples[b * batch_size:(b + 1) * batch_size]


def _train_lm(model, stage: str, make, steps: int, cfg: TestbedConfig, enc: _Encoder, pixel_of, log) -> dict:
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    sched = _schedule(opt, steps, 30)
    model.train()
    bar = tqdm(total=steps, desc=f"testbed {stage}", unit="step", file=sys.stdout, mininterval=2.0)
    losses = []
    for batch in _length_buckets(make, steps, cfg.batch_size, rng=np.random.RandomState(cfg.seed)):
        batch = _collate(batch, enc.tok.pad_token_id, pixel_of)
        loss = _lm_loss(model, batch, enc.image_id)
        _step(loss, opt, sched, losses, bar, clip=model.parameters())
    bar.close()
    model.eval()
    final = float(np.mean(losses[-20:]))
    log(f"{stage}: final loss {final:.4f}")
    return {"final_loss": final, "steps": steps,
            "loss_curve": [round(float(np.mean(losses[i:i + 20])), 4) for i in range(0, len(losses), 20)]}


# ----------------------------------------------------------------------------------------------
# Entry point


def build_testbed(config: TestbedConfig | None = None, *, cache_dir: str | os.PathLike | None = None,
                  force: bool = False, verbose: bool = True) -> Path:
    """Return the folder of the testbed model for ``config``, building it first when missing."""
    cfg = config or TestbedConfig()
    bad = set(cfg.holdout_qtypes) - {*lang.QTYPES, "describe"}
    if bad:
        raise ValueError(f"holdout_qtypes has unknown question types {sorted(bad)}; use {', '.join(lang.QTYPES)} "
                         "or describe")
    for f in cfg.ungrounded_facts:
        lang.any_value(f, np.random.RandomState(0))  # an InputError naming the facts that can be drawn
    path = testbed_path(cfg, cache_dir)
    log = print if verbose else (lambda *a, **k: None)
    problem = build_problem(path, cfg)
    if not force and problem is None:
        return path
    if path.exists():
        log(f"the cached testbed at {path} cannot be used ({problem}); rebuilding it")
    from saev_curate.vlm import load_vlm

    t0 = time.perf_counter()
    log(f"building the testbed model ({cfg.name()}) -> {path}")
    tmp = path.with_name(path.name + ".tmp")  # finished stages are kept here: a rerun resumes after them
    tmp.mkdir(parents=True, exist_ok=True)
    model, processor = build_untrained(cfg)
    enc = _Encoder(processor)
    train = timg.sample_images("train", cfg.n_train_images, seed=cfg.seed)
    pv = processor.image_processor([im for im, _ in train], return_tensors="pt")["pixel_values"]
    pix_index = {id(im): i for i, (im, _) in enumerate(train)}
    pixel_of = lambda im: pv[pix_index[id(im)]]  # noqa: E731

    def dev_probe():
        dev = timg.sample_images("dev", 1000, seed=cfg.seed)
        return (processor.image_processor([im for im, _ in dev], return_tensors="pt")["pixel_values"],
                _targets([c for _, c in dev]))

    stages = [
        ("stage0", lambda: _stage0(model, pv, [c for _, c in train], cfg, log, dev_probe())),
        ("stage1", lambda: _train_lm(model, "stage 1: alignment", lambda: _stage1_example(enc, pick(), rng),
                                     cfg.stage1_steps, cfg, enc, pixel_of, log)),
        ("stage2", lambda: _train_lm(model, "stage 2: instruction",
                                     lambda: _stage2_example(enc, pick(), rng, cfg.holdout_qtypes,
                                                             cfg.claim_weight, cfg.describe_share,
                                                             cfg.sentence_share, cfg.ungrounded_facts),
                                     cfg.stage2_steps, cfg, enc, pixel_of, log)),
    ]
    info_stages: dict[str, dict] = {}
    rng_state = torch.random.get_rng_state()
    try:
        for i, (name, run) in enumerate(stages):
            done = tmp / f"{name}.safetensors"
            if done.is_file():
                from safetensors.torch import load_model

                load_model(model, str(done))
                if name == "stage0":
                    for p in model.model.vision_tower.parameters():
                        p.requires_grad_(False)
                info_stages[name] = json.loads((tmp / f"{name}.json").read_text())
                log(f"{name}: reusing the finished stage in {tmp}")
                continue
            torch.manual_seed(cfg.seed * 1000 + i)  # each stage seeded alone, so a resumed build is the same
            rng = np.random.RandomState([cfg.seed, 5, i])

            def pick(rng=rng):
                return train[rng.randint(len(train))]

            t = time.perf_counter()
            info_stages[name] = {**run(), "seconds": round(time.perf_counter() - t, 1)}
            from safetensors.torch import save_model  # handles the tied embedding / lm_head

            save_model(model, str(done))
            (tmp / f"{name}.json").write_text(json.dumps(info_stages[name]))
    finally:
        torch.random.set_rng_state(rng_state)
    model.eval()

    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    model, processor = load_vlm(tmp, device="cpu")
    acc = evaluate_accuracy(model, processor, heldout_questions(100, seed=0))
    log("held-out accuracy (likelihood over options / greedy): " +
        ", ".join(f"{q} {v['likelihood']:.2f}/{v['greedy']:.2f}" for q, v in acc.items()))
    desc = evaluate_descriptions(model, processor, heldout_descriptions(200, seed=0))
    log(f"held-out descriptions: hallucination rate {desc['hallucination_rate']:.3f}, recall {desc['recall']:.3f}")
    info = {"build_version": BUILD_VERSION, "config": _config_doc(cfg), "heldout_accuracy": acc,
            "heldout_descriptions": {k: desc[k] for k in ("hallucination_rate", "recall", "exact", "by_kind")},
            "image_tokens_per_image": N_IMAGE_TOKENS,
            "params": {"text": sum(p.numel() for p in model.model.language_model.parameters()),
                       "vision": sum(p.numel() for p in model.model.vision_tower.parameters()),
                       "projector": sum(p.numel() for p in model.model.multi_modal_projector.parameters())},
            **info_stages, "threads": torch.get_num_threads(),
            "seconds": {"total_this_run": round(time.perf_counter() - t0, 1)}}
    for f in tmp.glob("stage*"):
        f.unlink()
    info["files"] = {f.name: _sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    log(f"testbed built in {info['seconds']['total_this_run'] / 60:.1f} min at {path}")
    return path

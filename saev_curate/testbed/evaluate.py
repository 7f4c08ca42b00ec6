"""Held-out accuracy of a testbed model per question type: by likelihood over the type's answer options,
and greedy (all answers are one word), on questions over images the model never trained on."""

from __future__ import annotations

import numpy as np
import torch

from saev_curate.testbed import images as timg
from saev_curate.testbed import language as lang


def answer_options(qtype: str) -> list[str]:
    """The answer words a question type chooses among (accuracy by likelihood is over these)."""
    if qtype in ("digit_identity",):
        return list(lang.NUMBERS)
    if qtype == "count":
        return list(lang.NUMBERS[1:timg.MAX_COUNT + 1])
    if qtype == "colour":
        return list(timg.COLOURS)
    if qtype == "shape":
        return list(timg.SHAPES)
    if qtype == "kind":
        return list(lang.KIND_WORD.values())
    if qtype == "text_only":
        return list(lang.NUMBERS) + ["yes", "no"]
    return ["yes", "no"]


def heldout_questions(n_per_type: int = 100, *, seed: int = 0, split: str = "test") -> list[dict]:
    """Question rows over held-out images, ``n_per_type`` of each image question type.

    Each row: ``question``, ``image`` (PIL), ``answer``, ``options``, ``qtype`` and the image's
    ``concept`` (a dict) - the shape ``recipes/evaluate.py`` reads.
    """
    rng = np.random.RandomState([seed, 31])
    items = timg.sample_images(split, 40 * n_per_type, seed=seed + 1000)
    by_kind: dict[str, list] = {}
    for it in items:
        by_kind.setdefault(it[1].kind, []).append(it)
    rows = []
    for qtype in lang.QTYPES[:-1]:
        pool = [it for it in items if lang.fits(qtype, it[1])]
        for i in range(n_per_type):
            img, c = pool[(i * 7 + lang.QTYPES.index(qtype)) % len(pool)]
            q = lang.question(c, rng, qtype)
            rows.append({"question": q["question"], "image": img, "answer": q["answer"],
                         "options": answer_options(qtype), "qtype": qtype, "concept": c.to_dict()})
    return rows


@torch.no_grad()
def evaluate_accuracy(model, processor, rows: list[dict], *, batch_size: int = 64) -> dict:
    """Accuracy per question type: by likelihood over the type's answer options, and greedy (argmax
    over the whole vocabulary at the answer position; all answers are one word)."""
    from saev_curate.vlm import prepare_batch

    tok = processor.tokenizer
    per: dict[str, list[tuple[bool, bool]]] = {}
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        batch_rows = [{"messages": lang.chat_prompt(r["question"], image=r.get("image") is not None),
                       "images": [r["image"]] if r.get("image") is not None else []} for r in chunk]
        pb = prepare_batch(processor, batch_rows, mode="prompt", padding_side="left")
        logits = model(**pb.inputs).logits[:, -1]
        for i, r in enumerate(chunk):
            opts = tok.convert_tokens_to_ids(r["options"])
            like = r["options"][int(logits[i, opts].argmax())] == r["answer"]
            greedy = tok.convert_ids_to_tokens(int(logits[i].argmax())) == r["answer"]
            per.setdefault(r["qtype"], []).append((like, greedy))
    out = {q: {"likelihood": float(np.mean([a for a, _ in v])), "greedy": float(np.mean([g for _, g in v])),
               "n": len(v)} for q, v in per.items()}
    allv = [x for v in per.values() for x in v]
    out["all"] = {"likelihood": float(np.mean([a for a, _ in allv])), "greedy": float(np.mean([g for _, g in allv])),
                  "n": len(allv)}
    return out

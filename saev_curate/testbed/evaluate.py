"""Held-out evaluation of a testbed model on images it never trained on: accuracy per question type (by
likelihood over the type's answer options, and greedy: all answers are one word), greedy sentence answers,
and CHAIR-style scores of greedy descriptions (hallucination rate = share of stated facts that are false;
recall = share of the image's facts that are stated), which the closed language makes exact."""

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
    ``concept`` (a dict) - the shape ``recipes/evaluate_policy.py`` reads.
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


def _prompts(processor, rows: list[dict]):
    """``rows`` (``question``, optional ``image``) as one left-padded batch of chat prompts."""
    from saev_curate.vlm import prepare_batch

    return prepare_batch(processor, [{"messages": lang.chat_prompt(r["question"], image=r.get("image") is not None),
                                      "images": [r["image"]] if r.get("image") is not None else []} for r in rows],
                         mode="prompt", padding_side="left")


@torch.no_grad()
def evaluate_accuracy(model, processor, rows: list[dict], *, batch_size: int = 64) -> dict:
    """Accuracy per question type: by likelihood over the type's answer options, and greedy (argmax
    over the whole vocabulary at the answer position; all answers are one word)."""
    tok = processor.tokenizer
    per: dict[str, list[tuple[bool, bool]]] = {}
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        pb = _prompts(processor, chunk)
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


def heldout_descriptions(n: int = 200, *, seed: int = 0, split: str = "test") -> list[dict]:
    """``n`` description requests over held-out images: ``question`` (a describe prompt), ``image``, ``answer``
    (the full true description), ``qtype`` ``"describe"`` and the image's ``concept`` (a dict)."""
    rng = np.random.RandomState([seed, 37])
    return [{"question": lang.DESCRIBE_PROMPTS[rng.randint(len(lang.DESCRIBE_PROMPTS))], "image": img,
             "answer": lang.describe(c), "qtype": "describe", "concept": c.to_dict()}
            for img, c in timg.sample_images(split, n, seed=seed + 2000)]


@torch.no_grad()
def generate(model, processor, rows: list[dict], *, max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """Greedy answers to ``rows`` (``question`` + ``image``), decoded up to the end of the turn."""
    tok = processor.tokenizer
    out: list[str] = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        pb = _prompts(processor, chunk)
        seq = model.generate(**pb.inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for s in seq[:, pb.inputs["input_ids"].shape[1]:].tolist():
            s = s[:s.index(tok.eos_token_id)] if tok.eos_token_id in s else s
            out.append(" ".join(tok.convert_ids_to_tokens(s)))
    return out


def description_scores(text: str, concept: timg.Concept) -> dict:
    """CHAIR-style counts of one description: facts stated, false ones (an unparsed sentence counts as one
    false statement), and the image's true facts that it states."""
    stated = lang.parse_facts(text)
    true = [f for f, v in stated if lang.fact_is_true(f, v, concept)]
    truth = lang.true_facts(concept)
    return {"stated": len(stated), "false": len(stated) - len(true), "true_facts": len(truth),
            "recalled": len(set(true) & set(truth))}


def evaluate_descriptions(model, processor, rows: list[dict], *, batch_size: int = 64) -> dict:
    """Hallucination rate and recall of greedy descriptions of ``rows`` (:func:`heldout_descriptions`), overall and
    per image kind, with a few examples and each image's counts (``per_image``: :func:`description_scores`)."""
    texts = generate(model, processor, rows, batch_size=batch_size)
    per: dict[str, list[dict]] = {}
    per_image = []
    examples = []
    for r, t in zip(rows, texts):
        c = timg.Concept.from_dict(r["concept"])
        sc = description_scores(t, c)
        per.setdefault(c.kind, []).append(sc)
        per_image.append(sc)
        if len(examples) < 8:
            examples.append({"kind": c.kind, "truth": r["answer"], "generated": t, **sc})

    def agg(v: list[dict]) -> dict:
        stated = sum(x["stated"] for x in v)
        return {"hallucination_rate": sum(x["false"] for x in v) / max(stated, 1),
                "recall": sum(x["recalled"] for x in v) / max(sum(x["true_facts"] for x in v), 1),
                "exact": float(np.mean([x["false"] == 0 and x["recalled"] == x["true_facts"] for x in v])),
                "n": len(v)}

    return {**agg(per_image), "by_kind": {k: agg(v) for k, v in sorted(per.items())}, "examples": examples,
            "per_image": per_image}


def evaluate_sentence_answers(model, processor, rows: list[dict], *, batch_size: int = 64) -> dict:
    """Greedy accuracy per question type when the answer is asked for in a sentence (the exact sentence)."""
    asked = [{**r, **lang.sentence_question({"qtype": r["qtype"], "question": r["question"], "answer": r["answer"],
                                             "wrong": r["answer"]})} for r in rows]
    texts = generate(model, processor, asked, batch_size=batch_size, max_new_tokens=12)
    per: dict[str, list[bool]] = {}
    for r, t in zip(asked, texts):
        per.setdefault(r["qtype"], []).append(t.strip() == r["answer"])
    return {q: float(np.mean(v)) for q, v in per.items()}

"""ResponsePerplexityScorer against a brute-force forward pass, one row at a time: ``ppl`` (mean over the
response's tokens) and the least likely content token (``min_token_logprob`` / ``_index`` / ``_text``)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from saev_curate.curation.agreement import template_token_ids
from saev_curate.curation.scorers import ResponsePerplexityScorer

WORDS = "a photo of a cat sitting on a red sofa the dog runs across the green field how many apples".split()


def msg(role: str, text: str, image: bool = False) -> list[dict]:
    return [{"role": role, "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        rows.append({"prompt": msg("user", " ".join(rng.choice(WORDS, 2 + 3 * i)), image=True), "images": [img],
                     "chosen": msg("assistant", " ".join(rng.choice(WORDS, 1 + 4 * i))),  # lengths differ: padding
                     "rejected": msg("assistant", " ".join(rng.choice(WORDS, 3)))})
    return rows


@torch.no_grad()
def brute_force(model, processor, row: dict) -> tuple[list[float], list[int]]:
    """Log p of each response token (given image, prompt and earlier response tokens), and the tokens' ids."""
    full = processor.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    prompt = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=full, images=row["images"], return_tensors="pt")
    n_prompt = processor(text=prompt, images=row["images"], return_tensors="pt")["input_ids"].shape[1]
    ids = inputs["input_ids"][0]
    lp = torch.log_softmax(model(**inputs).logits[0].double(), -1)
    return [float(lp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))], ids[n_prompt:].tolist()


def test_min_token_logprob_and_ppl_match_a_brute_force_forward_pass(tiny_vlm):
    model, processor = tiny_vlm("llava")
    rows = make_rows(4, seed=3)
    scorer = ResponsePerplexityScorer(model, processor)
    state = pickle.dumps(scorer)
    out = scorer(rows)
    assert pickle.dumps(scorer) == state  # the cached template ids are not part of the pickled state
    template, tok = template_token_ids(processor), processor.tokenizer
    for i, row in enumerate(rows):
        lps, ids = brute_force(model, processor, row)
        content = [k for k, t in enumerate(ids) if t not in template]
        assert content and len(content) < len(ids)  # the template's end-of-turn tokens are response tokens too
        best = min(content, key=lambda k: lps[k])
        assert out["saev_ppl_error"][i] is None
        assert out["saev_ppl"][i] == pytest.approx(math.exp(-sum(lps) / len(lps)), rel=1e-4)
        assert out["saev_min_token_logprob"][i] == pytest.approx(lps[best], abs=1e-4)
        k = out["saev_min_token_index"][i]
        assert k in content and lps[k] == pytest.approx(lps[best], abs=1e-4)  # == best unless a near-tie
        assert out["saev_min_token_text"][i] == tok.decode([ids[k]]).strip() != ""
    assert len({len(brute_force(model, processor, r)[1]) for r in rows}) == len(rows)


def test_a_response_of_template_tokens_only_gets_none_and_a_reason(tiny_vlm):
    model, processor = tiny_vlm("llava")
    rows = make_rows(2, seed=1)
    rows[1]["chosen"] = msg("assistant", "")  # renders as the template's end-of-turn tokens only
    _, ids = brute_force(model, processor, rows[1])
    assert ids and set(ids) <= template_token_ids(processor)
    out = ResponsePerplexityScorer(model, processor)(rows)
    assert out["saev_min_token_logprob"][0] is not None and out["saev_ppl_error"][0] is None
    assert out["saev_ppl"][1] is not None and out["saev_ppl"][1] > 1  # ppl is still computed
    assert [out[f"saev_min_token_{c}"][1] for c in ("logprob", "index", "text")] == [None, None, None]
    assert "no content token" in out["saev_ppl_error"][1]

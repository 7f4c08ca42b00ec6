"""The agreement columns beyond the paper (content-token score, grounding, response grounding margin,
image-only control, per-feature δ) against a brute-force recomputation with loops.

The brute force finds content tokens by *position*, from the tiny LLaVA's chat template as written
("<|user|>\\n" image "\\n" text "<|end|>\\n<|assistant|>\\n" [response "<|end|>\\n"]): the user's words
are the tokens between the newline after the last image token and the next "<|end|>", the response's those between
"<|assistant|>\\n" and the "<|end|>" after it.  The library finds them from a set of template token
ids; both must agree, and every sum is recomputed token by token, feature by feature.
"""

from __future__ import annotations

import math

import pytest
import torch
from scoring_rows import LAYER, fitted  # noqa: E402

from saev_curate.curation.capture import capture_rows
from saev_curate.curation.crossmodal import CrossModalWeights
from saev_curate.curation.scorers import SaevScorer

CONTROL = "describe the image"


@pytest.fixture(scope="module")
def setup(tiny_vlm):
    model, processor, sae, weights, rows = fitted(tiny_vlm, 10, seed=3)
    assert int(weights.defined.sum()) > 3  # the test needs weighted features
    return model, processor, sae, weights, rows


def _positions(ids: list[int], tok, start_after: int, image_id: int) -> list[int]:
    """Token positions of the text that starts after position ``start_after`` and ends before the next <|end|>."""
    end = tok.convert_tokens_to_ids("<|end|>")
    newline = tok.convert_tokens_to_ids("Ċ")
    out = []
    first = start_after + 1 + (ids[start_after + 1] == newline)  # the template's newline after the image / role
    for t in range(first, len(ids)):
        if ids[t] == end:
            break
        if ids[t] != image_id:
            out.append(t)
    return out


def _captured(model, processor, rows, mode):
    """The batch the scorer captures (same rows, same padding: bit-identical residuals)."""
    acts, kept, errors = capture_rows(model, processor, rows, LAYER, mode=mode)
    assert kept == list(range(len(rows))), errors
    return acts


def _brute(model, processor, sae, weights, acts, j, thresholds, *, prompt_len=None):
    """(score_content, grounding, n tokens) of row ``j`` of a captured batch, by loops."""
    am = acts.attention_mask[j].bool()
    ids = acts.input_ids[j][am].tolist()
    resid = acts.resid[j][am]
    image_id = model.config.image_token_id
    tok = processor.tokenizer
    img_pos = [t for t, i in enumerate(ids) if i == image_id]
    if prompt_len is None:
        content = _positions(ids, tok, img_pos[-1], image_id)
    else:  # the response: after "<|assistant|>" and its newline
        assistant = max(t for t in range(prompt_len) if ids[t] == tok.convert_tokens_to_ids("<|assistant|>"))
        content = [t for t in _positions(ids, tok, assistant, image_id) if t >= prompt_len]
    with torch.no_grad():
        z = sae.encode(resid).double()
    omega = weights.omega.double()
    d = z.shape[1]
    img_max = [max(float(z[t, k]) for t in img_pos) for k in range(d)]
    on_img = {k for k in range(d) if img_max[k] > thresholds[k] and not math.isnan(omega[k])}
    on_txt = set()
    mass = grounded = 0.0
    for t in content:
        for k in range(d):
            if math.isnan(omega[k]) or not float(z[t, k]) > thresholds[k]:
                continue
            on_txt.add(k)
            mass += float(omega[k]) * float(z[t, k])
            if k in on_img:
                grounded += float(omega[k]) * float(z[t, k])
    score_content = sum(float(omega[k]) for k in on_txt & on_img)
    return score_content, (grounded / mass if mass > 0 else 0.0), len(ids)


def _npmi(together: dict, n_a: dict, n_b: dict, n_rows: int, ka: int, kb: int) -> float:
    """npmi of a pair from hand counts (-1 for a pair never seen together)."""
    c = together.get((ka, kb), 0)
    if c == 0:
        return -1.0
    p_ab, p_a, p_b = c / n_rows, n_a[ka] / n_rows, n_b[kb] / n_rows
    return 1.0 if p_ab == 1 else math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)


def _response(model, processor, sae, prompt_acts, acts, j):
    """Row ``j`` shown with a response, by position: (its unpadded token ids, the response's positions, the SAE
    codes of every token, the answer slot's position); None for a row without image tokens."""
    tok, image_id = processor.tokenizer, model.config.image_token_id
    prompt_len = int(prompt_acts.attention_mask[j].sum())
    am = acts.attention_mask[j].bool()
    ids = acts.input_ids[j][am].tolist()
    if image_id not in ids:
        return None
    assistant = max(t for t in range(prompt_len) if ids[t] == tok.convert_tokens_to_ids("<|assistant|>"))
    response = [t for t in _positions(ids, tok, assistant, image_id) if t >= prompt_len]
    with torch.no_grad():
        z = sae.encode(acts.resid[j][am])
    return ids, response, z, prompt_len - 1


def _assert_response_columns(model, processor, sae, weights, rows, name, want_of, tol):
    """On every row with an image, the scorer's ``saev_<name>_chosen`` / ``_rejected`` equal
    ``want_of(prompt_acts, acts, i)`` (None where that is None), and ``_margin`` their difference where both
    exist (None otherwise); at least half the rows have a margin."""
    good = [r for r in rows if r["images"]]
    out = SaevScorer(model, processor, sae, weights, LAYER)(good)
    prompt = _captured(model, processor, good, "prompt")
    parts = {m: _captured(model, processor, good, m) for m in ("chosen", "rejected")}
    n_margins = 0
    for i in range(len(good)):
        want = {m: want_of(prompt, acts, i) for m, acts in parts.items()}
        for m in parts:
            assert out[f"saev_{name}_{m}"][i] == (None if want[m] is None else pytest.approx(want[m], abs=tol))
        margin = out[f"saev_{name}_margin"][i]
        if None not in want.values():
            n_margins += 1
            assert margin == pytest.approx(want["chosen"] - want["rejected"], abs=tol)
        else:
            assert margin is None
    assert n_margins >= len(good) // 2


def _hand_counts(model, processor, rows, sets_of):
    """Over the reference rows shown with their chosen response: how many rows ``sets_of(prompt_acts, acts, j)``
    gives an (a, b) pair of sets for, and how often each a, each b and each (a, b) pair occur."""
    n_a, n_b, together, n_rows = {}, {}, {}, 0
    for s in range(0, len(rows), 8):
        chunk = rows[s:s + 8]
        prompt, kept, _ = capture_rows(model, processor, chunk, LAYER, mode="prompt")
        chosen, kept_chosen, _ = capture_rows(model, processor, chunk, LAYER, mode="chosen")
        assert kept_chosen == kept
        for j in range(len(kept)):
            sets = sets_of(prompt, chosen, j)
            if sets is None:
                continue
            n_rows += 1
            for x in sets[0]:
                n_a[x] = n_a.get(x, 0) + 1
            for y in sets[1]:
                n_b[y] = n_b.get(y, 0) + 1
            for x in sets[0]:
                for y in sets[1]:
                    together[(x, y)] = together.get((x, y), 0) + 1
    return n_a, n_b, together, n_rows


@pytest.mark.parametrize("delta_rel", [None, 0.3])
def test_agreement_columns_match_brute_force(setup, delta_rel):
    model, processor, sae, weights, rows = setup
    good = [r for r in rows if r["images"]]
    scorer = SaevScorer(model, processor, sae, weights, LAYER, delta_rel=delta_rel, control_prompt=CONTROL)
    out = scorer(good)
    d = weights.d_sae
    if delta_rel is None:
        thresholds = [1.0] * d
    else:
        top = weights.top_activation[:, 0].tolist()
        thresholds = [delta_rel * a if math.isfinite(a) and a > 0 else math.inf for a in top]
    acts = {m: _captured(model, processor, good, m) for m in ("prompt", "chosen", "rejected")}
    acts["control"] = _captured(model, processor, [{"prompt": CONTROL, "images": r["images"]} for r in good], "prompt")
    for i in range(len(good)):
        sc, g, n_prompt = _brute(model, processor, sae, weights, acts["prompt"], i, thresholds)
        assert out["saev_score_content"][i] == pytest.approx(sc, rel=1e-6, abs=1e-9)
        assert out["saev_grounding"][i] == pytest.approx(g, rel=1e-6, abs=1e-9)
        gc = _brute(model, processor, sae, weights, acts["chosen"], i, thresholds, prompt_len=n_prompt)[1]
        gr = _brute(model, processor, sae, weights, acts["rejected"], i, thresholds, prompt_len=n_prompt)[1]
        assert out["saev_grounding_chosen"][i] == pytest.approx(gc, rel=1e-6, abs=1e-9)
        # a difference of two shares in [0, 1]: its float32 error scales with the operands, not with the result
        assert out["saev_grounding_margin"][i] == pytest.approx(gc - gr, abs=1e-6)
        gctl = _brute(model, processor, sae, weights, acts["control"], i, thresholds)[1]
        assert out["saev_grounding_vs_control"][i] == pytest.approx(g - gctl, rel=1e-6, abs=1e-9)
    # with the same δ the paper's score counts template / pre-image text tokens too: never below the content-only one
    assert delta_rel is not None or all(a >= b - 1e-9 for a, b in zip(out["saev_score"], out["saev_score_content"]))


def test_control_columns_only_when_asked_and_bad_options_are_clear(setup):
    model, processor, sae, weights, rows = setup
    plain = SaevScorer(model, processor, sae, weights, LAYER)
    assert "saev_grounding_vs_control" not in plain(rows[:2])
    assert "saev_grounding" in plain(rows[:2])
    with pytest.raises(Exception, match="delta_rel"):
        SaevScorer(model, processor, sae, weights, LAYER, delta_rel=2.0)
    with pytest.raises(Exception, match="control_prompt"):
        SaevScorer(model, processor, sae, weights, LAYER, control_prompt="  ")


def test_a_row_with_no_content_tokens_gets_a_reason(setup):
    from saev_curate.curation.agreement import agreement_scores, feature_thresholds

    model, processor, sae, weights, rows = setup
    acts = _captured(model, processor, rows[:2], "prompt")
    content = torch.zeros_like(acts.text_mask)
    content[1] = acts.text_mask[1]
    out = agreement_scores(sae, weights.omega, acts.resid, acts.image_mask, content,
                           feature_thresholds(weights.d_sae, 1.0, None, None))
    assert out["grounding"][0] is None and "no content text tokens" in out["error"][0]
    assert out["grounding"][1] is not None and out["error"][1] is None


def test_content_mask_skips_the_prompt_with_any_padding_side():
    from saev_curate.curation.agreement import content_mask

    ids = torch.tensor([[0, 0, 5, 9, 9, 7, 8, 3], [5, 9, 9, 7, 8, 6, 3, 0]])  # 9 = image, 5/3 = template, 0 = pad
    am = (ids != 0).long()
    image = ids == 9
    text = (am.bool()) & ~image
    m = content_mask(ids, image, text, {5, 3, 0}, am)
    assert m[0].tolist() == [False, False, False, False, False, True, True, False]
    m = content_mask(ids, image, text, {5, 3, 0}, am, skip_first=torch.tensor([4, 4]))
    assert m[0].tolist() == [False] * 6 + [True, False]  # real tokens 0..3 of row 0 are the "prompt"
    assert m[1].tolist() == [False] * 4 + [True, True, False, False]


def test_feature_pairs_and_pair_agreement_match_brute_force(setup):
    """npmi of every (content-token feature, image feature) pair counted by hand over the reference rows
    (the fitter's batches of 8), then each row's pair agreement as the mean over its known pairs."""
    model, processor, sae, weights, rows = setup
    pairs = weights.pairs
    assert pairs is not None and pairs.delta == 0.0 and pairs.min_count == 5
    tok, image_id = processor.tokenizer, model.config.image_token_id
    n_text, n_image, together, n_rows = {}, {}, {}, 0

    def row_sets(acts, j, prompt_len=None):
        am = acts.attention_mask[j].bool()
        ids = acts.input_ids[j][am].tolist()
        img_pos = [t for t, i in enumerate(ids) if i == image_id]
        if prompt_len is None:
            content = _positions(ids, tok, img_pos[-1], image_id)
        else:
            assistant = max(t for t in range(prompt_len) if ids[t] == tok.convert_tokens_to_ids("<|assistant|>"))
            content = [t for t in _positions(ids, tok, assistant, image_id) if t >= prompt_len]
        with torch.no_grad():
            z = sae.encode(acts.resid[j][am])
        a = {k for t in content for k in range(z.shape[1]) if float(z[t, k]) > 0.0}
        b = {k for t in img_pos for k in range(z.shape[1]) if float(z[t, k]) > 0.0}
        return a, b, len(ids)

    for s in range(0, len(rows), 8):  # CrossModalWeights.fit's default batch size
        acts, kept, _ = capture_rows(model, processor, rows[s:s + 8], LAYER, mode="prompt")
        for j in range(len(kept)):
            a, b, _ = row_sets(acts, j)
            n_rows += 1
            for k in a:
                n_text[k] = n_text.get(k, 0) + 1
            for k in b:
                n_image[k] = n_image.get(k, 0) + 1
            for ka in a:
                for kb in b:
                    together[(ka, kb)] = together.get((ka, kb), 0) + 1
    assert pairs.n_rows == n_rows == sum(1 for r in rows if r["images"])
    assert len(pairs.keys) == len(together)

    def npmi(ka, kb):
        return _npmi(together, n_text, n_image, n_rows, ka, kb)

    sample = sorted(together)[:: max(1, len(together) // 200)]
    got = pairs.matrix(torch.tensor([a for a, _ in sample]), torch.tensor([b for _, b in sample])).diagonal()
    assert got.tolist() == pytest.approx([npmi(a, b) for a, b in sample], abs=1e-5)

    good = [r for r in rows if r["images"]]
    out = SaevScorer(model, processor, sae, weights, LAYER)(good)
    assert sum(v is not None for v in out["saev_pair_agreement"]) >= len(good) // 2
    prompt = _captured(model, processor, good, "prompt")
    chosen = _captured(model, processor, good, "chosen")
    rejected = _captured(model, processor, good, "rejected")
    for i in range(len(good)):
        def agreement(acts, prompt_len=None):
            a, b, n = row_sets(acts, i, prompt_len)
            a = [k for k in a if n_text.get(k, 0) >= 5]
            b = [k for k in b if n_image.get(k, 0) >= 5]
            return (None if not a or not b else sum(npmi(x, y) for x in a for y in b) / (len(a) * len(b))), n

        p, n_prompt = agreement(prompt)
        assert out["saev_pair_agreement"][i] == pytest.approx(p, abs=1e-5)
        c, r = agreement(chosen, n_prompt)[0], agreement(rejected, n_prompt)[0]
        assert out["saev_pair_agreement_margin"][i] == (None if c is None or r is None else pytest.approx(c - r, abs=1e-5))


def test_answer_pairs_and_answer_agreement_match_brute_force(setup):
    """npmi of every (chosen-response feature, answer-slot feature) pair counted by hand over the reference rows
    shown with their chosen response (the answer slot: the prompt's last token), then each row's answer
    agreement with its chosen and its rejected response as the mean over its known pairs."""
    model, processor, sae, weights, rows = setup
    pairs = weights.answer_pairs
    assert pairs is not None and pairs.min_count == 5

    def row_sets(prompt_acts, acts, j):
        if (got := _response(model, processor, sae, prompt_acts, acts, j)) is None:
            return None
        _, response, z, slot = got
        a = {k for t in response for k in range(z.shape[1]) if float(z[t, k]) > 0.0}
        b = {k for k in range(z.shape[1]) if float(z[slot, k]) > 0.0}  # the answer slot
        return (a, b) if response else None

    n_a, n_b, together, n_rows = _hand_counts(model, processor, rows, row_sets)
    assert pairs.n_rows == n_rows >= 5 and len(pairs.keys) == len(together)

    def npmi(ka, kb):
        return _npmi(together, n_a, n_b, n_rows, ka, kb)

    def agreement(prompt_acts, acts, i):
        sets = row_sets(prompt_acts, acts, i)
        a = [k for k in (sets or ((), ()))[0] if n_a.get(k, 0) >= 5]
        b = [k for k in (sets or ((), ()))[1] if n_b.get(k, 0) >= 5]
        return None if not a or not b else sum(npmi(x, y) for x in a for y in b) / (len(a) * len(b))

    _assert_response_columns(model, processor, sae, weights, rows, "answer_agreement", agreement, 1e-5)


def test_weights_with_pairs_round_trip_and_refuse_damaged_pair_files(setup, tmp_path):
    _, _, _, weights, _ = setup
    weights.save(tmp_path / "w")
    back = CrossModalWeights.load(tmp_path / "w")
    assert back.fingerprint() == weights.fingerprint()
    for name in ("pairs", "answer_pairs"):
        a, b = getattr(back, name), getattr(weights, name)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.npmi, b.npmi) and a.n_rows == b.n_rows
    for file in ("crossmodal_pairs.safetensors", "crossmodal_answer_pairs.safetensors"):
        weights.save(tmp_path / "w")
        (tmp_path / "w" / file).write_bytes(b"garbage")
        with pytest.raises(Exception, match=file):
            CrossModalWeights.load(tmp_path / "w")
    for name in ("answer_readout", "token_readout"):
        a, b = getattr(back, name), getattr(weights, name)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.counts, b.counts) and torch.equal(a.vocab, b.vocab)
        assert torch.equal(a.n_slot, b.n_slot) and torch.equal(a.n_token, b.n_token)
        assert (a.n_rows, a.d_sae, a.delta, a.alpha) == (b.n_rows, b.d_sae, b.delta, b.alpha)
    assert back.token_readout.n_rows > back.answer_readout.n_rows  # one observation per response token
    for file in ("crossmodal_answer_readout.safetensors", "crossmodal_token_readout.safetensors"):
        weights.save(tmp_path / "w")
        (tmp_path / "w" / file).write_bytes(b"garbage")
        with pytest.raises(Exception, match=file):
            CrossModalWeights.load(tmp_path / "w")


def test_answer_readout_matches_brute_force(setup):
    """(answer-slot feature, response token) counted by hand over the reference rows shown with their chosen
    response, then each row's read-out of its chosen and rejected response from the naive-Bayes formula written
    out class by class (the reference vocabulary plus the response's unseen tokens)."""
    model, processor, sae, weights, rows = setup
    ro = weights.answer_readout
    assert ro is not None and ro.delta == 1.0 and ro.alpha == 1.0

    def slot_and_tokens(prompt_acts, acts, j):
        if (got := _response(model, processor, sae, prompt_acts, acts, j)) is None:
            return None
        ids, positions, z, slot = got
        fired = {k for k in range(z.shape[1]) if float(z[slot, k]) > 1.0}
        return (fired, {ids[t] for t in positions}) if positions else None

    n_k, n_t, n_kt, n_rows = _hand_counts(model, processor, rows, slot_and_tokens)
    assert ro.n_rows == n_rows >= 5 and sorted(ro.vocab.tolist()) == sorted(n_t) and len(ro.keys) == len(n_kt)
    assert {k: int(ro.n_slot[k]) for k in n_k} == n_k and int(ro.n_slot.sum()) == sum(n_k.values())
    assert sum(n_k.values()) > 0  # slot features fire: the read-out is not just the prior

    def readout(slot, response):
        post, _ = _naive_bayes(slot, response, n_k, n_t, n_kt, n_rows)
        return sum(post[t] for t in response) / len(response)

    def want(prompt_acts, acts, i):
        got = slot_and_tokens(prompt_acts, acts, i)
        return None if got is None else readout(*got)

    _assert_response_columns(model, processor, sae, weights, rows, "answer_readout", want, 1e-6)


def _naive_bayes(slot, response, n_k, n_t, n_kt, n_rows, alpha=1.0):
    """Log-posterior and log-prior of every class (the reference vocabulary plus the response's unseen tokens)
    given the firing slot features, written out class by class."""
    classes = sorted(set(n_t) | set(response))
    v = len(classes)
    prior = {t: math.log((n_t.get(t, 0) + alpha) / (n_rows + alpha * v)) for t in classes}
    s = {t: prior[t] + sum(math.log((n_kt.get((k, t), 0) + alpha) / (n_k.get(k, 0) + alpha * v)) - prior[t]
                           for k in slot) for t in classes}
    top = max(s.values())
    lse = top + math.log(sum(math.exp(x - top) for x in s.values()))
    return {t: x - lse for t, x in s.items()}, prior


def test_token_level_readout_agreement_and_blame_match_brute_force(setup):
    """The token read-out counted by hand: over the reference rows' chosen responses, each content token with the
    features firing (> 1) at the position before it; per token the lift log P(t | A) - log p(t) from the
    naive-Bayes formula written out, and per token the mean npmi of its (feature, answer-slot feature) pairs.
    The scorer's ``_min`` columns are their minimum over the response; the blame is the read-out's worst token:
    its index after the prompt, its text, and the firing features whose log-ratio for it is most negative."""
    model, processor, sae, weights, rows = setup
    tok = processor.tokenizer
    n_k, n_t, n_kt, n_obs = {}, {}, {}, 0
    for s in range(0, len(rows), 8):
        chunk = rows[s:s + 8]
        prompt, kept, _ = capture_rows(model, processor, chunk, LAYER, mode="prompt")
        chosen, _, _ = capture_rows(model, processor, chunk, LAYER, mode="chosen")
        for j in range(len(kept)):
            if (got := _response(model, processor, sae, prompt, chosen, j)) is None:
                continue
            ids, positions, z, _ = got
            for t in positions:
                n_obs += 1
                n_t[ids[t]] = n_t.get(ids[t], 0) + 1
                for k in (k for k in range(z.shape[1]) if float(z[t - 1, k]) > 1.0):
                    n_k[k] = n_k.get(k, 0) + 1
                    n_kt[(k, ids[t])] = n_kt.get((k, ids[t]), 0) + 1
    assert weights.token_readout.n_rows == n_obs > 20 and sum(n_k.values()) > 0
    pa, pb, together, n_pair_rows = _hand_counts(model, processor, rows, lambda p, a, j: (
        None if (got := _response(model, processor, sae, p, a, j)) is None or not got[1] else
        ({k for t in got[1] for k in range(got[2].shape[1]) if float(got[2][t, k]) > 0.0},
         {k for k in range(got[2].shape[1]) if float(got[2][got[3], k]) > 0.0})))

    def per_token(prompt_acts, acts, i):
        """[(index after the prompt, token id, lift, npmi or None, features firing before it)] per content token."""
        if (got := _response(model, processor, sae, prompt_acts, acts, i)) is None or not got[1]:
            return None
        ids, positions, z, slot = got
        slot_feats = [k for k in range(z.shape[1]) if float(z[slot, k]) > 0.0 and pb.get(k, 0) >= 5]
        out = []
        for t in positions:
            fired = {k for k in range(z.shape[1]) if float(z[t - 1, k]) > 1.0}
            post, prior = _naive_bayes(fired, [ids[t]], n_k, n_t, n_kt, n_obs)
            feats = [k for k in range(z.shape[1]) if float(z[t, k]) > 0.0 and pa.get(k, 0) >= 5]
            npmi = (sum(_npmi(together, pa, pb, n_pair_rows, x, y) for x in feats for y in slot_feats)
                    / (len(feats) * len(slot_feats))) if feats and slot_feats else None
            out.append((t - (slot + 1), ids[t], post[ids[t]] - prior[ids[t]], npmi, fired))
        return out

    def lift_min(p, a, i):
        got = per_token(p, a, i)
        return None if got is None else min(x[2] for x in got)

    def npmi_min(p, a, i):
        known = [x[3] for x in per_token(p, a, i) or () if x[3] is not None]
        return min(known) if known else None

    _assert_response_columns(model, processor, sae, weights, rows, "token_readout_min", lift_min, 1e-6)
    _assert_response_columns(model, processor, sae, weights, rows, "answer_agreement_min", npmi_min, 1e-5)

    good = [r for r in rows if r["images"]]
    out = SaevScorer(model, processor, sae, weights, LAYER)(good)
    prompt, chosen = _captured(model, processor, good, "prompt"), _captured(model, processor, good, "chosen")
    n_blamed = 0
    for i in range(len(good)):
        got = per_token(prompt, chosen, i)
        if got is None:
            assert out["saev_blame_token"][i] is None and out["saev_blame_text"][i] is None
            continue
        index, token, _, _, fired = min(got, key=lambda x: x[2])
        assert out["saev_blame_token"][i] == index and out["saev_blame_text"][i] == tok.decode([token]).strip()
        n_c = len(set(n_t) | {token})
        ratio = {k: math.log((n_kt.get((k, token), 0) + 1) / (n_k.get(k, 0) + n_c))
                 - math.log((n_t.get(token, 0) + 1) / (n_obs + n_c)) for k in fired}
        want = [k for k in sorted(ratio, key=lambda k: (ratio[k], k)) if ratio[k] < 0][:3]
        assert out["saev_blame_features"][i] == ",".join(map(str, want))
        n_blamed += 1
    assert n_blamed >= len(good) // 2


def test_answer_readout_hand_computed():
    """Three reference rows, two features, two answer tokens: the posterior and the votes worked out on paper."""
    from saev_curate.curation.readout import ReadoutCounter

    c = ReadoutCounter(2, delta=0.5, alpha=1.0)
    c.observe(torch.tensor([1.0, 0.0]), torch.tensor([7]))  # feature 0 fires, answer 7
    c.observe(torch.tensor([1.0, 0.0]), torch.tensor([7]))
    c.observe(torch.tensor([0.0, 1.0]), torch.tensor([9]))  # feature 1 fires, answer 9
    r = c.result()
    assert r.vocab.tolist() == [7, 9] and r.n_token.tolist() == [2.0, 1.0] and r.n_slot.tolist() == [2.0, 1.0]
    # slot fires feature 0: posterior ∝ p(t|0); p(7|0) = (2+1)/(2+2), p(9|0) = (0+1)/(2+2)
    assert r.readout(torch.tensor([0.9, 0.0]), torch.tensor([7])) == pytest.approx(math.log(3 / 4))
    assert r.readout(torch.tensor([0.9, 0.0]), torch.tensor([9])) == pytest.approx(math.log(1 / 4))
    # nothing fires: the prior p(7) = 3/5, p(9) = 2/5
    assert r.readout(torch.tensor([0.0, 0.0]), torch.tensor([7])) == pytest.approx(math.log(3 / 5))
    # an unseen answer 5 is a third class: p(t|0) = 1/5, 3/5, 1/5 for 5, 7, 9
    assert r.readout(torch.tensor([0.9, 0.0]), torch.tensor([5])) == pytest.approx(math.log(1 / 5))
    # a two-token response: the mean over its tokens
    assert r.readout(torch.tensor([0.9, 0.0]), torch.tensor([7, 9, 7])) == pytest.approx(
        (math.log(3 / 4) + math.log(1 / 4)) / 2)
    assert r.readout(torch.tensor([0.9, 0.0]), torch.tensor([], dtype=torch.long)) is None
    # why: feature 0 votes for 7 with log(p(7|0) / p(7)) = log((3/4) / (3/5)), against 9 with log((1/4) / (2/5))
    (vote,) = r.votes(torch.tensor([0.9, 0.0]), 7)
    assert vote["feature"] == 0 and vote["n_together"] == 2 and vote["n_feature"] == 2
    assert vote["log_ratio"] == pytest.approx(math.log((3 / 4) / (3 / 5)))
    assert r.votes(torch.tensor([0.9, 0.0]), 9)[0]["log_ratio"] == pytest.approx(math.log((1 / 4) / (2 / 5)))
    assert r.votes(torch.tensor([0.0, 0.0]), 7) == []

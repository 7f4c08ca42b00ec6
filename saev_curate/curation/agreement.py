"""Image/text agreement scores beyond the paper: only text that can see the image, normalised.

The paper's score (``saev_score``) sums ω over features that pass δ on *any* text token and on
any image token.  Under causal attention with the image first, text tokens before the image
(system prompt, chat markers) are blind to it, and template tokens are the same in every row, so
co-occurrence there is decided by the image alone: the score measures how typical the image is.
The variants here look only at **content tokens**: text tokens after the first image token that
are not chat-template or special tokens (the user's words, and the response's in response modes).

For a row with image tokens I and content tokens C, SAE codes z, cross-modal weights ω (defined
features only) and thresholds δ_k (one δ, or ``delta_rel`` x the feature's top activation on the
reference set: a δ on each feature's own scale):

* ``score_content = Σ_k ω_k [max_C z_k > δ_k] [max_I z_k > δ_k]``: the paper's sum, content tokens only;
* ``grounding = Σ_{t∈C} Σ_k ω_k z_tk [z_tk > δ_k] [max_I z_k > δ_k] / Σ_{t∈C} Σ_k ω_k z_tk [z_tk > δ_k]``:
  the share of the content tokens' cross-modal feature mass that the image also carries (in [0, 1]);
  a sum over features would grow with the image's feature count, a share does not;
* ``pair_agreement``: the mean npmi of the row's (content-token feature, image feature) pairs, from the
  weights' :class:`~saev_curate.curation.pairs.FeaturePairs` (ω generalised from one feature on both
  modalities to pairs of features);
* ``answer_agreement`` (response modes): the mean npmi of (response-token feature, answer-slot feature)
  pairs.  The **answer slot** is the prompt's last token, whose next-token prediction is the response: what
  the model read from this image and question.  Does the given response carry the features that reference
  responses carried after answer slots like this one (weights' ``answer_pairs``, fitted on the reference
  rows' chosen responses)?  A response that contradicts what the model read forms pairs that clean rows
  rarely form.  Not cross-modal in the paper's sense: it compares the response with the model's own
  reading of image + prompt, at the SAE's layer;
* ``answer_readout`` (response modes): the mean log-posterior of the response's content tokens given the
  answer slot's firing features, a naive-Bayes read-out fitted on the reference rows' chosen responses (weights'
  ``answer_readout``; :mod:`saev_curate.curation.readout`): is this the answer the slot's features stand for?
  It reads response *tokens*, so it is not diluted by the generic features a response token also carries;
* ``token_readout_min`` (response modes): the read-out per response token.  Each token t at position p has
  its own answer slot, the position before it, where the model decides what to say next (for the first token,
  the answer slot itself); the weights' ``token_readout`` counts, over the reference rows' chosen responses,
  which tokens follow each feature firing there.  Per token the score is the lift ``log P(t | A_{p-1}) - log
  p(t)`` (:meth:`~saev_curate.curation.readout.AnswerReadout.token_lift`): do the features of the moment the
  model said it speak for or against this token.  The minimum over the response's content tokens makes a long
  answer as bad as its worst token, so one false fact is not diluted by the true ones around it;
* ``answer_agreement_min``: the answer-pair npmi per response token (the mean over that token's (feature,
  answer-slot feature) pairs), its minimum over the response;
* the **blame** is the token read-out's worst token: ``blame_token`` (its index among the response's tokens,
  0 = the first token after the prompt), ``blame_token_id`` and ``blame_features`` (the features at its slot
  that vote most strongly against it, strongest first);
* a row without content tokens gets ``None`` and a reason.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saev_curate.core.devices import module_device
from saev_curate.sae.chunks import encode_chunks, feature_max

AGREEMENT_COLUMNS = ("score_content", "grounding", "pair_agreement", "answer_agreement", "answer_readout",
                     "token_readout_min", "answer_agreement_min")
BLAME_COLUMNS = ("blame_token", "blame_token_id", "blame_features")
N_BLAME_FEATURES = 3


def template_token_ids(processor) -> set[int]:
    """Ids the chat template itself writes (role names, markers, newlines) plus special tokens.

    Found by rendering an image + empty user text and an empty assistant turn: whatever tokens
    appear there come from the template, not from a row.
    """
    tok = getattr(processor, "tokenizer", processor)
    ids = set(getattr(tok, "all_special_ids", []) or [])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]}]
    for add_gen, m in ((True, msgs[:1]), (False, msgs)):
        try:
            text = processor.apply_chat_template(m, tokenize=False, add_generation_prompt=add_gen)
        except Exception:  # a template that refuses empty turns: fall back to special tokens only
            continue
        ids |= set(tok(text, add_special_tokens=False)["input_ids"])
    return ids


def content_mask(input_ids: Tensor, image_mask: Tensor, text_mask: Tensor, template_ids: set[int],
                 attention_mask: Tensor | None = None, skip_first: Tensor | None = None) -> Tensor:
    """``[B, T]`` bool: text tokens after the row's first image token that the template did not write.

    ``skip_first[b]`` drops the row's first ``skip_first[b]`` real (non-padding) tokens: with the
    prompt's length there, only the response's tokens remain (any padding side).
    """
    after_image = torch.cumsum(image_mask.long(), dim=1) > 0
    not_template = ~torch.isin(input_ids, torch.tensor(sorted(template_ids), dtype=input_ids.dtype,
                                                       device=input_ids.device))
    mask = text_mask & after_image & ~image_mask & not_template
    if skip_first is not None:
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        rank = torch.cumsum(am.long(), dim=1) - 1  # index of each real token within its row
        mask = mask & (rank >= skip_first.to(rank.device)[:, None])
    return mask


def answer_slot(attention_mask: Tensor, prompt_len: Tensor | None = None) -> Tensor:
    """``[B]`` position of each row's answer slot: its last real token, or with ``prompt_len`` (a row shown
    with its response) the prompt's last token (any padding side)."""
    am = attention_mask.long()
    rank = torch.cumsum(am, dim=1) - 1
    target = am.sum(1) - 1 if prompt_len is None else prompt_len.to(am.device).long() - 1
    return ((rank == target[:, None]) & am.bool()).long().argmax(1)


def feature_thresholds(d_sae: int, delta: float, delta_rel: float | None, top_activation: Tensor | None) -> Tensor:
    """δ_k per feature: ``delta`` for all, or ``delta_rel`` x the feature's top reference activation."""
    if delta_rel is None:
        return torch.full((d_sae,), float(delta))
    if top_activation is None:
        raise ValueError("delta_rel needs cross-modal weights that recorded top activations (refit them)")
    top = top_activation[:, 0].float()
    return torch.where(torch.isfinite(top) & (top > 0), delta_rel * top, torch.full_like(top, float("inf")))


#: agreement column -> the table of the weights it reads
COLUMN_TABLES = {"pair_agreement": "pairs", "answer_agreement": "answer_pairs", "answer_agreement_min": "answer_pairs",
                 "answer_readout": "answer_readout", "token_readout_min": "token_readout"}


def batch_agreement(sae, weights, acts, template_ids: set[int], thresholds: Tensor, prompt_len: Tensor | None = None,
                    resid: Tensor | None = None, columns: tuple[str, ...] | None = None,
                    image_max: Tensor | None = None) -> dict[str, list]:
    """:func:`agreement_scores` of a captured batch ``acts`` with ``weights`` (a ``CrossModalWeights``): its
    content tokens, or with ``prompt_len`` (rows shown with a response) the response's tokens and answer slot.
    ``resid`` replaces ``acts.resid`` (e.g. cast to float); ``image_max`` as in :func:`agreement_scores`.
    ``columns``: only these table-reading columns are computed (the others of :data:`COLUMN_TABLES` come back
    None), when a caller needs one and not the cost of all."""
    content = content_mask(acts.input_ids, acts.image_mask, acts.text_mask, template_ids, acts.attention_mask,
                           prompt_len)
    slot = None if prompt_len is None else answer_slot(acts.attention_mask, prompt_len)
    token_index = None
    if prompt_len is not None:
        am = torch.ones_like(acts.input_ids) if acts.attention_mask is None else acts.attention_mask
        token_index = torch.cumsum(am.long(), dim=1) - 1 - prompt_len.to(am.device).long()[:, None]
    used = set(COLUMN_TABLES.values()) if columns is None else {COLUMN_TABLES[c] for c in columns if c in COLUMN_TABLES}
    table = {name: getattr(weights, name) if name in used else None for name in set(COLUMN_TABLES.values())}
    return agreement_scores(sae, weights.omega, acts.resid if resid is None else resid, acts.image_mask, content,
                            thresholds, table["pairs"], slot=slot, answer_pairs=table["answer_pairs"],
                            input_ids=acts.input_ids, answer_readout=table["answer_readout"],
                            token_readout=table["token_readout"], token_index=token_index, image_max=image_max)


@torch.no_grad()
def agreement_scores(sae, omega: Tensor, resid: Tensor, image_mask: Tensor, content: Tensor,
                     thresholds: Tensor, pairs=None, *, slot: Tensor | None = None, answer_pairs=None,
                     input_ids: Tensor | None = None, answer_readout=None, token_readout=None,
                     token_index: Tensor | None = None, image_max: Tensor | None = None) -> dict[str, list]:
    """The :data:`AGREEMENT_COLUMNS`, :data:`BLAME_COLUMNS` and ``error`` per row of a captured batch (see module
    doc).  ``token_index [B, T]`` numbers each position within its row's response (for the blame).

    Each npmi column needs its :class:`~saev_curate.curation.pairs.FeaturePairs` (``pairs``;
    ``answer_pairs`` also ``slot``, each row's answer-slot position) and is None without; ``answer_readout``
    (an :class:`~saev_curate.curation.readout.AnswerReadout`) needs ``slot`` and ``input_ids``, ``token_readout``
    (the same class, fitted per response position) ``slot`` (response modes) and ``input_ids``.  ``image_max
    [B, d_sae]``: each row's per-feature maximum over its image tokens when the caller has it already (the scorer
    does), so the image tokens are not encoded twice.  Tokens are encoded in bounded chunks
    (:mod:`saev_curate.sae.chunks`): memory does not grow with a row's token count x d_sae."""
    dev = module_device(sae)
    w = omega.to(dev, torch.float64)
    defined = ~torch.isnan(w)
    w = torch.where(defined, w, torch.zeros_like(w))
    thr = thresholds.to(dev, torch.float32)
    out: dict[str, list] = {k: [] for k in (*AGREEMENT_COLUMNS, *BLAME_COLUMNS, "error")}
    for b in range(resid.shape[0]):
        img, txt = resid[b][image_mask[b]], resid[b][content[b]]
        if img.shape[0] == 0 or txt.shape[0] == 0:
            for k in (*AGREEMENT_COLUMNS, *BLAME_COLUMNS):
                out[k].append(None)
            out["error"].append("no image tokens in the sequence" if img.shape[0] == 0 else
                                "no content text tokens after the image (only template or special tokens)")
            continue
        img_max = feature_max(sae, img) if image_max is None else image_max[b].to(dev, torch.float32)
        on_img = (img_max > thr) & defined
        txt_max, den, grounded, per_token = None, 0.0, 0.0, []
        z_slot = None if slot is None else sae.encode(resid[b, int(slot[b])][None].to(dev)).float()[0]
        for _, z_txt in encode_chunks(sae, txt):  # content tokens in bounded chunks: per-token sums and maxima
            z_txt = z_txt.float()
            act_txt = (z_txt > thr) & defined
            den += float(((z_txt.double() * act_txt) @ w).sum())  # per content token: cross-modal mass
            grounded += float(((z_txt.double() * (act_txt & on_img)) @ w).sum())
            m = z_txt.amax(0)
            txt_max = m if txt_max is None else torch.maximum(txt_max, m)
            if answer_pairs is not None and z_slot is not None:
                per_token += answer_pairs.agreement_each(z_txt, z_slot)
        on_txt = (txt_max > thr) & defined
        out["score_content"].append(float(((on_txt & on_img).double() * w).sum()))
        out["grounding"].append(grounded / den if den > 0 else 0.0)
        out["pair_agreement"].append(None if pairs is None else pairs.agreement(txt_max, img_max))
        out["answer_agreement"].append(None if answer_pairs is None or z_slot is None
                                       else answer_pairs.agreement(txt_max, z_slot))
        out["answer_readout"].append(None if answer_readout is None or z_slot is None or input_ids is None
                                     else answer_readout.readout(z_slot, input_ids[b][content[b]]))
        known = [v for v in per_token if v is not None]
        out["answer_agreement_min"].append(min(known) if known else None)
        blame = dict.fromkeys(("token_readout_min", *BLAME_COLUMNS))
        if token_readout is not None and z_slot is not None and input_ids is not None:
            ids = input_ids[b][content[b]]
            worst = None  # (lift, index, the code before that token): the first minimum
            for s, z_before in encode_chunks(sae, resid[b][content[b].nonzero().flatten() - 1]):
                for i, z in enumerate(z_before.float()):
                    lift = float(token_readout.token_lift(z, ids[s + i][None])[0])
                    if worst is None or lift < worst[0]:
                        worst = (lift, s + i, z.clone())
            _, j, z_j = worst
            against = [v["feature"] for v in sorted(token_readout.votes(z_j, int(ids[j])),
                                                    key=lambda v: (v["log_ratio"], v["feature"])) if v["log_ratio"] < 0]
            blame = {"token_readout_min": worst[0], "blame_token_id": int(ids[j]),
                     "blame_token": None if token_index is None else int(token_index[b][content[b]][j]),
                     "blame_features": ",".join(map(str, against[:N_BLAME_FEATURES]))}
        for k, v in blame.items():
            out[k].append(v)
        out["error"].append(None)
    return out

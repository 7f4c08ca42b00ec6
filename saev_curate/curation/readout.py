"""The answer read-out (beyond the paper): which answer the policy's own SAE features at the answer slot point to.

The **answer slot** is the prompt's last token (:func:`saev_curate.curation.agreement.answer_slot`): there the
model has read image and question, and its next-token prediction is the response.  Over reference rows shown
with their chosen response, count how often each SAE feature k fires at the slot (activation > ``delta``) on
a row whose response holds token t: ``n(k, t)``, and how many responses hold t: ``n(t)`` of ``N`` rows.  Like
ω and the pair tables this needs no labels: defective rows are a minority of the reference rows, so the
answers they pair with a slot feature stay rare.

For a row whose slot fires features A, every token t of the reference vocabulary V (plus the response's own
unseen tokens) gets the naive-Bayes log-odds, with add-``alpha`` smoothing
``p(t) = (n(t) + α) / (N + α|V|)`` and ``p(t | k) = (n(k, t) + α) / (n(k) + α|V|)``::

    s(t) = log p(t) + Σ_{k ∈ A} log(p(t | k) / p(t))
    log P(t | A) = s(t) - logsumexp_{t'} s(t')

and the response's ``answer_readout`` is the mean of ``log P(t | A)`` over its distinct content tokens (text
the chat template did not write): "is this the answer the model's features at the slot stand for?".  Per token,
``log P(t | A) - log p(t)`` (:meth:`AnswerReadout.token_lift`) says whether the features speak for or against
that one token; its minimum over a long answer is as bad as the answer's worst fact.  The
``n(k) + α|V|`` terms are the same for every t and cancel in the normalisation; :meth:`AnswerReadout.votes`
lists each firing feature's ``log(p(t | k) / p(t))``, the reason the read-out favours or rejects an answer.
It compares a response with the model's reading at the SAE's layer, through the SAE's features, not through
the language-model head: an interpretable answer probe fitted without labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saev_curate.curation.counting import DEFAULT_CAPACITY, KeyCounter

__all__ = ["AnswerReadout", "ReadoutCounter"]


@dataclass
class AnswerReadout:
    """Counts of (answer-slot feature, response token) over reference rows, and the read-out they give."""

    vocab: Tensor  # int64 [V], sorted: the token ids seen in reference responses
    n_token: Tensor  # float32 [V]: reference rows whose response holds the token
    n_slot: Tensor  # float32 [d_sae]: reference rows where the feature fired at the answer slot
    keys: Tensor  # int64 [P], sorted: k * V + vocab index, for every (feature, token) seen together
    counts: Tensor  # float32 [P]
    n_rows: int
    d_sae: int
    delta: float  # a slot feature "fires" above delta
    alpha: float  # add-alpha smoothing
    max_undercount: int = 0  # 0: exact counts; else a lossy count's worst undercount (curation.counting)

    def log_posterior(self, slot_z: Tensor, tokens: Tensor) -> Tensor:
        """``log P(t | A)`` for each token id in ``tokens`` given the slot's SAE code ``slot_z`` ``[d_sae]``."""
        return self._posterior_and_prior(slot_z, tokens)[0]

    def token_lift(self, slot_z: Tensor, tokens: Tensor) -> Tensor:
        """Per token of ``tokens`` (in order, repeats kept): ``log P(t | A) - log p(t)``, how much the slot's
        features raise (> 0) or lower (< 0) the token against its prior.  The token-level read-out: a stated
        fact the features speak against is a strongly negative entry, whatever the other tokens say."""
        post, prior = self._posterior_and_prior(slot_z, tokens)
        return post - prior

    def _posterior_and_prior(self, slot_z: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        tokens = tokens.cpu().long()
        active = (slot_z.cpu() > self.delta).nonzero().flatten()
        n_vocab = len(self.vocab)
        unseen = tokens[~torch.isin(tokens, self.vocab)].unique()
        n_classes = n_vocab + len(unseen)  # the response's unseen tokens are classes with no counts
        log_p = torch.log((torch.cat([self.n_token.double(), torch.zeros(len(unseen), dtype=torch.float64)])
                           + self.alpha) / (self.n_rows + self.alpha * n_classes))
        # Σ_k log(n(k, t) + α) over active k: |A| log α for every t, plus the stored non-zero counts
        log_joint = torch.full((n_classes,), len(active) * math.log(self.alpha), dtype=torch.float64)
        if len(active) and len(self.keys):
            lo = torch.searchsorted(self.keys, active * n_vocab)
            hi = torch.searchsorted(self.keys, (active + 1) * n_vocab)
            for a, b in zip(lo.tolist(), hi.tolist()):
                idx = self.keys[a:b] % n_vocab
                log_joint[idx] += torch.log1p(self.counts[a:b].double() / self.alpha)
        s = (1 - len(active)) * log_p + log_joint
        log_post = s - torch.logsumexp(s, 0)
        pos = torch.searchsorted(self.vocab, tokens).clamp_max(max(n_vocab - 1, 0))
        seen = (self.vocab[pos] == tokens) if n_vocab else torch.zeros_like(tokens, dtype=torch.bool)
        unseen_pos = n_vocab + torch.searchsorted(unseen, tokens).clamp_max(max(len(unseen) - 1, 0))
        at = torch.where(seen, pos, unseen_pos)
        return log_post[at], log_p[at]

    def readout(self, slot_z: Tensor, tokens: Tensor) -> float | None:
        """Mean ``log P(t | A)`` over the distinct ``tokens`` of a response; None when it has none."""
        tokens = tokens.cpu().long().unique()
        if not len(tokens):
            return None
        return float(self.log_posterior(slot_z, tokens).mean())

    def votes(self, slot_z: Tensor, token: int) -> list[dict]:
        """Why the read-out says what it says about answer token ``token``: each slot feature that fires, with its
        log-likelihood ratio ``log(p(token | k) / p(token))`` (> 0: the feature votes for that answer) and the
        counts behind it, strongest votes first."""
        n_vocab = len(self.vocab)
        pos = int(torch.searchsorted(self.vocab, torch.tensor([int(token)]))[0]) if n_vocab else 0
        seen = pos < n_vocab and int(self.vocab[pos]) == int(token)
        n_classes = n_vocab + (not seen)
        n_t = float(self.n_token[pos]) if seen else 0.0
        log_p = math.log((n_t + self.alpha) / (self.n_rows + self.alpha * n_classes))
        out = []
        for k in (slot_z.cpu() > self.delta).nonzero().flatten().tolist():
            together = 0.0
            if seen and len(self.keys):
                key = k * n_vocab + pos
                i = int(torch.searchsorted(self.keys, torch.tensor([key]))[0])
                together = float(self.counts[i]) if i < len(self.keys) and int(self.keys[i]) == key else 0.0
            ratio = math.log((together + self.alpha) / (float(self.n_slot[k]) + self.alpha * n_classes)) - log_p
            out.append({"feature": k, "activation": float(slot_z[k]), "log_ratio": ratio,
                        "n_feature": int(self.n_slot[k]), "n_together": int(together)})
        return sorted(out, key=lambda v: -abs(v["log_ratio"]))

    def summary(self) -> dict:
        out = {"n_rows": self.n_rows, "vocab": int(len(self.vocab)), "n_pairs": int(len(self.keys)),
               "delta": self.delta, "alpha": self.alpha}
        if self.max_undercount:  # only when lossy: exact tables keep their old summaries (and fingerprints)
            out["max_undercount"] = self.max_undercount
        return out


_TOKEN_BITS = 32  # running key = feature << 32 | token id (the vocabulary is known only at the end)


class ReadoutCounter:
    """Accumulates (slot features, response tokens) per reference row; :meth:`result` gives the read-out.

    Counts merge as they go (:class:`~saev_curate.curation.counting.KeyCounter`, keyed by (feature, token id)):
    memory is the distinct (feature, token) pairs kept plus a buffer, not rows x pairs; exact unless more than
    ``capacity`` distinct pairs occur (None: never capped)."""

    def __init__(self, d_sae: int, *, delta: float = 1.0, alpha: float = 1.0, merge_every: int = 1 << 22,
                 capacity: int | None = DEFAULT_CAPACITY):
        self.d_sae, self.delta, self.alpha = d_sae, float(delta), float(alpha)
        self.n_rows = 0
        self._n_slot = torch.zeros(d_sae, dtype=torch.float64)
        self._n_token = torch.zeros(0, dtype=torch.float64)  # indexed by token id, grown on demand
        self._table = KeyCounter(capacity=capacity, merge_every=merge_every)

    def observe(self, slot_z: Tensor, tokens: Tensor) -> None:
        """One row: its answer slot's SAE code ``[d_sae]`` and its response's content-token ids."""
        self.n_rows += 1
        self._table.max_count = self.n_rows  # a (feature, token) pair occurs at most once per row
        feats = (slot_z.cpu() > self.delta).nonzero().flatten()
        tokens = tokens.cpu().long().unique()
        if len(tokens):
            self._grow(tokens)
            self._n_token[tokens] += 1
        self._n_slot[feats] += 1
        if len(feats) and len(tokens):
            self._table.add(((feats[:, None] << _TOKEN_BITS) | tokens[None, :]).reshape(-1))

    def observe_each(self, z: Tensor, tokens: Tensor) -> None:
        """Many rows of one token each at once: ``observe(z[i], tokens[i:i+1])`` for every i, with one threshold
        and one key build for all (the token read-out observes every response position)."""
        tokens = tokens.cpu().long().reshape(-1)
        if len(tokens) != z.shape[0]:
            raise ValueError(f"observe_each: {z.shape[0]} codes but {len(tokens)} tokens")
        if not len(tokens):
            return
        self._grow(tokens)
        self.n_rows += len(tokens)
        self._table.max_count = self.n_rows
        self._n_token.index_add_(0, tokens, torch.ones(len(tokens), dtype=torch.float64))
        row, feats = (z.cpu() > self.delta).nonzero(as_tuple=True)
        self._n_slot.index_add_(0, feats, torch.ones(len(feats), dtype=torch.float64))
        if len(feats):
            self._table.add((feats << _TOKEN_BITS) | tokens[row])

    def _grow(self, tokens: Tensor) -> None:
        if int(tokens.min()) < 0 or int(tokens.max()) >= 1 << _TOKEN_BITS:
            raise ValueError(f"token ids must lie in [0, 2^{_TOKEN_BITS}), got {tokens.min()}..{tokens.max()}")
        top = int(tokens.max()) + 1
        if top > len(self._n_token):
            grown = torch.zeros(max(top, 2 * len(self._n_token)), dtype=torch.float64)
            grown[:len(self._n_token)] = self._n_token
            self._n_token = grown

    def result(self) -> AnswerReadout:
        vocab = self._n_token.nonzero().flatten()  # sorted: the token ids of any reference response
        n_vocab = len(vocab)
        keys, counts = self._table.result()
        # (feature, token id) order = (feature, vocabulary index) order: the keys stay sorted
        index = torch.searchsorted(vocab, keys & ((1 << _TOKEN_BITS) - 1))
        keys = (keys >> _TOKEN_BITS) * n_vocab + index
        return AnswerReadout(vocab=vocab, n_token=self._n_token[vocab].float(), n_slot=self._n_slot.float(),
                             keys=keys, counts=counts.float(), n_rows=self.n_rows, d_sae=self.d_sae, delta=self.delta,
                             alpha=self.alpha, max_undercount=self._table.max_undercount)

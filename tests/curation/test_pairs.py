"""Cross-modal feature pairs (saev_curate.curation.pairs) against a brute-force count over hand-made rows whose
text and image feature sets are known, and one npmi computed by hand."""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch

from saev_curate.curation.pairs import PairCounter

D = 6
DELTA = 0.5
# each reference row: (features on the content tokens, features on the image tokens)
ROWS = [({1, 3}, {2, 4}), ({1}, {2}), ({1, 5}, {2, 0}), ({1}, {4}), ({3}, {2}), (set(), {2, 4}), ({0, 3}, set()),
        ({3, 5}, {4})]


def _max_acts(features: set[int], seed: int) -> torch.Tensor:
    """Activations above DELTA exactly on ``features``; the others at DELTA itself (not firing: "> delta"),
    below it, or 0."""
    g = torch.Generator().manual_seed(seed)
    below = [DELTA, 0.0, DELTA * 0.99, -1.0]
    x = torch.tensor([below[(j + seed) % len(below)] for j in range(D)])
    for j in features:
        x[j] = DELTA + 0.01 + float(torch.rand(1, generator=g))
    return x


def _counter(rows=ROWS, min_count=2) -> PairCounter:
    c = PairCounter(D, delta=DELTA, min_count=min_count)
    for i, (text, image) in enumerate(rows):
        c.observe(_max_acts(text, 2 * i), _max_acts(image, 2 * i + 1))
    return c


def _brute(rows=ROWS):
    n = len(rows)
    n_text = [sum(a in t for t, _ in rows) for a in range(D)]
    n_image = [sum(b in i for _, i in rows) for b in range(D)]
    together = {(a, b): sum(a in t and b in i for t, i in rows) for a, b in product(range(D), range(D))}
    npmi = {}
    for (a, b), n_ab in together.items():
        if n_ab:
            p_ab, p_a, p_b = n_ab / n, n_text[a] / n, n_image[b] / n
            npmi[(a, b)] = 1.0 if p_ab == 1 else math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)
    return n_text, n_image, npmi


def test_counts_and_npmi_match_a_brute_force_count():
    pairs = _counter().result()
    n_text, n_image, npmi = _brute()
    assert pairs.n_rows == len(ROWS) and pairs.delta == DELTA and pairs.d_sae == D
    assert pairs.n_text.tolist() == n_text and pairs.n_image.tolist() == n_image
    assert [(k // D, k % D) for k in pairs.keys.tolist()] == sorted(npmi)  # every pair seen together, sorted
    assert pairs.npmi.tolist() == pytest.approx([npmi[p] for p in sorted(npmi)], abs=1e-6)
    # by hand: text 1 on rows 0-3 (p = 1/2), image 2 on rows 0, 1, 2, 4, 5 (p = 5/8), together on rows 0-2 (3/8):
    # npmi = log((3/8) / (1/2 * 5/8)) / -log(3/8) = log(1.2) / log(8/3) = 0.18589
    assert float(pairs.matrix(torch.tensor([1]), torch.tensor([2]))) == pytest.approx(0.185890, abs=1e-5)
    # every pair of a matrix, seen or not: seen pairs their npmi, never-seen pairs -1
    m = pairs.matrix(torch.arange(D), torch.arange(D))
    for a, b in product(range(D), range(D)):
        assert float(m[a, b]) == pytest.approx(npmi.get((a, b), -1.0), abs=1e-6), (a, b)
    assert (m >= -1).all() and (m <= 1).all()


def test_extreme_pairs_always_together_and_independent():
    # by hand, over four rows: text 0 and image 0 fire on every row (npmi 1: log 1 / -log 1 is defined as 1);
    # text 1 and images 2 and 5 always come together (rows 0, 1: log(1/2 / 1/4) / log 2 = 1); text 1 and image 3
    # never do (-1); text 4 and image 5 are independent (each on half the rows, together on a quarter: 0); a
    # feature on every row is independent of everything (0)
    rows = [({0, 1, 4}, {0, 2, 5}), ({0, 1}, {0, 2, 5}), ({0, 4}, {0, 3}), ({0}, {0, 3})]
    pairs = _counter(rows, min_count=1).result()
    m = pairs.matrix(torch.tensor([0, 1, 4]), torch.tensor([0, 2, 3, 5]))
    assert m.flatten().tolist() == pytest.approx([1, 0, 0, 0,
                                                  0, 1, -1, 1,
                                                  0, 0, 0, 0], abs=1e-6)
    empty = PairCounter(D, delta=DELTA).result()  # no row at all: no pair, every lookup -1
    assert len(empty.keys) == 0 and empty.matrix(torch.tensor([1]), torch.tensor([2, 3])).tolist() == [[-1.0, -1.0]]
    assert empty.agreement(_max_acts({1}, 0), _max_acts({2}, 1)) is None


def test_agreement_is_the_mean_npmi_over_the_rows_known_features():
    pairs = _counter(min_count=3).result()
    n_text, n_image, npmi = _brute()
    # a new row: text features 1, 3, 5 and image features 0, 2, 4; with min_count 3 the known ones are text 1 and
    # 3 (4 rows each; 5 is on 2) and image 2 and 4 (5 and 4 rows; 0 is on 1)
    text, image = {1, 3, 5}, {0, 2, 4}
    known_t = [a for a in sorted(text) if n_text[a] >= 3]
    known_i = [b for b in sorted(image) if n_image[b] >= 3]
    assert known_t == [1, 3] and known_i == [2, 4]
    expected = sum(npmi.get((a, b), -1.0) for a in known_t for b in known_i) / 4
    assert pairs.agreement(_max_acts(text, 100), _max_acts(image, 101)) == pytest.approx(expected, abs=1e-6)
    # only unknown features on one side: no pair to judge the row by
    assert pairs.agreement(_max_acts({5}, 102), _max_acts(image, 103)) is None
    assert pairs.agreement(_max_acts(text, 104), _max_acts(set(), 105)) is None
    assert pairs.summary() == {"n_rows": 8, "n_pairs": len(npmi), "delta": DELTA, "min_count": 3,
                               "text_features": 2, "image_features": 2}


def test_counts_merge_as_they_go_with_the_same_result_and_bounded_memory():
    """A buffer of a few keys gives, bit for bit, what counting every key at the end gives, and holds at most the
    distinct pairs plus the buffer (issue 23: memory by distinct pairs, not rows x pairs)."""
    rng = torch.Generator().manual_seed(0)
    rows = [(torch.rand(40, generator=rng) * 2, torch.rand(40, generator=rng) * 2) for _ in range(300)]
    at_end = PairCounter(40, delta=1.6, min_count=1, dense=False)
    merging = PairCounter(40, delta=1.6, min_count=1, merge_every=50, dense=False)
    peak = 0
    for t, i in rows:
        at_end.observe(t, i)
        merging.observe(t, i)
        peak = max(peak, merging.held_keys)
    held_at_end = at_end.held_keys
    a, b = at_end.result(), merging.result()
    assert torch.equal(a.keys, b.keys) and torch.equal(a.npmi, b.npmi)
    # brute force: the distinct (text, image) pairs over all rows
    distinct = {(x, y) for t, i in rows for x in (t > 1.6).nonzero().flatten().tolist()
                for y in (i > 1.6).nonzero().flatten().tolist()}
    assert len(b.keys) == len(distinct)
    row_pairs = max(int((t > 1.6).sum()) * int((i > 1.6).sum()) for t, i in rows)
    # the buffer never outgrows max(its size, half the table) (or one row's pairs)
    assert peak <= len(distinct) + max(50, len(distinct) // 2, row_pairs)
    assert held_at_end == sum(int((t > 1.6).sum()) * int((i > 1.6).sum()) for t, i in rows) > peak  # every row's


@pytest.mark.parametrize("budget", [1, 7, 1 << 22])
def test_row_agreement_equals_the_mean_over_every_pair_looked_up(budget, monkeypatch):
    """agreement and agreement_each (many rows against one image) against the mean of a brute-force npmi look-up
    over every (known text, known image) pair: rows with many text features (one sparse product with the table) and
    rows with one or two (their entries gathered a few at a time: budget, or all at once)."""
    d = 40
    rng = torch.Generator().manual_seed(3)
    counter = PairCounter(d, delta=1.2, min_count=2)
    for _ in range(200):
        counter.observe(torch.rand(d, generator=rng) * 2, torch.rand(d, generator=rng) * 2)
    pairs = counter.result()
    full = pairs.lifted_sums
    monkeypatch.setattr(pairs, "lifted_sums", lambda t, i: full(t, i, budget=budget))

    def brute(t, i):
        a = [x for x in range(d) if t[x] > 1.2 and pairs.n_text[x] >= 2]
        b = [y for y in range(d) if i[y] > 1.2 and pairs.n_image[y] >= 2]
        if not a or not b:
            return None
        return sum(npmi for x in a for npmi in pairs.matrix(torch.tensor([x]), torch.tensor(b))[0].tolist()) / (
            len(a) * len(b))

    rows = torch.rand(12, d, generator=rng) * 2
    rows[3] = 0.0  # no text feature: None
    rows[6:, 2:] = 0.0  # at most two text features: few table entries, gathered (the others: one sparse product)
    image = torch.rand(d, generator=rng) * 2
    for t in rows:
        want = brute(t, image)
        got = pairs.agreement(t, image)
        assert (got is None) if want is None else got == pytest.approx(want, abs=1e-9)
    each = pairs.agreement_each(rows, image)
    assert [w is None for w in each] == [brute(t, image) is None for t in rows]
    assert [w for w in each if w is not None] == pytest.approx([brute(t, image) for t in rows if brute(t, image)
                                                               is not None], abs=1e-9)
    assert pairs.agreement_each(rows, torch.zeros(d)) == [None] * 12  # no image feature: nothing to judge by

"""Bounded counting (saev_curate.curation.counting, issue 23): the merged tables against brute-force counts
(collections.Counter) on small random streams, exact below the cap and within the stated undercount beyond it;
the pair counter's and the read-out counter's tables bit for bit equal to counting everything at the end."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from saev_curate.core.errors import InputError
from saev_curate.curation.counting import DenseCounter, KeyCounter, key_counter
from saev_curate.curation.pairs import PairCounter
from saev_curate.curation.readout import ReadoutCounter


def _stream(seed: int, n_rows: int = 200, n_keys: int = 400) -> list[torch.Tensor]:
    """Rows of distinct keys with a skewed (Zipf-like) popularity: a few frequent keys, a long tail of rare ones."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, n_keys + 1, dtype=torch.float64) ** 1.1
    out = []
    for _ in range(n_rows):
        size = int(torch.randint(1, 30, (1,), generator=g))
        out.append(torch.multinomial(p, size, replacement=False, generator=g) * 7919 + 3)  # spread-out int64 keys
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_without_a_cap_or_below_it(seed):
    rows = _stream(seed)
    truth = Counter(k for r in rows for k in r.tolist())
    for counter in (KeyCounter(capacity=None, merge_every=37), KeyCounter(capacity=len(truth), merge_every=11)):
        for r in rows:
            counter.add(r)
        keys, counts = counter.result()
        assert counter.max_undercount == 0
        assert keys.tolist() == sorted(truth) and counts.tolist() == [truth[k] for k in sorted(truth)]


@pytest.mark.parametrize("seed,capacity", [(0, 40), (1, 64), (2, 100), (3, 16)])
def test_a_capped_count_keeps_its_stated_error_bound(seed, capacity):
    rows = _stream(seed)
    truth = Counter(k for r in rows for k in r.tolist())
    assert len(truth) > capacity  # the cap is reached
    counter = KeyCounter(capacity=capacity, merge_every=25)
    for r in rows:
        counter.add(r)
        # memory stays bounded: the table by the cap, the buffer by max(merge_every, half the table)
        assert len(counter.keys) <= capacity and counter.held <= capacity + max(25, capacity // 2)
    keys, counts = counter.result()
    floor = counter.max_undercount
    assert 0 < floor < max(truth.values())
    kept = dict(zip(keys.tolist(), counts.tolist()))
    for k, n in truth.items():
        if k in kept:
            assert kept[k] <= n <= kept[k] + floor, (k, n, kept[k], floor)  # low by at most the floor
        else:
            assert n <= floor, (k, n, floor)  # only keys seen at most `floor` times may be missing
    assert set(kept) <= set(truth) and keys.tolist() == sorted(kept)
    heavy = [k for k, n in truth.items() if n > floor]
    assert heavy and all(k in kept for k in heavy)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_counts_equal_a_brute_force_count_and_are_chosen_by_size(seed):
    rows = [r % 2000 for r in _stream(seed)]  # keys in a small range [0, 2000)
    truth = Counter(k for r in rows for k in r.tolist())
    dense = DenseCounter(2000)
    for r in rows:
        dense.add(r)
    keys, counts = dense.result()
    assert dense.max_undercount == 0 and dense.held == 2000
    assert keys.tolist() == sorted(truth) and counts.tolist() == [truth[k] for k in sorted(truth)]
    # dense while its 4 bytes per key are no more than the capped table's 16 bytes per kept key
    assert isinstance(key_counter(400, capacity=100), DenseCounter)
    assert isinstance(key_counter(401, capacity=100), KeyCounter)
    assert isinstance(key_counter(1 << 20, capacity=None), DenseCounter)


def test_bad_capacities_are_clear():
    with pytest.raises(InputError, match="capacity"):
        KeyCounter(capacity=1)
    with pytest.raises(InputError, match="merge_every"):
        KeyCounter(merge_every=0)


def _pair_rows(seed: int, d: int, n: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(d, generator=g) * 2, torch.rand(d, generator=g) * 2) for _ in range(n)]


def _pair_truth(rows, delta: float) -> Counter:
    """Brute force: on how many rows each (text feature, image feature) pair fired together."""
    return Counter((x, y) for t, i in rows for x in (t > delta).nonzero().flatten().tolist()
                   for y in (i > delta).nonzero().flatten().tolist())


def test_pair_counter_default_and_uncapped_equal_bit_for_bit_and_rows_wider_than_the_buffer_are_sliced():
    rows = _pair_rows(0, 40, 120)
    exact = PairCounter(40, delta=1.2, min_count=1, capacity=None, dense=False)
    default = PairCounter(40, delta=1.2, min_count=1)  # 40^2 pairs: a dense table, exact by construction
    sliced = PairCounter(40, delta=1.2, min_count=1, merge_every=7, dense=False)  # rows wider than the first buffers
    for t, i in rows:
        for c in (exact, default, sliced):
            c.observe(t, i)
        assert sliced.held_keys <= 40 * 40 + 40 * 40 // 2
    assert default.held_keys == 40 * 40  # the dense table: one count per possible pair
    a, b, c = exact.result(), default.result(), sliced.result()
    for other in (b, c):
        assert torch.equal(a.keys, other.keys) and torch.equal(a.npmi, other.npmi) and other.max_undercount == 0
    truth = _pair_truth(rows, 1.2)
    assert [(k // 40, k % 40) for k in a.keys.tolist()] == sorted(truth)
    assert "max_undercount" not in a.summary()


def test_pair_counter_with_a_cap_states_its_undercount():
    rows = _pair_rows(1, 30, 150)
    truth = _pair_truth(rows, 1.0)
    capped = PairCounter(30, delta=1.0, min_count=1, capacity=200, merge_every=100)
    for t, i in rows:
        capped.observe(t, i)
    p = capped.result()
    floor = p.max_undercount
    assert floor > 0 and len(p.keys) <= 200 and p.summary()["max_undercount"] == floor
    kept = {(k // 30, k % 30) for k in p.keys.tolist()}
    assert all(n <= floor for pair, n in truth.items() if pair not in kept)
    assert all(pair in kept for pair, n in truth.items() if n > floor)


def _readout_brute(rows, d_sae: int, delta: float):
    """The read-out's counts as defined: vocabulary = the tokens of any row, n(t), n(k), n(k, t) by loops."""
    vocab = sorted({t for _, toks in rows for t in toks.tolist()})
    n_token = Counter(t for _, toks in rows for t in set(toks.tolist()))
    n_slot = [0] * d_sae
    together = Counter()
    for z, toks in rows:
        feats = (z > delta).nonzero().flatten().tolist()
        for k in feats:
            n_slot[k] += 1
            for t in set(toks.tolist()):
                together[(k, vocab.index(t))] += 1
    return vocab, [n_token[t] for t in vocab], n_slot, together


def test_readout_counter_merges_as_it_goes_with_the_exact_counts():
    g = torch.Generator().manual_seed(4)
    rows = [(torch.rand(50, generator=g) * 2, torch.randint(0, 3000, (int(torch.randint(1, 9, (1,), generator=g)),),
                                                            generator=g)) for _ in range(80)]
    counter = ReadoutCounter(50, delta=1.5, merge_every=13)
    for z, toks in rows:
        counter.observe(z, toks)
    r = counter.result()
    vocab, n_token, n_slot, together = _readout_brute(rows, 50, 1.5)
    n_vocab = len(vocab)
    assert r.vocab.tolist() == vocab and r.n_token.tolist() == n_token and r.n_slot.tolist() == n_slot
    assert r.keys.tolist() == [k * n_vocab + v for k, v in sorted(together)]
    assert r.counts.tolist() == [together[p] for p in sorted(together)]
    assert r.n_rows == 80 and r.max_undercount == 0 and "max_undercount" not in r.summary()


def test_readout_observe_each_counts_one_row_per_token():
    g = torch.Generator().manual_seed(5)
    z = torch.rand(60, 40, generator=g) * 2
    tokens = torch.randint(0, 500, (60,), generator=g)
    counter = ReadoutCounter(40, delta=1.7, merge_every=9)
    counter.observe_each(z[:25], tokens[:25])
    counter.observe_each(z[25:], tokens[25:])
    r = counter.result()
    vocab, n_token, n_slot, together = _readout_brute([(z[i], tokens[i:i + 1]) for i in range(60)], 40, 1.7)
    assert r.n_rows == 60 and r.vocab.tolist() == vocab and r.n_token.tolist() == n_token
    assert r.n_slot.tolist() == n_slot and r.counts.tolist() == [together[p] for p in sorted(together)]
    assert r.keys.tolist() == [k * len(vocab) + v for k, v in sorted(together)]


def test_the_stated_undercount_never_exceeds_the_rows_seen_when_a_row_overflows_the_table():
    """Real shapes: one row holds more pairs than the cap, so the table prunes several times within a row; the
    floor would rise once per prune, but a pair occurs at most once per row, so the bound is the rows seen."""
    rows = _pair_rows(3, 30, 6)
    truth = _pair_truth(rows, 0.2)
    capped = PairCounter(30, delta=0.2, min_count=1, capacity=40, merge_every=20)
    for t, i in rows:
        capped.observe(t, i)
        assert capped.max_undercount <= capped.n_rows
    p = capped.result()
    assert 0 < p.max_undercount <= len(rows)
    kept = {(k // 30, k % 30) for k in p.keys.tolist()}
    assert all(n <= p.max_undercount for pair, n in truth.items() if pair not in kept)

"""Streaming feature statistics against brute force over all activations of a small random case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saev_curate.inspect.features import FeatureStats, RunningHistogram
from saev_curate.inspect.labels import concept_precision, interpretable_share, row_concepts

N, T, F = 37, 9, 12


def random_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(N, T, F, generator=g) * torch.linspace(0.5, 40, F)  # features on very different scales
    z = z * (torch.rand(N, T, F, generator=g) < 0.15)  # sparse
    z[:, :, 0] = 0  # a dead feature
    valid = torch.ones(N, T, dtype=torch.bool)
    for i in range(N):
        valid[i, T - i % 4:] = False  # rows of different lengths (padding at the end)
    is_image = torch.zeros(N, T, dtype=torch.bool)
    is_image[:, 1:4] = True
    ids = torch.randint(5, 50, (N, T), generator=g)
    return z, valid, is_image, ids


def stream(z, valid, is_image, ids, batch: int = 5, **kw) -> FeatureStats:
    stats = FeatureStats(F, **kw)
    for s in range(0, N, batch):
        stats.observe(z[s:s + batch], valid[s:s + batch], is_image[s:s + batch], ids[s:s + batch],
                      list(range(s, min(s + batch, N))))
    return stats


def test_running_histogram_equals_numpy_over_the_final_bins():
    rng = np.random.default_rng(1)
    h = RunningHistogram(3, n_bins=16)
    seen = {f: [] for f in range(3)}
    for step in range(20):  # values grow over time, so the range doubles several times
        f = rng.integers(0, 3, 50)
        v = rng.random(50) * (step + 1) ** 2 * (f + 1)
        v[::7] = 0  # zeros are not counted
        h.add(torch.tensor(f), torch.tensor(v))
        for a, b in zip(f, v):
            if b > 0:
                seen[int(a)].append(float(b))
    for f in range(3):
        edges = h.edges(f)
        want, _ = np.histogram(seen[f], bins=edges)
        assert h.counts[f].tolist() == want.tolist()
        assert max(seen[f]) < edges[-1] <= 2 * max(seen[f]) * 2  # a power of two above the largest value


def test_frequency_mean_and_histogram_against_brute_force():
    z, valid, is_image, ids = random_case()
    stats = stream(z, valid, is_image, ids)
    zv = z * valid[:, :, None]
    n_tok = int(valid.sum())
    assert stats.n_tokens == n_tok and stats.n_rows == N
    for k in range(F):
        acts = zv[:, :, k][valid]
        fired = acts[acts > 0]
        assert int(stats.tokens_firing[k]) == len(fired)
        assert float(stats.frequency()[k]) == pytest.approx(len(fired) / n_tok)
        assert float(stats.mean_activation()[k]) == pytest.approx(float(fired.mean()) if len(fired) else 0.0)
        assert int(stats.rows_firing[k]) == int((zv[:, :, k].amax(1) > 0).sum())
        img = zv[:, :, k][valid & is_image]
        assert int(stats.image_tokens_firing[k]) == int((img > 0).sum())
        if len(fired):
            want, _ = np.histogram(fired.double().numpy(), bins=stats.histogram.edges(k))
            assert stats.histogram.counts[k].tolist() == want.tolist()
    assert stats.live.tolist() == [k for k in range(F) if (zv[:, :, k] > 0).any()]


def test_top_k_rows_and_their_tokens_against_brute_force():
    z, valid, is_image, ids = random_case(2)
    stats = stream(z, valid, is_image, ids, top_k=4, batch=3)
    zv = z * valid[:, :, None]
    for k in range(1, F):
        row_max = zv[:, :, k].amax(1)
        firing = (row_max > 0).nonzero().flatten()
        want = sorted(firing.tolist(), key=lambda r: -float(row_max[r]))[:4]
        got = [r for r in stats.top.row[k].tolist() if r >= 0]
        assert sorted(float(row_max[r]) for r in got) == sorted(float(row_max[r]) for r in want)
        for slot, r in enumerate(stats.top.row[k].tolist()):
            if r < 0:
                continue
            real = stats.top.ids[k, slot] >= 0
            assert stats.top.ids[k, slot][real].tolist() == ids[r][valid[r]].tolist()
            assert torch.equal(stats.top.tokens[k, slot][real], zv[r, :, k][valid[r]])
            assert stats.top.is_image[k, slot][real].tolist() == is_image[r][valid[r]].tolist()
            assert float(stats.top.value[k, slot]) == float(row_max[r])


def test_a_sample_as_large_as_the_firing_rows_holds_them_all_and_bands_split_it():
    z, valid, is_image, ids = random_case(3)
    stats = stream(z, valid, is_image, ids, sample=N)
    zv = z * valid[:, :, None]
    for k in range(F):
        firing = set((zv[:, :, k].amax(1) > 0).nonzero().flatten().tolist())
        assert {r for r in stats.sample.row[k].tolist() if r >= 0} == firing
    bands = stats.quantile_bands(5, n_bands=4)
    assert sum(len(b["slots"]) for b in bands) == len([r for r in stats.sample.row[5].tolist() if r >= 0])
    assert [b["bin_max"] for b in bands] == sorted((b["bin_max"] for b in bands), reverse=True)
    assert all(bands[i]["bin_min"] >= bands[i + 1]["bin_max"] for i in range(len(bands) - 1))


def test_a_small_sample_is_uniform_over_firing_rows():
    # one feature firing on all 40 rows; a sample of 4 over many seeds hits every row about equally often
    z = torch.ones(40, 2, 1)
    hits = np.zeros(40)
    for seed in range(300):
        s = FeatureStats(1, sample=4, top_k=1, seed=seed)
        for a in range(0, 40, 8):
            s.observe(z[a:a + 8], torch.ones(8, 2, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.bool),
                      torch.ones(8, 2, dtype=torch.long), list(range(a, a + 8)))
        hits[s.sample.row[0].numpy()] += 1
    assert hits.sum() == 1200 and hits.min() > 10 and hits.max() < 55  # expected 30 each


def test_cooccurrence_by_hand():
    z, valid, is_image, ids = random_case(4)
    stats = stream(z, valid, is_image, ids)
    fired = (z * valid[:, :, None]).amax(1) > 0  # [N, F]
    k = 7
    got = {c["feature"]: c["jaccard"] for c in stats.cooccurring(k, top=F)}
    for j in range(F):
        if j == k:
            continue
        both, either = int((fired[:, k] & fired[:, j]).sum()), int((fired[:, k] | fired[:, j]).sum())
        if both:
            assert got[j] == pytest.approx(both / either)
        else:
            assert j not in got


def test_concept_precision_on_a_hand_made_case():
    # feature 0 fires on rows 0-3 (three sevens and a two), feature 1 on every row, feature 2 on one row only
    rows = [{"concept": {"kind": "digit", "digit": d}} for d in (7, 7, 7, 2, 3, 3)]
    z = torch.zeros(6, 1, 3)
    z[:4, 0, 0] = 1.0
    z[:, 0, 1] = 2.0
    z[5, 0, 2] = 1.0
    s = FeatureStats(3)
    s.observe(z, torch.ones(6, 1, dtype=torch.bool), torch.zeros(6, 1, dtype=torch.bool),
              torch.ones(6, 1, dtype=torch.long), list(range(6)), [row_concepts(r) for r in rows])
    p = concept_precision(s, min_rows=2)
    assert p[0]["concept"] == "kind=digit" and p[0]["precision"] == 1.0  # every row is a digit
    s2 = FeatureStats(3)
    s2.observe(z, torch.ones(6, 1, dtype=torch.bool), torch.zeros(6, 1, dtype=torch.bool),
               torch.ones(6, 1, dtype=torch.long), list(range(6)), [row_concepts(r)[1:] for r in rows])
    p = concept_precision(s2, min_rows=2)
    assert p[0] == {"concept": "digit=7", "precision": 0.75, "recall": 1.0, "rows": 4}
    assert p[1]["precision"] == pytest.approx(0.5) and 2 not in p  # one row: below min_rows
    share = interpretable_share(s2, threshold=0.7, min_rows=2)
    assert (share["live"], share["meeting"], share["share"]) == (3, 1, 1 / 3)


def test_row_concepts_reads_the_testbed_record():
    row = {"concept": {"kind": "scene", "digit": None, "shape": "circle", "colour": "red", "count": 3,
                       "size": "big", "position": ["top"], "brightness": None, "source": "drawn"}}
    assert row_concepts(row) == ["kind=scene", "shape=circle", "colour=red", "count=3", "size=big", "position=top"]
    assert row_concepts({"prompt": "x"}) == []


def test_pair_index_finds_each_features_strongest_partners_as_a_scan_does():
    from saev_curate.curation.pairs import PairCounter
    from saev_curate.inspect.site import PairIndex

    g = torch.Generator().manual_seed(5)
    counter = PairCounter(10, delta=0.5, min_count=3)
    for _ in range(60):
        counter.observe(torch.rand(10, generator=g) * (torch.arange(10) % 3 + 1) / 2, torch.rand(10, generator=g))
    pairs = counter.result()
    index = PairIndex(pairs)
    d = pairs.d_sae
    for f in range(d):
        scan_text = sorted(((int(k % d), float(v)) for k, v in zip(pairs.keys, pairs.npmi)
                            if int(k // d) == f and pairs.n_image[int(k % d)] >= 3), key=lambda x: -x[1])[:6]
        scan_image = sorted(((int(k // d), float(v)) for k, v in zip(pairs.keys, pairs.npmi)
                             if int(k % d) == f and pairs.n_text[int(k // d)] >= 3), key=lambda x: -x[1])[:6]
        got = index.partners(f)
        want_text = scan_text if pairs.n_text[f] >= 3 else []
        want_image = scan_image if pairs.n_image[f] >= 3 else []
        assert [p["npmi"] for p in got["as_text"]] == pytest.approx([v for _, v in want_text])
        assert [p["npmi"] for p in got["as_image"]] == pytest.approx([v for _, v in want_image])
        assert {p["feature"] for p in got["as_text"]} <= {k for k, _ in scan_text} | set(range(d))

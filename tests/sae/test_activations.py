"""Activation stream, shuffle buffer and on-disk cache: counted against per-row captures."""

from __future__ import annotations

import itertools

import pytest
import torch

from saev_curate.core.errors import InputError
from saev_curate.sae.training.activations import ActivationCache, ActivationStream, StreamConfig, shuffle_buffer
from saev_curate.vlm.capture import capture_activations
from saev_curate.vlm.rows import prepare_batch


def rows_with_images(images, n=10):
    return [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"describe {i}" + " more" * (i % 4)}]},
                          {"role": "assistant", "content": [{"type": "text", "text": f"picture number {i}"}]}],
             "images": [images[i % len(images)]]} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    return model, processor, rows_with_images(images)


def test_chunks_hold_exactly_the_unpadded_non_special_tokens(setup):
    model, processor, rows = setup
    stream = ActivationStream(model, processor, rows, StreamConfig(layer=1, model_batch_size=4))
    vectors = torch.cat([v for v, _ in stream.chunks(0)])
    tags = torch.cat([t for _, t in stream.chunks(0)])
    expected_img = expected_txt = 0
    singles = []
    for row in rows:  # one row at a time: no padding exists to leak in
        acts = capture_activations(model, prepare_batch(processor, [row], mode="full"), 1,
                                   exclude_special_tokens=True, processor=processor)
        expected_img += int(acts.image_mask.sum())
        expected_txt += int(acts.text_mask.sum())
        singles.append(acts.resid[0][acts.image_mask[0] | acts.text_mask[0]])
    assert int(tags.sum()) == expected_img and int((~tags).sum()) == expected_txt
    # same vectors as the single-row captures, whatever the (seeded) row order
    ref = torch.cat(singles)
    assert torch.allclose(vectors.sum(0), ref.sum(0), atol=1e-3)
    assert torch.allclose(torch.sort(vectors.norm(dim=-1)).values, torch.sort(ref.norm(dim=-1)).values, atol=1e-4)


def test_image_text_ratio_cap(setup):
    model, processor, rows = setup
    stream = ActivationStream(model, processor, rows, StreamConfig(layer=1, max_image_text_ratio=0.5))
    for _, tags in stream.chunks(0):
        assert int(tags.sum()) <= 0.5 * int((~tags).sum())
    uncapped = ActivationStream(model, processor, rows, StreamConfig(layer=1))
    assert any(int(t.sum()) > 0.5 * int((~t).sum()) for _, t in uncapped.chunks(0))  # the cap did something


def test_shuffle_buffer_is_a_bounded_permutation_that_mixes():
    chunks = [(torch.arange(i * 50, (i + 1) * 50, dtype=torch.float32)[:, None], torch.zeros(50, dtype=torch.bool))
              for i in range(20)]
    held = []

    def source():
        for c in chunks:
            held.append(len(held) * 50)
            yield c

    out = list(shuffle_buffer(source(), batch_size=16, buffer_tokens=200, gen=torch.Generator().manual_seed(0)))
    values = torch.cat([v for v, _ in out]).flatten()
    assert len(values) == (1000 // 16) * 16 and len(set(values.tolist())) == len(values)  # no token twice
    first = out[0][0].flatten() // 50
    assert len(set(first.tolist())) >= 3  # the first batch already mixes several source chunks
    # the buffer never reads far ahead: when the first batch came out, at most buffer+one chunk had been read
    assert len(list(itertools.takewhile(lambda h: h <= 250, held))) <= 6


def test_cache_round_trip_and_exact_resume(setup, tmp_path):
    model, processor, rows = setup
    stream = ActivationStream(model, processor, rows, StreamConfig(layer=2, model_batch_size=3))
    cache = ActivationCache.write(stream, tmp_path / "cache", shard_rows=3, progress=False,
                                  metadata={"model": "tiny"})
    direct = torch.cat([v for v, _ in stream.chunks(0)])
    stored, tags = cache.all()
    assert torch.equal(stored, direct) and cache.n_tokens == len(direct) and len(cache.shards) > 3
    assert cache.meta["model"] == "tiny" and cache.meta["layer"] == 2
    cache = ActivationCache(tmp_path / "cache", pool_tokens=150)
    full = list(itertools.islice(cache.iter_batches(32, seed=1), 40))  # > 1 epoch
    resumed = list(itertools.islice(cache.iter_batches(32, seed=1, start_step=17), 23))
    for a, b in zip(full[17:], resumed):
        assert torch.equal(a, b)
    # within an epoch no cached token comes out more often than it is stored (rows share images, so
    # identical vectors do exist): compare multisets
    from collections import Counter

    key = lambda v: tuple(round(x, 5) for x in v[:4].tolist())  # noqa: E731
    stored_counts = Counter(key(v) for v in stored)
    emitted = Counter(key(v) for v in torch.cat(full[:5]))
    assert all(stored_counts[k] >= n for k, n in emitted.items())


def test_stream_resume_replays_identically(setup):
    model, processor, rows = setup
    stream = ActivationStream(model, processor, rows, StreamConfig(layer=1, buffer_tokens=128))
    full = list(itertools.islice(stream.iter_batches(32, seed=3), 12))
    resumed = list(itertools.islice(stream.iter_batches(32, seed=3, start_step=7), 5))
    for a, b in zip(full[7:], resumed):
        assert torch.equal(a, b)


def test_bad_rows_are_listed_and_the_rest_used(setup, images):
    model, processor, rows = setup
    bad = rows[:4] + [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
                       "images": [b"not an image"]}]
    stream = ActivationStream(model, processor, bad, StreamConfig(layer=1))
    with pytest.warns(UserWarning, match="1 of 5 rows failed"):
        chunks = list(stream.chunks(0))
    assert list(stream.row_errors) == [4]
    assert sum(len(v) for v, _ in chunks) > 0


def test_cache_refuses_shards_it_has_no_record_of(setup, tmp_path):
    model, processor, rows = setup
    stream = ActivationStream(model, processor, rows, StreamConfig(layer=2, model_batch_size=3))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "shard_00000.safetensors").write_bytes(b"from an earlier version")
    with pytest.raises(InputError, match="no record of their settings"):
        ActivationCache.write(stream, tmp_path / "cache", shard_rows=3, progress=False)

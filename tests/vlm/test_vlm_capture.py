"""capture_activations against an independent full forward, for every tiny model family."""

from __future__ import annotations

import pytest
import torch

from saev_curate.core.errors import InputError, SaevError
from saev_curate.testing import FAMILIES as TINY_FAMILIES
from saev_curate.vlm import (
    capture_activations,
    check_sae_fits,
    decoder_layers,
    prepare_batch,
    resolve_layer,
    special_token_ids,
)

FAMILIES = list(TINY_FAMILIES)


def _rows(images):
    """Rows of several formats with 1, 2 and 1 images, of different lengths (so padding happens)."""
    a, b, c, d = images
    return [
        {"prompt": "What is in this picture?", "chosen": "A cat.", "rejected": "A dog.", "images": [a]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare the two"},
                                             {"type": "image"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "They differ in colour."}]},
            ],
            "images": [b, c],
        },
        {"question": "How many birds are there on the branch in the photo?", "image": d, "response_1": "two",
         "response_2": "three", "overall_response": 2},
    ]


def _expected_image_tokens(family, processor, pil_rows, inputs):
    """Per row, per image: the processor's own count from image sizes (independent of tokenisation)."""
    if family == "idefics3":  # tiles actually produced x tokens per tile (per row)
        pam = inputs["pixel_attention_mask"]
        tiles = pam.flatten(2).any(-1).sum(-1)
        return [[int(t) * processor.image_seq_len] for t in tiles]
    out = []
    for ims in pil_rows:
        sizes = [(im.height, im.width) for im in ims]
        out.append(list(processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_equals_full_forward(family, side, tiny_vlm, images):
    model, processor = tiny_vlm(family)
    rows = _rows(images)
    pb = prepare_batch(processor, rows, mode="chosen", padding_side=side)
    assert pb.kept == [0, 1, 2] and pb.row_errors == [None, None, None]
    n = len(decoder_layers(model))
    with torch.no_grad():
        hs = model(**pb.inputs, output_hidden_states=True, use_cache=False).hidden_states
    assert len(hs) == n + 1
    am = pb.inputs["attention_mask"].bool()
    lengths = am.sum(1)
    assert len(set(lengths.tolist())) > 1, "rows must differ in length so that padding is exercised"
    for layer in (0, n - 2):
        acts = capture_activations(model, pb, layer)
        assert acts.layer == layer
        assert acts.resid.shape == hs[layer + 1].shape
        torch.testing.assert_close(acts.resid[am], hs[layer + 1][am], atol=1e-5, rtol=0)

    # masks: padding is neither image nor text; image/text partition the real tokens
    assert not (acts.image_mask & ~am).any() and not (acts.text_mask & ~am).any()
    assert torch.equal(acts.image_mask | acts.text_mask, am)
    assert not (acts.image_mask & acts.text_mask).any()
    pad_pos = ~am
    if side == "left":
        for r in range(3):
            assert not pad_pos[r, -1] and (pad_pos[r].sum() == 0 or pad_pos[r, 0])
    else:
        for r in range(3):
            assert not pad_pos[r, 0] and (pad_pos[r].sum() == 0 or pad_pos[r, -1])

    # image mask counts exactly the processor's image tokens, per image
    pil_rows = [[images[0]], [images[1], images[2]], [images[3]]]
    expected = _expected_image_tokens(family, processor, pil_rows, pb.inputs)
    assert acts.image_mask.sum(1).tolist() == [sum(e) for e in expected]
    if family != "idefics3":
        for r, exp in enumerate(expected):
            got = [int((acts.image_index[r] == k).sum()) for k in range(len(exp))]
            assert got == exp
    assert acts.image_index[1].max().item() == 1 and acts.image_index[0].max().item() == 0
    assert torch.equal(acts.image_index >= 0, acts.image_mask)
    # each image's tokens come before the next image's
    for r in range(3):
        lab = acts.image_index[r][acts.image_mask[r]]
        assert torch.all(lab[1:] >= lab[:-1])
    # the image placeholder id marks exactly the image positions
    assert torch.equal(acts.image_mask, (pb.inputs["input_ids"] == model.config.image_token_id) & am)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_activations(family, tiny_vlm, images):
    """Each row captured alone (no padding) equals its real positions inside a padded batch."""
    model, processor = tiny_vlm(family)
    rows = _rows(images)
    for side in ("left", "right"):
        batched = capture_activations(model, prepare_batch(processor, rows, padding_side=side), -2)
        for r, row in enumerate(rows):
            alone = capture_activations(model, prepare_batch(processor, [row], padding_side=side), -2)
            got = batched.resid[r][batched.attention_mask[r].bool()]
            torch.testing.assert_close(got, alone.resid[0], atol=1e-4, rtol=1e-4)
            assert torch.equal(batched.image_mask[r][batched.attention_mask[r].bool()], alone.image_mask[0])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_image_index_inferred_without_prepared_batch(family, tiny_vlm, images):
    model, processor = tiny_vlm(family)
    pb = prepare_batch(processor, _rows(images), padding_side="left")
    exact = capture_activations(model, pb, 1)
    inferred = capture_activations(model, pb.inputs, 1)
    assert torch.equal(exact.image_index, inferred.image_index)
    torch.testing.assert_close(exact.resid, inferred.resid, atol=0, rtol=0)


def test_early_exit_skips_later_layers_and_removes_hooks(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    pb = prepare_batch(processor, _rows(images))
    layers = decoder_layers(model)
    # transformers installs its own (persistent) output-capturing hooks: ours must leave them as they were
    before = [list(l._forward_hooks) for l in layers]
    calls = []
    handles = [layers[i].register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i in range(len(layers))]
    head_calls = []
    h_head = model.lm_head.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        capture_activations(model, pb, 1)
    finally:
        for h in handles:
            h.remove()
        h_head.remove()
    assert calls == [0, 1] and not head_calls  # layers 0 and 1 ran; nothing after layer 1 did
    assert [list(l._forward_hooks) for l in layers] == before

    # hooks are removed even when the forward fails
    bad = dict(pb.inputs)
    bad["pixel_values"] = bad["pixel_values"][:1]
    with pytest.raises(Exception):
        capture_activations(model, bad, 1)
    assert [list(l._forward_hooks) for l in layers] == before


def test_training_mode_is_restored_and_no_grad(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    pb = prepare_batch(processor, _rows(images))
    model.train()
    try:
        acts = capture_activations(model, pb, 0)
        assert model.training
    finally:
        model.eval()
    assert not acts.resid.requires_grad


def test_exclude_special_tokens(tiny_vlm, images):
    model, processor = tiny_vlm("idefics3")
    pb = prepare_batch(processor, _rows(images))
    plain = capture_activations(model, pb, 0)
    ids = pb.inputs["input_ids"]
    tok = processor.tokenizer
    bos = tok.bos_token_id
    assert plain.text_mask[ids == bos].all()  # BOS counts as text by default (paper)
    excl = capture_activations(model, pb, 0, exclude_special_tokens=True, processor=processor)
    # every special token the tiny Idefics3 tokenizer was built with (chat roles, image markers, ...)
    names = ["<pad>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<fake_token_around_image>",
             "<end_of_utterance>", "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = {tok.convert_tokens_to_ids(t) for t in names}
    special.discard(model.config.image_token_id)
    for t in special:
        assert not excl.text_mask[ids == t].any(), tok.convert_ids_to_tokens(t)
    # ordinary words stay text; image mask unchanged
    assert torch.equal(excl.image_mask, plain.image_mask)
    assert excl.text_mask.sum() > 0 and (plain.text_mask & ~excl.text_mask).sum() > 0
    expected = plain.text_mask & ~torch.isin(ids, torch.tensor(sorted(special)))
    assert torch.equal(excl.text_mask, expected)
    # explicit ids
    only_bos = capture_activations(model, pb, 0, exclude_special_tokens=[bos])
    assert torch.equal(only_bos.text_mask, plain.text_mask & (ids != bos))
    # config-derived ids without a processor include BOS and the image boundary markers it knows
    assert bos in special_token_ids(model)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "idefics3", "gemma3"])
def test_resolve_layer_names(family, tiny_vlm):
    model, _ = tiny_vlm(family)
    n = len(decoder_layers(model))
    assert resolve_layer(model, 2) == 2
    assert resolve_layer(model, -1) == n - 1
    assert resolve_layer(model, "2") == 2
    for name in ("blocks.2.hook_resid_post", "model.layers.2", "layers.2", "model.language_model.layers.2",
                 "model.text_model.layers.2", "language_model.model.layers.2", "blocks.3.hook_resid_pre"):
        assert resolve_layer(model, name) == 2, name
    for bad in (n, -n - 1, f"blocks.{n}.hook_resid_post", "blocks.2.hook_mlp_out", "encoder.3", 1.5, "blocks.0.hook_resid_pre"):
        with pytest.raises(InputError) as e:
            resolve_layer(model, bad)
        assert "layer=" in str(e.value)
    with pytest.raises(InputError, match=f"has {n} decoder layers"):
        capture_activations(model, {"input_ids": torch.ones(1, 3, dtype=torch.long)}, n + 3)


def test_named_layer_capture_equals_int(tiny_vlm, images):
    model, processor = tiny_vlm("qwen2_vl")
    pb = prepare_batch(processor, _rows(images))
    a = capture_activations(model, pb, "blocks.1.hook_resid_post")
    b = capture_activations(model, pb, -3)
    assert torch.equal(a.resid, b.resid)


def test_model_without_image_token_id(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    pb = prepare_batch(processor, _rows(images))
    saved = model.config.image_token_id
    try:
        model.config.image_token_id = None
        with pytest.raises(InputError, match="image_token_id"):
            capture_activations(model, pb, 0)
    finally:
        model.config.image_token_id = saved


class _Cfg:
    def __init__(self, d_in, hook_layer=None, hook_name=None):
        self.d_in, self.hook_layer, self.hook_name, self.d_sae = d_in, hook_layer, hook_name, 4 * d_in


class _FakeSAE:
    def __init__(self, **kw):
        self.cfg = _Cfg(**kw)


def test_check_sae_fits(tiny_vlm):
    model, _ = tiny_vlm("gemma3")
    d = model.config.text_config.hidden_size
    check_sae_fits(model, _FakeSAE(d_in=d, hook_name="blocks.1.hook_resid_post", hook_layer=1))
    with pytest.raises(InputError, match=rf"d_in={d + 1}.*hidden size {d}"):
        check_sae_fits(model, _FakeSAE(d_in=d + 1))
    with pytest.raises(InputError, match="hook"):
        check_sae_fits(model, _FakeSAE(d_in=d, hook_layer=40))
    with pytest.raises(SaevError):
        check_sae_fits(model, object())
    # the library's own SAE class (skipped while saev_curate.sae is not importable)
    try:
        from saev_curate.sae import SAE, SAEConfig
    except ImportError:
        return
    check_sae_fits(model, SAE(SAEConfig(d_in=d, d_sae=4 * d, hook_name="blocks.2.hook_resid_post")))
    with pytest.raises(InputError, match="d_in"):
        check_sae_fits(model, SAE(SAEConfig(d_in=2 * d, d_sae=4 * d)))
    with pytest.raises(InputError, match="hook"):
        check_sae_fits(model, SAE(SAEConfig(d_in=d, d_sae=4 * d, hook_name="blocks.16.hook_resid_post")))


def test_text_only_rows_capture(tiny_vlm):
    model, processor = tiny_vlm("llava")
    pb = prepare_batch(processor, [{"prompt": "hello there"}, {"prompt": "a longer text only prompt"}],
                       require_images=False)
    acts = capture_activations(model, pb, 0)
    assert not acts.image_mask.any() and (acts.image_index == -1).all()
    assert torch.equal(acts.text_mask, acts.attention_mask.bool())

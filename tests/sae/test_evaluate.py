"""evaluate_sae against hand-built SAEs with known answers and a brute-force recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saev_curate import SAE, SAEConfig
from saev_curate.sae.evaluate import evaluate_sae
from saev_curate.vlm.capture import capture_activations
from saev_curate.vlm.rows import prepare_batch


def sft_rows(images, n=6):
    words = ["a red square", "two dots", "a line", "noise", "grey field", "stripes"]
    return [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"what is shown {i}?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": f"I see {words[i % 6]} here"}]}],
             "images": [images[i % len(images)]]} for i in range(n)]


def lossless_sae(d: int) -> SAE:
    """ReLU(x) - ReLU(-x) = x: reconstructs every vector exactly with 2d features."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, hook_name="blocks.1.hook_resid_post"))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_lossless_sae_recovers_all_ce_and_null_sae_none(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    rows = sft_rows(images)
    good = evaluate_sae(model, processor, lossless_sae(64), rows, progress=False, batch_size=4)
    assert good.ce_sae == pytest.approx(good.ce_clean, abs=1e-5)
    assert good.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert good.all.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert good.image.n_tokens > 0 and good.text.n_tokens > 0
    assert good.ce_zero > good.ce_clean  # ablating a layer's output must hurt a (random) model's predictions
    null = SAE(SAEConfig(d_in=64, d_sae=8, hook_name="blocks.1.hook_resid_post"))  # all-zero weights
    bad = evaluate_sae(model, processor, null, rows, progress=False)
    assert bad.ce_sae == pytest.approx(bad.ce_zero, abs=1e-5) and bad.ce_recovered == pytest.approx(0.0, abs=1e-4)
    assert bad.all.l0 == 0 and bad.all.dead_fraction == 1.0


def test_metrics_match_brute_force(tiny_vlm, images):
    model, processor = tiny_vlm("qwen2_vl")
    rows = sft_rows(images, n=5)
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=64, d_sae=128, hook_name="model.layers.2"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    result = evaluate_sae(model, processor, sae, rows, progress=False, batch_size=2)

    # brute force, one row at a time: no padding, no batching, plain loops over tokens
    ce = {"clean": [], "sae": [], "zero": []}
    per = {"image": [], "text": []}
    layer = model.get_decoder().layers[2]
    for row in rows:
        prepared = prepare_batch(processor, [row], mode="full")
        acts = capture_activations(model, prepared, 2, exclude_special_tokens=True, processor=processor)
        ids = acts.input_ids[0]
        for t in range(ids.shape[0]):
            if acts.image_mask[0, t]:
                per["image"].append(acts.resid[0, t])
            elif acts.text_mask[0, t]:
                per["text"].append(acts.resid[0, t])
        keep = acts.image_mask[0] | acts.text_mask[0]
        for name, fill in (("clean", None), ("sae", lambda v: sae(v)), ("zero", torch.zeros_like)):
            def hook(_m, _a, out, fill=fill):
                h = (out if isinstance(out, torch.Tensor) else out[0]).clone()
                h[0, keep] = fill(h[0, keep])
                return h if isinstance(out, torch.Tensor) else (h,) + tuple(out[1:])
            handle = layer.register_forward_hook(hook) if fill is not None else None
            with torch.no_grad():
                logits = model(**{k: v for k, v in prepared.inputs.items() if k != "text_replacement_offsets"}).logits[0]
            if handle:
                handle.remove()
            for t in range(1, ids.shape[0]):
                if acts.text_mask[0, t]:
                    ce[name].append(float(F.cross_entropy(logits[t - 1], ids[t])))
    for name in ("clean", "sae", "zero"):
        assert getattr(result, f"ce_{name}") == pytest.approx(sum(ce[name]) / len(ce[name]), rel=1e-4)
    assert result.n_ce_targets == len(ce["clean"])
    for name, vecs in per.items():
        x = torch.stack(vecs)
        with torch.no_grad():
            code, recon = sae.encode(x), sae(x)
        m = getattr(result, name)
        assert m.n_tokens == len(x)
        assert m.l0 == pytest.approx(float((code > 0).sum(-1).float().mean()), rel=1e-6)
        ev = 1 - float(((recon - x) ** 2).sum()) / float(((x - x.mean(0)) ** 2).sum())
        assert m.explained_variance == pytest.approx(ev, rel=1e-4, abs=1e-5)
        assert m.dead_fraction == pytest.approx(float(((code > 0).sum(0) == 0).float().mean()))


def test_bad_rows_are_reported_not_fatal(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    rows = sft_rows(images, n=3) + [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                     "images": ["/no/such/image.png"]}]
    result = evaluate_sae(model, processor, lossless_sae(64), rows, progress=False)
    assert list(result.row_errors) == [3] and "not found" in result.row_errors[3]
    assert result.n_rows == 3


def test_wrong_sae_width_is_a_clear_error(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    with pytest.raises(Exception, match="d_in=32 does not match"):
        evaluate_sae(model, processor, lossless_sae(32), sft_rows(images), progress=False)


def test_hook_resid_pre_sae_reads_the_previous_layer(tiny_vlm, images):
    """SAELens says hook_layer=2 for blocks.2.hook_resid_pre, but that stream is layer 1's output."""
    from saev_curate.vlm.layers import resolve_sae_layer, sae_decoder_layer

    model, processor = tiny_vlm("llava")
    sae = lossless_sae(64)
    sae.cfg.hook_name, sae.cfg.hook_layer = "blocks.2.hook_resid_pre", 2
    assert sae_decoder_layer(model, sae) == 1 and resolve_sae_layer(model, sae, None) == 1
    pre = evaluate_sae(model, processor, sae, sft_rows(images, 2), progress=False)
    explicit = evaluate_sae(model, processor, sae, sft_rows(images, 2), 1, progress=False)
    assert pre.ce_clean == explicit.ce_clean and pre.all.n_tokens == explicit.all.n_tokens

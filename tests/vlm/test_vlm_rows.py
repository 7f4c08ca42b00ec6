"""Dataset rows -> processor inputs: every row format, image form, mode, truncation and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import make_image

from saev_curate.core.errors import InputError
from saev_curate.vlm import batch_to_rows, capture_activations, load_image, prepare_batch

Q, CH, RJ = "What animal is shown here?", "A small grey cat.", "A large brown dog."


def _decode(processor, pb, k):
    ids = pb.inputs["input_ids"][k][pb.inputs["attention_mask"][k].bool()]
    return processor.tokenizer.decode(ids)


def _ref_ids(processor, messages, images, gen):
    """Independent rendering: the processor's own chat template + call on hand-built messages."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    return processor(text=[text], images=[images], return_tensors="pt")["input_ids"][0]


def _user(images_n, text):
    return {"role": "user", "content": [{"type": "image"}] * images_n + [{"type": "text", "text": text}]}


def _asst(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


ROW_FORMATS = {
    "trl_pref_str": lambda im: {"prompt": Q, "chosen": CH, "rejected": RJ, "images": [im]},
    "trl_pref_conv": lambda im: {"prompt": [_user(1, Q)], "chosen": [_asst(CH)], "rejected": [_asst(RJ)],
                                 "images": [im]},
    "trl_pref_image_col": lambda im: {"prompt": Q, "chosen": CH, "rejected": RJ, "image": im},
    "align_anything": lambda im: {"question": Q, "image": im, "response_1": RJ, "response_2": CH,
                                  "overall_response": "2"},
    "rlaif_v": lambda im: {"question": Q, "image": im, "chosen": CH, "rejected": RJ},
}


@pytest.mark.parametrize("mode", ["prompt", "chosen", "rejected"])
def test_rlaif_v_row_is_the_trl_preference_row(mode, images):
    """RLAIF-V (question/image/chosen/rejected strings) is TRL's preference row under other names."""
    from saev_curate.vlm.rows.conversations import row_to_conversation

    im = images[0]
    rlaif = {"question": Q, "image": im, "chosen": CH, "rejected": RJ, "idx": 7}
    trl = {"prompt": Q, "images": [im], "chosen": CH, "rejected": RJ}
    want = [_user(1, Q)] + {"prompt": [], "chosen": [_asst(CH)], "rejected": [_asst(RJ)]}[mode]
    assert row_to_conversation(rlaif, mode) == (want, [im], mode == "prompt")
    assert row_to_conversation(trl, mode) == row_to_conversation(rlaif, mode)


@pytest.mark.parametrize("fmt", sorted(ROW_FORMATS))
@pytest.mark.parametrize("mode", ["prompt", "chosen", "rejected", "full"])
def test_preference_rows_match_hand_built_messages(fmt, mode, tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    im = images[0]
    pb = prepare_batch(processor, [ROW_FORMATS[fmt](im)], mode=mode)
    ids = pb.inputs["input_ids"][0]
    msgs = [_user(1, Q)]
    if mode in ("chosen", "full"):
        msgs.append(_asst(CH))
    elif mode == "rejected":
        msgs.append(_asst(RJ))
    assert torch.equal(ids, _ref_ids(processor, msgs, [im], mode == "prompt"))
    text = _decode(processor, pb, 0)
    assert Q in text
    assert (CH in text) == (mode in ("chosen", "full")) and (RJ in text) == (mode == "rejected")
    assert text.endswith("<|assistant|>\n") == (mode == "prompt")
    assert pb.image_token_counts == [[16]]


def test_sft_rows(tiny_vlm, images):
    _, processor = tiny_vlm("qwen2_vl")
    a, b = images[0], images[2]
    conv = [_user(1, "Describe it."), _asst("A cat."), {"role": "user", "content": [{"type": "text", "text": "And?"}]},
            _asst("It sleeps.")]
    rows = [
        {"messages": conv, "images": [a]},
        {"prompt": "Describe it.", "completion": "A cat.", "images": [b]},
        # images embedded in the content parts (no image column)
        {"messages": [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "Hi"}]}]},
    ]
    pb = prepare_batch(processor, rows, mode="prompt")
    assert pb.kept == [0, 1, 2]
    t0 = _decode(processor, pb, 0)
    assert "A cat." in t0 and "And?" in t0 and "It sleeps." not in t0 and t0.endswith("<|assistant|>\n")
    assert torch.equal(pb.inputs["input_ids"][0][pb.inputs["attention_mask"][0].bool()],
                       _ref_ids(processor, conv[:3], [a], True))
    assert "A cat." not in _decode(processor, pb, 1)
    full = prepare_batch(processor, rows, mode="full")
    assert "It sleeps." in _decode(processor, full, 0) and "A cat." in _decode(processor, full, 1)
    chosen = prepare_batch(processor, rows[:2], mode="chosen")
    assert torch.equal(chosen.inputs["input_ids"], full.inputs["input_ids"][:2, : chosen.inputs["input_ids"].shape[1]])
    rec = prepare_batch(processor, rows, mode="rejected", on_error="record")
    assert rec.kept == [] and all("rejected" in e for e in rec.row_errors)


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3"])
def test_interleaved_document(family, tiny_vlm, images):
    model, processor = tiny_vlm(family)
    a, b = images[0], images[1]
    row = {"texts": ["First part.", None, "Middle words.", None], "images": [None, a, None, b]}
    pb = prepare_batch(processor, [row], mode="prompt")
    ref = _ref_ids(processor, [{"role": "user", "content": [
        {"type": "text", "text": "First part."}, {"type": "image"}, {"type": "text", "text": "Middle words."},
        {"type": "image"}]}], [a, b], False)
    assert torch.equal(pb.inputs["input_ids"][0], ref)
    acts = capture_activations(model, pb, 0)
    # text before the first image token, "Middle words." between the two images
    pos = torch.nonzero(acts.image_mask[0]).flatten()
    first_img = acts.image_index[0] == 0
    second_img = acts.image_index[0] == 1
    assert first_img.any() and second_img.any()
    assert torch.nonzero(first_img).max() < torch.nonzero(second_img).min()
    assert len(pos) == sum(pb.image_token_counts[0])


def _png_bytes(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_image_forms_give_identical_pixels(tiny_vlm, tmp_path):
    _, processor = tiny_vlm("llava")
    img = make_image(7, 24, 18)
    path = tmp_path / "img.png"
    img.save(path)
    forms = [img, {"bytes": _png_bytes(img), "path": None}, {"bytes": None, "path": str(path)}, str(path), path,
             _png_bytes(img), np.asarray(img), np.asarray(img).astype(np.float32) / 255.0,
             np.moveaxis(np.asarray(img), -1, 0)]
    rows = [{"prompt": "Look.", "image": f} for f in forms]
    pb = prepare_batch(processor, rows)
    assert pb.kept == list(range(len(forms)))
    pv = pb.inputs["pixel_values"]
    for k in range(1, len(forms)):
        torch.testing.assert_close(pv[k], pv[0], atol=1e-6, rtol=0, msg=f"form {k}")


def test_image_modes_and_odd_sizes(tiny_vlm):
    from PIL import Image

    rgb = make_image(3, 20, 20)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent -> white
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    i16 = Image.fromarray((np.arange(400).reshape(20, 20) * 100).astype(np.uint16))
    cases = [rgb.convert("L"), rgb.convert("1"), rgb.convert("CMYK"), rgba, pal, i16, rgb.convert("LA"),
             Image.new("RGB", (1, 1), (9, 9, 9)), Image.new("RGB", (300, 1)), Image.new("L", (2, 2000))]
    for im in cases:
        out = load_image(im)
        assert out.mode == "RGB"
        w, h = out.size
        assert max(w, h) / min(w, h) <= 50
    assert load_image(rgba).getpixel((3, 3)) == (255, 255, 255)
    gray = np.asarray(load_image(i16))
    assert gray.min() == 0 and gray.max() == 255 and (gray[..., 0] == gray[..., 2]).all()
    for family in ("llava", "qwen2_vl", "idefics3", "gemma3"):
        model, processor = tiny_vlm(family)
        pb = prepare_batch(processor, [{"prompt": "odd", "image": im} for im in cases])
        assert pb.kept == list(range(len(cases))), (family, pb.row_errors)
        acts = capture_activations(model, pb, 0)
        assert torch.isfinite(acts.resid).all()


def _bad_rows(tmp_path, images, placeholder):
    good = images[0]
    trunc = _png_bytes(make_image(5, 64, 64))[:200]
    return {
        1: ({"prompt": "x", "image": None}, "missing"),
        2: ({"prompt": "x", "image": {"bytes": None, "path": None}}, "neither"),
        3: ({"prompt": "x", "image": str(tmp_path / "nope.jpg")}, "not found"),
        4: ({"prompt": "x", "image": b"definitely not an image"}, "corrupt"),
        5: ({"prompt": "x", "image": trunc}, "truncated or corrupt"),
        6: ({"prompt": "   ", "image": good}, "empty"),
        7: ({"foo": 1}, "unrecognised row format"),
        8: ({"messages": [_user(2, "two?")], "images": [good]}, "2 image part"),
        9: ({"question": "q", "image": good, "response_1": "a", "response_2": "b", "overall_response": 3},
            "overall_response"),
        10: ({"prompt": "x"}, "no image"),
        # (row 1 above: a None image column)
        11: ({"prompt": f"Look {placeholder} here", "image": good}, "processor rejected"),
        12: ({"prompt": "x", "images": [good, 42]}, "image 1: unsupported image type"),
    }


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_bad_rows_recorded_and_good_rows_intact(family, tiny_vlm, images, tmp_path):
    model, processor = tiny_vlm(family)
    bad = _bad_rows(tmp_path, images, processor.image_token)
    good_rows = {0: {"prompt": "first good", "image": images[1]}, 13: {"prompt": "last good one", "image": images[2]}}
    rows = [good_rows.get(i) or bad[i][0] for i in range(14)]
    pb = prepare_batch(processor, rows, mode="prompt", on_error="record")
    assert pb.kept == [0, 13]
    for i, (_, needle) in bad.items():
        assert pb.row_errors[i] is not None and not pb.row_errors[i].startswith("row "), (i, pb.row_errors[i])
        assert needle in pb.row_errors[i], (i, pb.row_errors[i])
    assert pb.row_errors[0] is None and pb.row_errors[13] is None and set(pb.errors) == set(bad)
    # the kept rows' inputs (pixels included) are exactly those of the good rows alone
    batch = capture_activations(model, pb, 1)
    for k, i in enumerate(pb.kept):
        alone = capture_activations(model, prepare_batch(processor, [rows[i]]), 1)
        m = batch.attention_mask[k].bool()
        torch.testing.assert_close(batch.resid[k][m], alone.resid[0], atol=1e-4, rtol=1e-4)
    # raise mode names the first bad row
    with pytest.raises(InputError, match=r"^row 1: the image is missing \(column 'image' is None\)"):
        prepare_batch(processor, rows, on_error="raise")
    with pytest.raises(InputError, match="row 0: .*processor rejected"):
        prepare_batch(processor, [rows[11]])


def test_all_rows_bad_and_argument_errors(tiny_vlm):
    _, processor = tiny_vlm("llava")
    pb = prepare_batch(processor, [{"prompt": "x", "image": None}], on_error="record")
    assert pb.inputs is None and pb.kept == [] and len(pb.row_errors) == 1
    with pytest.raises(InputError, match="PreparedBatch has no rows"):
        capture_activations(tiny_vlm("llava")[0], pb, 0)
    for kw, needle in [({"mode": "answer"}, "mode="), ({"on_error": "skip"}, "on_error="),
                       ({"max_length": 0}, "max_length="), ({"padding_side": "middle"}, "padding_side=")]:
        with pytest.raises(InputError, match=needle):
            prepare_batch(processor, [{"prompt": "x", "image": make_image(0, 8, 8)}], **kw)


@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2_5_vl", "gemma3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_never_cuts_images(family, side, tiny_vlm, images):
    model, processor = tiny_vlm(family)
    long_q = " ".join(["Please describe every small detail of the picture carefully."] * 6)
    rows = [
        {"prompt": long_q, "chosen": CH, "rejected": RJ, "images": [images[0]]},
        {"texts": [long_q, None, "tail text after image"], "images": [None, images[1], None]},
        {"prompt": "short", "chosen": "ok", "rejected": "no", "image": images[2]},
    ]
    full = prepare_batch(processor, rows, mode="chosen", padding_side=side)
    lengths = full.inputs["attention_mask"].sum(1)
    img_id = model.config.image_token_id
    n_img = (full.inputs["input_ids"] == img_id).sum(1)
    max_len = int(lengths[2]) + 2  # row 2 fits; rows 0 and 1 must be truncated
    assert max_len < int(lengths[0]) and max_len < int(lengths[1])
    pb = prepare_batch(processor, rows, mode="chosen", max_length=max_len, padding_side=side)
    assert pb.kept == [0, 1, 2]
    am = pb.inputs["attention_mask"]
    assert am.sum(1).tolist()[:2] == [max_len, max_len]
    assert pb.truncated_tokens == [int(lengths[0]) - max_len, int(lengths[1]) - max_len, 0]
    ids = pb.inputs["input_ids"]
    assert torch.equal((ids == img_id).sum(1), n_img)  # every image token kept
    for k in range(3):
        before = full.inputs["input_ids"][k][full.inputs["attention_mask"][k].bool()].tolist()
        after = ids[k][am[k].bool()].tolist()
        # `after` is a subsequence of `before`; image blocks (and the tokens around them) are intact runs
        it = iter(before)
        assert all(t in it for t in after)
        first, last = before.index(img_id), len(before) - 1 - before[::-1].index(img_id)
        a_first = after.index(img_id)
        assert after[a_first: a_first + (last - first + 1)] == before[first: last + 1]
        # the removed tokens are text at the end (row 0) or text after the image block (row 1)
        if k == 0:
            assert after[: a_first] == before[: first]
    # the model runs on truncated inputs and matches a full forward
    acts = capture_activations(model, pb, 0)
    with torch.no_grad():
        hs = model(**pb.inputs, output_hidden_states=True, use_cache=False).hidden_states[1]
    torch.testing.assert_close(acts.resid[am.bool()], hs[am.bool()], atol=1e-5, rtol=0)


def test_truncation_refuses_when_images_alone_too_long(tiny_vlm, images):
    model, processor = tiny_vlm("llava")
    rows = [{"prompt": "two images", "images": [images[0], images[1]]}, {"prompt": "one", "image": images[2]}]
    pb = prepare_batch(processor, rows, max_length=24, on_error="record")
    assert pb.kept == [1]
    assert "max_length=24" in pb.row_errors[0] and "32" in pb.row_errors[0]
    assert pb.inputs["pixel_values"].shape[0] == 1
    capture_activations(model, pb, 0)
    with pytest.raises(InputError, match="row 0: its image blocks alone take 32 tokens"):
        prepare_batch(processor, rows, max_length=24)


def test_batch_to_rows_and_datasets_image_feature(tiny_vlm, images, tmp_path):
    import datasets

    _, processor = tiny_vlm("gemma3")
    ds = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "image": [images[0], images[1], images[2]]})
    ds = ds.cast_column("image", datasets.Image())
    raw = ds.cast_column("image", datasets.Image(decode=False))
    batch = raw[:]
    rows = batch_to_rows(batch)
    assert rows[1]["prompt"] == "b" and isinstance(rows[1]["image"], dict)
    pb_raw = prepare_batch(processor, batch)
    pb_pil = prepare_batch(processor, batch_to_rows(ds[:]))
    torch.testing.assert_close(pb_raw.inputs["pixel_values"], pb_pil.inputs["pixel_values"])

    def fn(b):
        pb = prepare_batch(processor, batch_to_rows(b), on_error="record")
        return {"n_tokens": [int(x) for x in pb.inputs["attention_mask"].sum(1)]}

    out = ds.map(fn, batched=True, batch_size=2)
    assert len(out["n_tokens"]) == 3 and min(out["n_tokens"]) > 4
    with pytest.raises(InputError, match="different lengths"):
        batch_to_rows({"a": [1, 2], "b": [1]})

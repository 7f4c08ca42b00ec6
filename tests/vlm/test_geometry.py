"""Image-token geometry against what the vision tower actually sees.

For every family: images that are black except for a white rectangle at a known place go through the real
processor.  Independently of ``saev_curate.vlm.geometry``, each image token's whiteness is read off
``pixel_values`` (un-normalised, averaged over the token's vision patches) and arranged into sequence order
by Hugging Face's own code where the family has it (LLaVA-NeXT's ``pack_image_features`` with its
``unpad_image`` and newlines, Idefics3's ``pixel_shuffle``, Gemma 3's ``avg_pool``; Qwen2-VL's patches are
stored merge-block by merge-block).  Each token's box must then be white in the same share as the token:
the share of its box inside the white rectangle equals its whiteness (up to resampling blur).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saev_curate.core.errors import InputError
from saev_curate.vlm import prepare_batch
from saev_curate.vlm.capture import capture_activations
from saev_curate.vlm.geometry import PatchBox, heatmap, image_token_boxes, overlay

FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "paligemma"]

#: per family, (width, height) of the images of row 0 and row 1 and the white rectangle of each (l, t, r, b):
#: landscape, portrait and near-square, sizes that force resizing (up and down), cropping and anyres tiles
CASES = {
    "default": [
        [((64, 48), (8, 8, 40, 32))],
        [((36, 60), (12, 20, 30, 44)), ((50, 50), (0, 25, 25, 50))],
    ],
    "gemma3": [  # only 2x2 pooled tokens per image: rectangles of a quarter image
        [((64, 48), (0, 0, 32, 24))],
        [((36, 60), (0, 0, 18, 30)), ((50, 50), (25, 25, 50, 50))],
    ],
}


def _white_square(size, rect):
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    l, t, r, b = rect
    arr[t:b, l:r] = 255
    return Image.fromarray(arr)


def _gray(ip, pv: torch.Tensor) -> torch.Tensor:
    """Channels-first normalised pixels -> [0, 1] grey, undoing the processor's normalisation."""
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(-1, *([1] * (pv.dim() - 1)))
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(-1, *([1] * (pv.dim() - 1)))
    x = pv.float() * std + mean if ip.do_normalize else pv.float()
    return x.mean(0)


def _patch_means(gray: torch.Tensor, p: int) -> torch.Tensor:
    """[H, W] -> [(H/p) * (W/p)] row-major means of p x p patches."""
    h, w = gray.shape
    return gray.reshape(h // p, p, w // p, p).mean((1, 3)).reshape(-1)


def _token_whiteness(family, model, processor, inputs, image_counts) -> list[list[float | None]]:
    """Per row, per image token in sequence order: how white the token's vision patches are (None: newline)."""
    ip = processor.image_processor
    pv = inputs["pixel_values"]
    vc = model.config.vision_config
    out: list[list[float | None]] = []
    k = 0  # global image index for families whose pixel_values list images across the batch
    for row, n_img in enumerate(image_counts):
        toks: list[float | None] = []
        for j in range(n_img):
            if family in ("llava", "paligemma"):
                toks += _patch_means(_gray(ip, pv[k]), vc.patch_size).tolist()
            elif family == "gemma3":
                g = vc.image_size // vc.patch_size
                pm = _patch_means(_gray(ip, pv[k]), vc.patch_size).view(1, 1, g, g)
                toks += model.model.multi_modal_projector.avg_pool(pm).flatten().tolist()
            elif family == "llava_next":
                from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

                sizes = inputs["image_sizes"][k:k + 1]
                n_tiles = image_size_to_num_patches(sizes[0], model.config.image_grid_pinpoints, vc.image_size)
                feats = torch.stack([_patch_means(_gray(ip, pv[k, t]), vc.patch_size) for t in range(n_tiles)])
                packed, _ = model.model.pack_image_features([feats[..., None]], sizes, "default",
                                                            image_newline=torch.tensor([-1.0]))
                toks += [None if v == -1.0 else v for v in packed[0][:, 0].tolist()]
            elif family in ("qwen2_vl", "qwen2_5_vl"):
                m = vc.spatial_merge_size
                t, gh, gw = inputs["image_grid_thw"][k].tolist()
                start = int(inputs["image_grid_thw"][:k].prod(-1).sum())
                flat = pv[start:start + t * gh * gw]  # [patches, C * T * p * p], merge blocks consecutive
                per_patch = torch.stack([_gray(ip, x.view(3, -1, 1)).mean() for x in flat])
                toks += per_patch.view(-1, m * m).mean(-1).tolist()
            k += 1
        if family == "idefics3":  # pixel_values are [rows, frames, C, H, W]; frames of all the row's images
            real = inputs["pixel_attention_mask"][row].flatten(1).any(-1)
            frames = pv[row][real]
            pm = torch.stack([_patch_means(_gray(ip, f), vc.patch_size) for f in frames])[..., None]
            shuffled = model.model.connector.pixel_shuffle(pm, model.config.scale_factor)
            toks = shuffled.mean(-1).reshape(-1).tolist()
        out.append(toks)
    return out


def _close(got, expected):
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float), atol=1e-6)


def _inside_share(box: PatchBox, rect) -> float:
    l, t, r, b = box.box
    ox = max(0.0, min(r, rect[2]) - max(l, rect[0]))
    oy = max(0.0, min(b, rect[3]) - max(t, rect[1]))
    return ox * oy / ((r - l) * (b - t))


def _batch(processor, case):
    rows = [{"messages": [{"role": "user", "content": [*([{"type": "image"}] * len(imgs)),
                                                       {"type": "text", "text": "what is white"}]}],
             "images": [_white_square(size, rect) for size, rect in imgs]} for imgs in case]
    pb = prepare_batch(processor, rows, mode="prompt")
    return pb


def _check_against_pixels(family, model, processor, case, *, padded: bool = False):
    """Every token's box is as white as its vision patches; with ``padded`` (tokens that are partly canvas
    padding, which their clipped boxes leave out) only whether it sees any white at all."""
    pb = _batch(processor, case)
    white = _token_whiteness(family, model, processor, pb.inputs, [len(c) for c in case])
    acts = capture_activations(model, pb, 0)
    shares = []
    for row, imgs in enumerate(case):
        boxes = image_token_boxes(model, processor, pb.inputs, row, [size for size, _ in imgs])
        # one box per image token, in the order capture returns image tokens
        assert len(boxes) == int(acts.image_mask[row].sum()) == len(white[row])
        idx = acts.image_index[row][acts.image_mask[row]].tolist()
        for t, (box, wv) in enumerate(zip(boxes, white[row])):
            if wv is None:  # a newline token: no region
                assert box is None
                continue
            assert box is not None, f"token {t} sees pixels but has no box"
            assert box.image == idx[t]
            share = _inside_share(box, imgs[box.image][1])
            if padded:
                assert (share > 0.05) == (wv > 0.05), f"{family} row {row} token {t}: {box.box} {share} {wv}"
            else:
                assert abs(share - wv) < 0.1, f"{family} row {row} token {t}: box {box.box} white share {share:.2f}, " \
                                          f"vision patches {wv:.2f}"
            shares.append(share)
    # not vacuous: some tokens lie (mostly) inside the white rectangles and some wholly outside
    assert sum(s > 0.5 for s in shares) >= 2 and sum(s < 0.05 for s in shares) >= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_boxes_see_what_the_vision_tower_sees(family, tiny_vlm):
    model, processor = tiny_vlm(family)
    _check_against_pixels(family, model, processor, CASES.get(family, CASES["default"]))


def test_llava_hand_computed_boxes(tiny_vlm):
    """LLaVA tiny: shortest edge 32, centre crop 32x32, patch 8 -> a 4x4 grid.  A 64x96 (w x h) image is
    resized to 32x48 (scale 1/2) and cropped 8 px from the top: token (r, c) covers original
    x in [16c, 16c+16), y in [16 + 16r, 32 + 16r)."""
    model, processor = tiny_vlm("llava")
    pb = _batch(processor, [[((64, 96), (0, 0, 1, 1))]])
    boxes = image_token_boxes(model, processor, pb, 0, [(64, 96)])  # a PreparedBatch works as its inputs
    expected = [(16.0 * c, 16.0 + 16 * r, 16.0 * c + 16, 32.0 + 16 * r) for r in range(4) for c in range(4)]
    _close([b.box for b in boxes], expected)


def test_llava_next_hand_computed_boxes(tiny_vlm):
    """LLaVA-NeXT tiny: tile 16, patch 8 (2x2 features per tile), pinpoints [[16,32],[32,16],[32,32]]
    (height, width).  A 64x32 (w x h) image picks 16x32 (h x w): resized to 32x16, no padding, 1x2 tiles ->
    a 2x4 feature grid, nothing unpadded.  Tokens: the 4 base cells (the whole image squashed to 16x16: each
    base cell is 32x16 original pixels), then each of the 2 feature rows (4 cells of 16x16) and a newline."""
    model, processor = tiny_vlm("llava_next")
    pb = _batch(processor, [[((64, 32), (0, 0, 1, 1))]])
    boxes = image_token_boxes(model, processor, pb.inputs, 0, [(64, 32)])
    base = [(32.0 * c, 16.0 * r, 32.0 * c + 32, 16.0 * r + 16) for r in range(2) for c in range(2)]
    rows = []
    for r in range(2):
        rows += [(16.0 * c, 16.0 * r, 16.0 * c + 16, 16.0 * r + 16) for c in range(4)] + [None]
    got = [None if b is None else b.box for b in boxes]
    _close(got[:4], base)
    assert [g is None for g in got[4:]] == [e is None for e in rows]
    _close([g for g in got[4:] if g is not None], [e for e in rows if e is not None])


def test_llava_next_unpads_like_hf():
    """Only a 32x32 pinpoint (2x2 tiles, a 4x4 grid of 8 px features).  A 64x16 (w x h) image is resized to
    32x8 and pasted 12 px down the 32x32 canvas.  HF's unpad_image: new height round(16 * 4/64) = 1, padding
    (4 - 1) // 2 = 1, so feature rows 1 and 2 stay: canvas y [8, 16) -> original [0, 8) (clipped) and
    [16, 24) -> [8, 16) (clipped); each feature is 16 original pixels wide.  The boxes also pass the
    whiteness check against pack_image_features."""
    from saev_curate.testing import build_tiny_vlm

    model, processor = build_tiny_vlm("llava_next")
    model.config.image_grid_pinpoints = processor.image_processor.image_grid_pinpoints = [[32, 32]]
    pb = _batch(processor, [[((64, 16), (0, 0, 1, 1))]])
    boxes = image_token_boxes(model, processor, pb.inputs, 0, [(64, 16)])
    assert len(boxes) == 4 + 2 * 5
    expected = []
    for y0, y1 in ((0.0, 8.0), (8.0, 16.0)):
        expected += [(16.0 * c, y0, 16.0 * c + 16, y1) for c in range(4)]
    assert [b is None for b in boxes[4:]] == [False] * 4 + [True] + [False] * 4 + [True]
    _close([b.box for b in boxes[4:] if b is not None], expected)
    _check_against_pixels("llava_next", model, processor,
                          [[((64, 16), (16, 0, 48, 8))], [((80, 20), (0, 10, 40, 20)), ((20, 40), (0, 0, 10, 20))]],
                          padded=True)


def test_qwen_hand_computed_boxes(tiny_vlm):
    """Qwen2-VL tiny: patch 8, merge 2 (16 px tokens), min_pixels 32^2, max_pixels 64^2.  A 64x32 image is a
    multiple of 16 within bounds: smart_resize keeps it, tokens are a 2x4 grid of 16x16 original pixels."""
    model, processor = tiny_vlm("qwen2_vl")
    pb = _batch(processor, [[((64, 32), (0, 0, 1, 1))]])
    boxes = image_token_boxes(model, processor, pb.inputs, 0, [(64, 32)])
    _close([b.box for b in boxes],
        [(16.0 * c, 16.0 * r, 16.0 * c + 16, 16.0 * r + 16) for r in range(2) for c in range(4)])
    # a 128x64 image is too big (8192 > 4096 px): beta = sqrt(2), floor(64 / beta / 16) * 16 = 32 and
    # floor(128 / beta / 16) * 16 = 80, so 80x32: 2x5 tokens of 128/80*16 = 25.6 by 64/32*16 = 32 original pixels
    pb = _batch(processor, [[((128, 64), (0, 0, 1, 1))]])
    boxes = image_token_boxes(model, processor, pb.inputs, 0, [(128, 64)])
    _close([b.box for b in boxes],
        [(25.6 * c, 32.0 * r, 25.6 * c + 25.6, 32.0 * r + 32) for r in range(2) for c in range(5)])


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_on_a_known_patch_lands_on_its_pixels(family, tiny_vlm):
    """A one-hot value at token t: the heat map's non-NaN maximum region is exactly the pixels whose centres
    lie in t's box, and those pixels are white for the tokens whose vision patches are all white."""
    model, processor = tiny_vlm(family)
    case = CASES.get(family, CASES["default"])
    pb = _batch(processor, case)
    white = _token_whiteness(family, model, processor, pb.inputs, [len(c) for c in case])
    row = 1
    sizes = [size for size, _ in case[row]]
    boxes = image_token_boxes(model, processor, pb.inputs, row, sizes)
    t = max(range(len(boxes)), key=lambda i: -1 if white[row][i] is None else white[row][i])
    assert white[row][t] > 0.95  # a token that sees only white
    values = np.zeros(len(boxes))
    values[t] = 5.0
    b = boxes[t]
    heat = heatmap(values, boxes, sizes[b.image], image=b.image)
    w, h = sizes[b.image]
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    l, tp, r, bt = b.box
    inside = (xs >= l) & (xs < r) & (ys >= tp) & (ys < bt)
    assert np.array_equal(heat == 5.0, inside)
    img = np.asarray(_white_square(*case[row][b.image]))[..., 0]
    assert (img[inside] == 255).all()  # the feature lands on the white pixels it saw


def test_heatmap_max_mean_and_nan():
    boxes = [PatchBox(0, (0, 0, 2, 2)), PatchBox(0, (1, 1, 3, 2)), None, PatchBox(1, (0, 0, 4, 3))]
    heat = heatmap([1.0, 3.0, 9.0, 7.0], boxes, (4, 3))
    expected = np.full((3, 4), np.nan)
    expected[0:2, 0:2] = 1.0
    expected[1, 1:3] = 3.0
    np.testing.assert_array_equal(heat, expected.astype(np.float32))
    mean = heatmap([1.0, 3.0, 9.0, 7.0], boxes, (4, 3), reduce="mean")
    assert mean[1, 1] == 2.0 and mean[1, 2] == 3.0 and mean[0, 0] == 1.0 and np.isnan(mean[2, 0])
    assert (heatmap([1.0, 3.0, 9.0, 7.0], boxes, (4, 3), image=1) == 7.0).all()
    with pytest.raises(InputError, match="one value per image token"):
        heatmap([1.0], boxes, (4, 3))
    with pytest.raises(InputError, match="reduce"):
        heatmap([1.0, 3.0, 9.0, 7.0], boxes, (4, 3), reduce="sum")


def test_overlay_fixed_scale():
    img = Image.new("RGB", (3, 1), (100, 100, 100))
    heat = np.array([[np.nan, 0.0, 10.0]], dtype=np.float32)
    out = np.asarray(overlay(img, heat, vmin=0.0, vmax=10.0, alpha=1.0))
    assert tuple(out[0, 0]) == (100, 100, 100)  # NaN: untouched
    assert tuple(out[0, 1]) == (68, 1, 84) and tuple(out[0, 2]) == (253, 231, 37)  # viridis ends
    # the same value draws the same colour whatever else is in the map (a fixed scale, not min-max)
    out2 = np.asarray(overlay(img, np.array([[5.0, 0.0, 0.0]]), vmin=0.0, vmax=10.0, alpha=1.0))
    assert tuple(out2[0, 1]) == tuple(out[0, 1])
    with pytest.raises(InputError, match="vmin < vmax"):
        overlay(img, heat, vmin=1.0, vmax=1.0)
    with pytest.raises(InputError, match="heatmap"):
        overlay(img, np.zeros((2, 2)), vmin=0.0, vmax=1.0)


def test_unsupported_family_and_wrong_sizes(tiny_vlm):
    model, processor = tiny_vlm("llava")
    pb = _batch(processor, [[((64, 48), (0, 0, 1, 1))]])

    class Other:
        config = type("C", (), {"model_type": "blip_2"})()

    with pytest.raises(InputError, match="blip_2.*supported: llava"):
        image_token_boxes(Other(), processor, pb.inputs, 0, [(64, 48)])
    with pytest.raises(InputError, match="image tokens"):
        image_token_boxes(model, processor, pb.inputs, 0, [(64, 48), (64, 48)])
    with pytest.raises(InputError, match="out of range"):
        image_token_boxes(model, processor, pb.inputs, 3, [(64, 48)])


def test_llava_pad_to_square_and_full_strategy():
    """LlavaImageProcessor's do_pad pastes the image centred on a square before resizing: a 64x32 (w x h)
    image sits 16 px down a 64x64 square, resized to 32x32 (scale 1/2), a 4x4 grid of 8 px -> each token
    16x16 original pixels, rows 0 and 3 wholly padding (None), rows 1 and 2 at y [0, 16) and [16, 32).
    With vision_feature_select_strategy='full' the CLS token comes first and encodes no region."""
    from transformers import LlavaImageProcessorPil

    from saev_curate.testing import build_tiny_vlm

    model, processor = build_tiny_vlm("llava")
    processor.image_processor = LlavaImageProcessorPil(size={"shortest_edge": 32},
                                                       crop_size={"height": 32, "width": 32}, do_pad=True)
    pb = _batch(processor, [[((64, 32), (0, 0, 1, 1))]])
    boxes = image_token_boxes(model, processor, pb.inputs, 0, [(64, 32)])
    assert [b is None for b in boxes] == [True] * 4 + [False] * 8 + [True] * 4
    _close([b.box for b in boxes[4:12]],
           [(16.0 * c, 16.0 * r, 16.0 * c + 16, 16.0 * r + 16) for r in range(2) for c in range(4)])

    model.config.vision_feature_select_strategy = processor.vision_feature_select_strategy = "full"
    pb = _batch(processor, [[((64, 32), (0, 0, 1, 1))]])
    full = image_token_boxes(model, processor, pb.inputs, 0, [(64, 32)])
    assert full[0] is None and full[1:] == boxes


def test_testbed_model():
    """The testbed (a LLaVA over 32x32 images, patch 8): 16 tokens, each an 8x8 square of a 32x32 image, in
    row-major order, matching the image tokens the processor wrote."""
    from saev_curate.testbed import language as lang
    from saev_curate.testbed.build import TestbedConfig, build_untrained

    model, processor = build_untrained(TestbedConfig())
    img = _white_square((32, 32), (8, 0, 16, 8))
    pb = prepare_batch(processor, [{"messages": lang.chat_prompt("what digit is this ?"), "images": [img]}],
                       mode="prompt")
    boxes = image_token_boxes(model, processor, pb.inputs, 0, [(32, 32)])
    _close([b.box for b in boxes], [(8.0 * c, 8.0 * r, 8.0 * c + 8, 8.0 * r + 8) for r in range(4) for c in range(4)])
    white = _token_whiteness("llava", model, processor, pb.inputs, [1])[0]
    assert [round(w, 1) for w in white] == [0.0, 1.0] + [0.0] * 14

"""The testbed: its language, its images and splits, the defect-tagged rows, and the cached build."""

from __future__ import annotations

import numpy as np
import pytest

from saev_curate.io.images_offline import mnist_digits
from saev_curate.testbed import TestbedConfig as Config  # (not a pytest class)
from saev_curate.testbed import build_testbed
from saev_curate.testbed import images as timg
from saev_curate.testbed import language as lang
from saev_curate.testbed.build import is_built
from saev_curate.testbed.data import DEFECT_KINDS, defect_rows


def _text(msgs) -> str:
    return " ".join(p["text"] for m in msgs for p in m["content"] if p["type"] == "text")


def test_every_generated_text_is_in_the_vocabulary():
    tok = lang.build_tokenizer()
    rng = np.random.RandomState(1)
    unk = tok.convert_tokens_to_ids("<unk>")
    for _, c in timg.sample_images("test", 100, seed=3):
        for text in (lang.caption(c, rng), *lang.interleaved(c, rng), lang.question(c, rng)["question"]):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert unk not in ids and len(ids) == len(text.split()), text  # one token per word, none unknown


def test_splits_use_disjoint_real_images():
    sources = {s: {c.source for _, c in timg.sample_images(s, 3000, seed=0)} for s in timg.SPLITS}
    for a in timg.SPLITS:
        for b in timg.SPLITS:
            if a < b:
                shared = {x for x in sources[a] & sources[b] if not x.startswith(("drawn", "skimage"))}
                assert not shared, (a, b, sorted(shared)[:5])
    photos = {s: {x for x in sources[s] if x.startswith("skimage")} for s in timg.SPLITS}
    assert not photos["train"] & (photos["dev"] | photos["test"])  # held-out crops come from other photos


def test_defect_rows_are_what_their_tags_say():
    rows = defect_rows(400, defect_rate=0.3, split="test", seed=5)
    assert sum(r["defect"] != "none" for r in rows) == 120
    assert {r["defect"] for r in rows} == {"none", *DEFECT_KINDS}
    X, y = mnist_digits(fallback=False)
    checked = 0
    for r in rows:
        q = _text(r["prompt"])
        if r["defect"] == "image_prompt_mismatch":  # the prompt presupposes another kind of image
            owner = next(k for k, types in lang.KIND_QTYPES.items() if r["qtype"] in types)
            assert owner != r["image_kind"], q
        elif r["defect"] == "off_topic_prompt":
            assert r["qtype"] == "text_only"
        elif r["defect"] == "none":
            assert r["qtype"] != "text_only"
        if r["image_source"].startswith("mnist:") and r["qtype"] == "digit_identity" and \
                r["defect"] in ("none", "chosen_contradicts_image"):
            truth = lang.NUMBERS[int(y[int(r["image_source"].split(":")[1])])]
            assert (_text(r["chosen"]) == truth) == (r["defect"] == "none"), (q, r["chosen"], truth)
            assert (_text(r["rejected"]) == truth) == (r["defect"] != "none")
            checked += 1
        if r["defect"] == "corrupted_image" and r["image_source"].startswith("mnist:"):
            original = np.pad(X[int(r["image_source"].split(":")[1])], 2)
            assert not np.array_equal(np.asarray(r["images"][0].convert("L")), original)
    assert checked >= 5
    again = defect_rows(400, defect_rate=0.3, split="test", seed=5)
    assert [_text(r["prompt"]) for r in again] == [_text(r["prompt"]) for r in rows]
    sft = defect_rows(20, split="dev", seed=1, fmt="sft")
    assert all(m["messages"][-1]["role"] == "assistant" and "defect" in m for m in sft)


def test_defect_rows_limited_to_question_types():
    qtypes = ("count", "digit_parity")
    rows = defect_rows(120, defect_rate=0.3, split="dev", seed=3, qtypes=qtypes)
    assert len(rows) == 120
    for r in rows:
        if r["defect"] == "off_topic_prompt":
            assert r["qtype"] == "text_only"
        else:  # every other row asks one of the chosen types; a mismatch asks it of the other kind's image
            assert r["qtype"] in qtypes
            owner = "digit" if r["qtype"] == "digit_parity" else "scene"
            assert (owner != r["image_kind"]) == (r["defect"] == "image_prompt_mismatch")
    with pytest.raises(Exception, match="one image kind only"):
        defect_rows(50, defect_rate=0.5, qtypes=("count",), mix={"image_prompt_mismatch": 1.0})
    with pytest.raises(Exception, match="qtypes"):
        defect_rows(10, qtypes=("riddle",))


def test_bad_arguments_are_clear():
    with pytest.raises(Exception, match="defect_rate"):
        defect_rows(10, defect_rate=1.5)
    with pytest.raises(Exception, match="unknown defect kinds"):
        defect_rows(10, mix={"blurry": 1.0})
    with pytest.raises(Exception, match="split"):
        timg.sample_images("validation", 3)
    with pytest.raises(ValueError, match="holdout_qtypes"):
        build_testbed(Config(holdout_qtypes=("weather",)))


def test_a_mini_build_is_cached_resumable_and_keyed_by_its_config(tmp_path):
    cfg = Config(n_train_images=120, stage0_epochs=1, stage1_steps=2, stage2_steps=2, batch_size=4)
    path = build_testbed(cfg, cache_dir=tmp_path / "tb", verbose=False)
    assert is_built(path, cfg) and not is_built(path, Config())
    from saev_curate.vlm.load import load_vlm

    model, processor = load_vlm(str(path))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids(lang.IMAGE_TOKEN)
    mtime = (path / "build_info.json").stat().st_mtime
    assert build_testbed(cfg, cache_dir=tmp_path / "tb", verbose=False) == path  # cached: not rebuilt
    assert (path / "build_info.json").stat().st_mtime == mtime
    assert Config(seed=1).name() != Config().name() != cfg.name()

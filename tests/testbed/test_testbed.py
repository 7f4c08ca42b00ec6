"""The testbed: its language, its images and splits, the defect-tagged rows, and the cached build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saev_curate.io.images_offline import mnist_digits
from saev_curate.testbed import TestbedConfig as Config  # (not a pytest class)
from saev_curate.testbed import build_testbed
from saev_curate.testbed import images as timg
from saev_curate.testbed import language as lang
from saev_curate.testbed.build import is_built
from saev_curate.testbed.data import DEFECT_KINDS, defect_rows, hallucinated, omitted
from saev_curate.testbed.evaluate import description_scores

ONE_WORD = {k: 1.0 for k in ("image_prompt_mismatch", "chosen_contradicts_image", "corrupted_image", "off_topic_prompt")}


def _text(msgs) -> str:
    return " ".join(p["text"] for m in msgs for p in m["content"] if p["type"] == "text")


def test_every_generated_text_is_in_the_vocabulary():
    tok = lang.build_tokenizer()
    rng = np.random.RandomState(1)
    unk = tok.convert_tokens_to_ids("<unk>")
    for _, c in timg.sample_images("test", 100, seed=3):
        q = lang.sentence_question(lang.question(c, rng))
        for text in (lang.caption(c, rng), *lang.interleaved(c, rng), q["question"], q["answer"], q["wrong"],
                     lang.describe(c), hallucinated(c, rng)[0], *lang.DESCRIBE_PROMPTS):
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
    rows = defect_rows(120, defect_rate=0.3, split="dev", seed=3, qtypes=qtypes, mix=ONE_WORD, describe_share=0.0)
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
    # a damaged cache (a truncated weights file) is found and rebuilt, to the same bytes (issue 24, item 4)
    weights = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    assert not is_built(path, cfg)
    assert build_testbed(cfg, cache_dir=tmp_path / "tb", verbose=False) == path and is_built(path, cfg)
    assert (path / "model.safetensors").read_bytes() == weights
    assert Config(seed=1).name() != Config().name() != cfg.name()


def _brightness_by_hand(img) -> str | None:
    grey = np.asarray(img.convert("L"), dtype=float).mean()
    return "dark" if grey < 100 else "bright" if grey > 120 else None


def test_concepts_are_what_the_pixels_show():
    """Position, size and brightness read back from the pixels: the shapes' colour mask lies in the stated
    halves, big shapes cover more pixels than small ones, brightness is the mean grey."""
    area = {"small": [], "big": []}
    for img, c in timg.sample_images("dev", 300, seed=4, mix={"scene": 0.6, "face": 0.2, "photo": 0.2}):
        if c.kind != "scene":
            assert c.brightness == _brightness_by_hand(img)
            continue
        x = np.asarray(img).astype(int)
        mask = np.abs(x - np.asarray(timg.COLOURS[c.colour])).sum(-1) < 90
        ys, xs = mask.nonzero()
        for side, ok in (("left", xs.max() < 16), ("right", xs.min() >= 16), ("top", ys.max() < 16),
                         ("bottom", ys.min() >= 16)):
            assert (side in c.position) == bool(ok), (c, side)
        area[c.size].append(mask.sum() / c.count)
    assert min(area["big"]) > np.mean(area["small"]) > 0


def test_descriptions_parse_back_and_hallucinations_tag_their_false_words():
    rng = np.random.RandomState(0)
    n_false = 0
    for _, c in timg.sample_images("test", 300, seed=2):
        truth = lang.true_facts(c)
        stated = lang.parse_facts(lang.describe(c))
        assert sorted(f for f, _ in stated) == sorted(truth) and all(lang.fact_is_true(f, v, c) for f, v in stated)
        text, at = hallucinated(c, rng)
        words = text.split()
        # each sentence that parses to a false fact holds a tagged word, and every tagged word is in such a sentence
        start = 0
        for sentence in text.split(" . "):
            span = set(range(start, start + len(sentence.rstrip(" .").split())))
            start += len(sentence.rstrip(" .").split()) + 1
            false = [f for f in lang.parse_facts(sentence) if not lang.fact_is_true(f[0], f[1], c)]
            assert bool(false) == bool(span & set(at)), (text, sentence, [words[i] for i in at])
            n_false += len(false)
        assert 1 <= len(lang.parse_facts(text)) - sum(lang.fact_is_true(f, v, c) for f, v in lang.parse_facts(text)) <= 2
        short = omitted(c, rng)
        if short is not None:
            got = lang.parse_facts(short)
            assert all(lang.fact_is_true(f, v, c) for f, v in got) and 1 <= len(truth) - len(got) <= 2
    assert n_false > 300


def test_chair_counts_by_hand():
    three = timg.Concept("digit", digit=3)  # true facts: digit 3, odd, after two
    assert description_scores("a handwritten three . it is even . banana split .", three) == {
        "stated": 3, "false": 2, "true_facts": 3, "recalled": 1}
    scene = timg.Concept("scene", shape="circle", colour="red", count=1, size="big", position=("top", "left"))
    assert description_scores("one red circle . it is on the left . it is small .", scene) == {
        "stated": 5, "false": 1, "true_facts": 5, "recalled": 4}
    assert description_scores("two red circles . they are at the top right .", scene) == {
        "stated": 4, "false": 2, "true_facts": 5, "recalled": 2}
    # as a tokenizer's decode() writes it: no space before the full stops
    assert description_scores("one red circle. it is on the left. it is small.", scene) == {
        "stated": 5, "false": 1, "true_facts": 5, "recalled": 4}


def test_description_rows_carry_spans_and_controls():
    rows = defect_rows(600, defect_rate=0.3, split="dev", seed=7)
    assert {"hallucinated_detail", "omitted_detail"} <= {r["defect"] for r in rows}
    n_described = 0
    for r in rows:
        if r["task"] != "describe":
            assert r["defect_words"] == []
            continue
        n_described += 1
        c = timg.Concept.from_dict(r["concept"])
        assert r["prompt"][0]["content"][1]["text"] in lang.DESCRIBE_PROMPTS
        chosen, rejected = _text(r["chosen"]), _text(r["rejected"])
        false_c = [f for f in lang.parse_facts(chosen) if not lang.fact_is_true(f[0], f[1], c)]
        false_r = [f for f in lang.parse_facts(rejected) if not lang.fact_is_true(f[0], f[1], c)]
        if r["defect"] == "corrupted_image":
            continue  # the description is of the image before it was corrupted
        assert bool(r["defect_words"]) == (r["defect"] == "hallucinated_detail")
        if r["defect"] == "hallucinated_detail":  # chosen states 1-2 false facts, rejected is the truth
            assert 1 <= len(false_c) <= 2 and not false_r and rejected == lang.describe(c)
        elif r["defect"] == "omitted_detail":  # chosen is true but shorter; rejected hallucinates, as in clean rows
            assert not false_c and len(lang.parse_facts(chosen)) < len(lang.true_facts(c)) and false_r
        else:
            assert chosen == lang.describe(c) and 1 <= len(false_r) <= 2
    assert n_described > 250


def test_auroc_per_task_combined_and_localisation_by_hand():
    from saev_curate.jobs.detection import auroc, localisation, with_combined

    labels = ["none", "none", "none", "hallucinated_detail", "hallucinated_detail"]
    tasks = ["describe", "describe", "qa", "describe", "describe"]
    scores = [0.9, 0.2, -5.0, 0.5, 0.1]
    # against all clean rows, the (clean, defective) pairs the clean row wins: 0.9 beats both, 0.2 beats 0.1,
    # -5.0 (a question row) beats neither -> 3 of 6
    assert auroc(scores, labels, "hallucinated_detail") == pytest.approx(3 / 6)
    # against clean descriptions only (the qa row is another task): 3 of 4
    assert auroc(scores, labels, "hallucinated_detail", tasks=tasks) == pytest.approx(3 / 4)
    both = with_combined({"a": [1.0, 2.0, 3.0, 4.0, None], "b": [4.0, 3.0, 2.0, 1.0, 0.0]}, "a", "b")
    # a row a method cannot score counts as its lowest: a ranks 0.25, 0.5, 0.75, 1, 0; b 1, 0.75, 0.5, 0.25, 0
    assert both["combined"] == pytest.approx([0.625, 0.625, 0.625, 0.625, 0.0])
    rows = [{"defect": d, "task": t, "defect_words": w} for d, t, w in
            zip(labels, tasks, [[], [], [], [3], [0, 1]])]
    methods = {"min_token_logprob": scores, "_saev_min_token_index": [0, 0, 0, 3, 5]}
    # cut at the 10% quantile of clean descriptions (0.2, 0.9 -> 0.2): only the row scoring 0.1 is detected, and
    # its blamed token 5 is not a false word; over all hallucinated rows 1 of 2 hit
    got = localisation(methods, rows)["min_token_logprob"]
    assert (got["detected"], got["n_detected"], got["all"], got["n"]) == (0.0, 1, 0.5, 2)


def test_a_damaged_sae_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    """A half-written data folder (an empty dataset_info.json) or a truncated SAE file beside the model is
    written again, not a bare JSONDecodeError / SafetensorError on every later run (issue 24, items 3-4)."""
    from saev_curate.jobs.detection import testbed_sae
    from saev_curate.testing import build_tiny_vlm, save_tiny_vlm

    path = save_tiny_vlm("llava", tmp_path / "tiny", seed=0)
    model, processor = build_tiny_vlm("llava", seed=0)
    sae, out = testbed_sae(path, model, processor, steps=5, progress=False)
    data = tmp_path / "tiny-sae-data"
    (data / "dataset_info.json").write_text("")
    weights = out / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again, out2 = testbed_sae(path, model, processor, steps=5, progress=False)
    assert out2 == out and torch.equal(again.W_enc, sae.W_enc)  # trained again, to the same weights
    import datasets

    assert len(datasets.load_from_disk(str(data))) == 3000
    # a model rebuilt into the same folder (other weights) gets a new SAE and new activations, not the old ones
    other, _ = build_tiny_vlm("llava", seed=1)
    other.save_pretrained(path)
    rebuilt, _ = testbed_sae(path, other, processor, steps=5, progress=False)
    assert not torch.equal(rebuilt.W_enc, sae.W_enc)
    assert json.loads((tmp_path / "tiny-act-cache" / "testbed_model.json").read_text()) == \
        json.loads((out / "testbed_model.json").read_text())
    # other capture / caching / training code (another shard layout trains on another batch order; another float
    # order) makes the activations and the SAE again
    from saev_curate.io import fingerprint

    real = fingerprint.source_fingerprint
    monkeypatch.setattr(fingerprint, "source_fingerprint", lambda *pkgs: "another" + real(*pkgs)[7:])
    capsys.readouterr()
    testbed_sae(path, other, processor, steps=5, progress=False)
    said = capsys.readouterr().out
    assert f"{out} was made from another build" in said and "tiny-act-cache was made from another build" in said
    assert json.loads((out / "testbed_model.json").read_text())["code_fingerprint"].startswith("another")


def test_ungrounded_facts_are_stated_at_random_and_the_rest_true():
    from saev_curate.core.errors import InputError

    rng = np.random.RandomState(0)
    scenes = [c for _, c in timg.sample_images("dev", 300, seed=1) if c.kind == "scene"]
    same = []
    for c in scenes:
        assert lang.describe(c) == lang.describe(c, (), rng)  # nothing ungrounded: the true description
        stated = dict(lang.parse_facts(lang.describe(c, ("count",), rng)))
        truth = lang.true_facts(c)
        assert all(stated[f] == truth[f] for f in truth if f != "count")  # only the count is drawn
        same.append(stated["count"] == c.count)
    # drawn uniformly among 1..4: right by chance a quarter of the time
    assert len(same) > 60 and 0.12 < np.mean(same) < 0.4, np.mean(same)
    draws = [lang.any_value("parity", rng) for _ in range(400)]
    assert set(draws) == {"odd", "even"} and 0.4 < draws.count("odd") / 400 < 0.6
    with pytest.raises(InputError, match="position"):
        lang.any_value("position", rng)
    with pytest.raises(InputError, match="position"):  # refused before anything is built
        build_testbed(Config(ungrounded_facts=("position",)))


def test_alignment_rows_follow_their_mix():
    from saev_curate.testbed import alignment_rows
    from saev_curate.testbed.data import ALIGNMENT_MIX

    rows = alignment_rows(400, defect_rate=0.3, seed=5)
    labels = [r["defect"] for r in rows]
    assert sum(lab != "none" for lab in labels) == 120 and set(labels) <= {"none", *ALIGNMENT_MIX}
    assert 0.38 < labels.count("hallucinated_detail") / 120 < 0.62  # half of the defects by the mix's weights
    clean = [r for r in rows if r["defect"] == "none"]
    assert 0.7 < np.mean([r["task"] == "describe" for r in clean]) < 0.9  # 80% description pairs
    for kind in {r["image_kind"] for r in rows}:  # no stratum is all defective (the study stratifies by kind)
        assert any(r["defect"] == "none" for r in rows if r["image_kind"] == kind)

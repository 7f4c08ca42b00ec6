"""`saev-curate check`: the planting against hand-made rows, the AUROC and its interval against scikit-learn, the
command on a tiny Qwen2-VL (check.json, the page in headless Chromium), and `--by auto` taking its recommendation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saev_curate.curation import planting
from saev_curate.curation.check import auroc_with_interval


def img(v: int) -> Image.Image:
    return Image.new("RGB", (16, 16), (v, v, v))


ROWS = [{"prompt": "how many red circles are there?", "images": [img(10)], "chosen": "two red circles on the left",
         "rejected": "three red circles"},
        {"prompt": "what colour is the bus?", "images": [img(100)], "chosen": "the bus is yellow", "rejected": "blue"},
        {"prompt": "how many red squares are there?", "images": [img(200)], "chosen": "one red square",
         "rejected": "four squares"}]


def plant(kind: str, i: int = 0, seed: int = 0, **ctx):
    return planting.KINDS[kind].plant(ROWS[i], i, ROWS, np.random.default_rng(seed), ctx)


def test_each_kind_does_what_it_says(tiny_vlm):
    for seed in range(5):
        p = plant("image_mismatch", seed=seed)
        assert p["images"][0] in (ROWS[1]["images"][0], ROWS[2]["images"][0]) and p["prompt"] == ROWS[0]["prompt"]
        p = plant("prompt_swap", seed=seed)
        assert p["prompt"] in (ROWS[1]["prompt"], ROWS[2]["prompt"]) and p["images"] == ROWS[0]["images"]
    # the most similar prompt by word overlap: row 2 ("how many red ... are there") for row 0
    assert plant("response_swap")["chosen"] == "one red square"
    p = plant("chosen_rejected_swap")
    assert (p["chosen"], p["rejected"]) == (ROWS[0]["rejected"], ROWS[0]["chosen"])
    assert plant("image_free_question")["prompt"] in planting.IMAGE_FREE_QUESTIONS
    corrupted = np.asarray(plant("corrupted_image")["images"][0], dtype=float)
    assert corrupted.shape == (16, 16, 3) and corrupted.std() > 20  # the flat grey image is now noise
    tok = tiny_vlm("llava")[1].tokenizer
    for seed in range(8):
        p = plant("fact_word_replaced", seed=seed, tokenizer=tok)
        before, after = ROWS[0]["chosen"].split(), p["chosen"].split()
        diff = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(before) == len(after) and len(diff) == 1 and p["_planted_word"] == f"{diff[0][0]} -> {diff[0][1]}"
        cls = next(c for c, words in planting.FACT_WORDS.items() if diff[0][0] in words)
        assert diff[0][1] in planting.FACT_WORDS[cls]
        assert len(tok(" " + diff[0][0], add_special_tokens=False)["input_ids"]) == len(
            tok(" " + diff[0][1], add_special_tokens=False)["input_ids"])
    no_fact = {"prompt": "hi", "images": [img(1)], "chosen": "hello there", "rejected": "x"}
    assert planting.KINDS["fact_word_replaced"].plant(no_fact, 0, [no_fact], np.random.default_rng(0), {}) is None


def test_kinds_are_dealt_round_robin_and_seeded():
    rows = [dict(ROWS[i % 3], prompt=f"{ROWS[i % 3]['prompt']} ({i})") for i in range(21)]
    out = planting.plant_rows(rows, "preference", seed=3)
    assert [i for i, _, _ in out] == list(range(21))  # one copy per row
    counts = {k: sum(kind == k for _, kind, _ in out) for k in planting.kinds_for("preference")}
    assert set(counts.values()) == {3}  # 21 rows, 7 kinds
    assert [k for _, k, _ in out] == [k for _, k, _ in planting.plant_rows(rows, "preference", seed=3)]
    assert planting.kinds_for("prompt_only") == ["image_mismatch", "corrupted_image", "prompt_swap",
                                                 "image_free_question"]


def test_auroc_and_interval_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    clean, planted = rng.normal(1, 1, 80).round(1), rng.normal(0, 1, 30).round(1)  # rounded: ties count half
    planted[:3] = -np.inf  # rows a method could not score count as its lowest
    got = auroc_with_interval(clean, planted, n_boot=300)
    finite = np.where(np.isinf(planted), -1e9, planted)
    want = roc_auc_score([1] * 80 + [0] * 30, np.concatenate([clean, finite]))
    assert got["mean"] == pytest.approx(want, abs=1e-12)
    assert got["low"] < got["mean"] < got["high"] and got["high"] - got["low"] < 0.4


@pytest.fixture(scope="module")
def qwen_check(tmp_path_factory):
    from scoring_rows import save_qwen_parts

    from saev_curate.cli import main

    root = save_qwen_parts(tmp_path_factory.mktemp("check"), 20)
    rc = main(["check", "--model", str(root / "model"), "--sae", str(root / "sae"), "--data", str(root / "data"),
               "--out", str(root / "out"), "--rows", "16", "--bootstrap", "200", "--layer", "1", "--device", "cpu"])
    assert rc == 0
    return root


def test_check_on_a_tiny_qwen2_vl_writes_what_it_measured(qwen_check):
    import datasets
    from sklearn.metrics import roc_auc_score

    from saev_curate.curation.methods import METHODS

    out = qwen_check / "out"
    doc = json.loads((out / "check.json").read_text())
    assert doc["shape"] == "preference" and set(doc["recommended"]) == {"prompt_only", "sft", "preference"}
    assert doc["rows_failed"] == [{"row": 3, "reason": "the row has no image"}] or doc["n_rows"] == 16
    scored = datasets.load_from_disk(str(out / "scored"))
    kinds = scored["check_kind"]
    assert sum(k == "clean" for k in kinds) == doc["n_rows"] and sum(v["n"] for v in doc["kinds"].values()) == \
        len(kinds) - doc["n_rows"]
    # one cell recomputed from the scored rows with scikit-learn
    m, k = "response_perplexity", "chosen_rejected_swap"
    vals = [(-v if v is not None else -1e9, kind == "clean") for v, kind in zip(scored[METHODS[m].column], kinds)
            if kind in ("clean", k)]
    assert doc["auroc"][m][k]["mean"] == pytest.approx(roc_auc_score([c for _, c in vals], [v for v, _ in vals]))
    # the recommendation is the best mean over each shape's kinds, by hand
    pref = [kk for kk in doc["kinds"]]
    means = {mm: np.mean([a[kk]["mean"] for kk in pref]) for mm, a in doc["auroc"].items()}
    assert doc["recommended"]["preference"] == max(means, key=means.get)
    assert all(doc["cost_s_per_row"][mm] > 0 for mm in doc["auroc"])
    assert (out / "crossmodal_weights").is_dir()  # no --weights: fitted on the data


def test_check_page_in_a_browser(qwen_check, tmp_path):
    from browser import screenshot

    errors = screenshot(qwen_check / "out" / "report.html", tmp_path / "check.png")
    assert errors == []
    html = (qwen_check / "out" / "report.html").read_text()
    assert "What was planted" in html and "fact_word_replaced" in html and "<svg" in html and "<img" in html


def test_by_auto_takes_the_checks_recommendation(qwen_check, tmp_path, monkeypatch):
    import datasets

    from saev_curate import select
    from saev_curate.cli import main
    from saev_curate.curation.methods import METHODS
    from saev_curate.errors import InputError
    from saev_curate.recipes.common import resolve_select_by

    out = qwen_check / "out"
    rec = json.loads((out / "check.json").read_text())["recommended"]
    cols = ["prompt", "images", "chosen", "rejected"]
    assert resolve_select_by("auto", cols, str(out)) == rec["preference"]
    assert resolve_select_by("auto", ["prompt", "images"], str(out)) == rec["prompt_only"]
    scored = datasets.load_from_disk(str(out / "scored"))
    clean = scored.filter(lambda r: r["check_kind"] == "clean")
    col = METHODS[rec["preference"]].column
    kept = select(clean, "auto", check=out, fraction=0.5)
    sign = 1 if METHODS[rec["preference"]].higher_is_cleaner else -1
    values = sorted((sign * v for v in clean[col] if v is not None), reverse=True)
    assert sorted(sign * v for v in kept[col]) == sorted(values[:len(kept)])
    clean.save_to_disk(str(tmp_path / "clean"))
    assert main(["select", "--data", str(tmp_path / "clean"), "--out", str(tmp_path / "kept"), "--fraction", "0.5",
                 "--check", str(out)]) == 0
    assert datasets.load_from_disk(str(tmp_path / "kept"))[col] == kept[col]
    prompt_check = dict(json.loads((out / "check.json").read_text()), shape="prompt_only",
                        recommended={"prompt_only": rec["prompt_only"]})
    (tmp_path / "pc").mkdir()
    (tmp_path / "pc" / "check.json").write_text(json.dumps(prompt_check))
    with pytest.raises(InputError, match="recommends only for prompt_only"):
        select(clean, "auto", check=tmp_path / "pc", fraction=0.5)


def test_check_under_two_processes_scores_the_same_rows(tmp_path):
    """`check` under torchrun (what `accelerate launch` uses): each process scores its shards of the same planted
    rows; rank 0 writes what one process writes."""
    import os
    import subprocess
    import sys

    import datasets
    from float_tolerance import assert_columns_close
    from scoring_rows import save_launch_inputs

    from saev_curate.cli import main
    from saev_curate.testing.rows import digit_preference_rows

    common = save_launch_inputs(tmp_path, digit_preference_rows(24, seed=2))
    assert main(["fit-weights", *common, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "w")]) == 0
    args = ["check", *common, "--weights", str(tmp_path / "w"), "--data", str(tmp_path / "data"), "--rows", "20",
            "--bootstrap", "50"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "saev_curate.cli", *args, "--out", str(tmp_path / "multi")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single = datasets.load_from_disk(str(tmp_path / "single" / "scored"))
    multi = datasets.load_from_disk(str(tmp_path / "multi" / "scored"))
    assert multi["check_kind"] == single["check_kind"] and multi["prompt"] == single["prompt"]
    shards = sorted((tmp_path / "multi" / "scored.shards").glob("shard-*.parquet"))
    assert len(shards) >= 4  # the rows were split between the processes
    for column in (c for c in single.column_names if c.startswith("saev_")):
        assert_columns_close(multi[column], single[column], column)
    assert json.loads((tmp_path / "multi" / "check.json").read_text())["kinds"] == \
        json.loads((tmp_path / "single" / "check.json").read_text())["kinds"]
    assert (tmp_path / "multi" / "report.html").is_file()

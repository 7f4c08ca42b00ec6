"""Issue 10 replayed through the CLI on a tiny LLaVA: a new user's mistakes and bad data.

Each test is one numbered item of the issue. The rule under test everywhere: a run where no row (or less
than ``--min-usable-share``) could be used fails with rc 1 and names the most common row errors; one bad
row is that row's ``saev_error``, never the run's end; a user's mistake is one line on stderr, never a
Python traceback (only with ``--traceback``).
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest

from saev_curate.cli import main

LAYER = "2"


def run(capsys, *argv) -> tuple[int, str]:
    """rc and stderr of one command; a user mistake never shows a traceback."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _png(w: int, h: int, seed: int = 0) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb as PIL sees it)."""
    good = _png(2, 2)
    ihdr = bytearray(good[16:29])  # width, height, depth, colour type, ...
    ihdr[0:8] = struct.pack(">II", w, h)
    chunk = b"IHDR" + bytes(ihdr)
    return good[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + good[33:]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import datasets
    from scoring_rows import make_rows, make_sae

    from saev_curate.testing import save_tiny_vlm

    root = tmp_path_factory.mktemp("mistakes")
    save_tiny_vlm("llava", root / "model", seed=0)
    make_sae(64).save(root / "sae")
    datasets.Dataset.from_list(make_rows(8, seed=11, with_bad=False)).save_to_disk(str(root / "data"))
    common = ["--model", root / "model", "--sae", root / "sae", "--layer", LAYER]
    assert main([str(a) for a in ["fit-weights", *common, "--data", root / "data", "--out", root / "w",
                                  "--n-reference", "8", "--batch-size", "4"]]) == 0
    return root, common


def _score(env, data, out, *extra):
    root, common = env
    return ["score", *common, "--weights", root / "w", "--data", data, "--out", out, "--device", "cpu",
            "--batch-size", "4", *extra]


# ----------------------------------------------------------------------------------------- item 1, 8
def test_item01_08_runs_where_nothing_could_be_used_fail_naming_the_errors(env, tmp_path, capsys):
    import datasets
    from PIL import Image

    root, common = env
    wrong = tmp_path / "wrong"
    datasets.Dataset.from_list([{"question": f"what is {i}?", "img": Image.new("RGB", (16, 16))}
                                for i in range(6)]).save_to_disk(str(wrong))
    rc, err = run(capsys, "fit-weights", *common, "--data", wrong, "--out", tmp_path / "w0")
    assert rc == 1 and "no reference row could be used (6 of 6 failed)" in err
    assert "6 x unrecognised row format (columns: ['img', 'question'])" in err  # item 8: names the columns
    assert "images are read from a column 'images' (a list) or 'image'" in err
    assert "ds.rename_column('img', 'image')" in err
    assert "require_images" not in err
    assert not (tmp_path / "w0").exists()

    rc, err = run(capsys, *_score(env, wrong, tmp_path / "s0"))
    assert rc == 1 and "no row" in err and "6 x unrecognised row format" in err
    assert not (tmp_path / "s0").exists()

    # weights that define omega for no feature are refused (they would give 0.0 to every row)
    import torch

    from saev_curate.curation.crossmodal import CrossModalWeights

    w = CrossModalWeights.load(root / "w")
    CrossModalWeights(omega=torch.full_like(w.omega, float("nan")), classes=w.classes, meta=w.meta).save(tmp_path / "w1")
    rc, err = run(capsys, "score", *common, "--weights", tmp_path / "w1", "--data", root / "data", "--out",
                  tmp_path / "s1", "--device", "cpu")
    assert rc == 1 and "define omega for no feature" in err

    # selecting from a dataset whose every score is null fails instead of keeping rows 0..k
    nulls = datasets.load_from_disk(str(root / "data")).map(
        lambda r: {"saev_score": None, "saev_error": "the row has no image"},
        features=None).cast_column("saev_score", datasets.Value("float64"))
    nulls.save_to_disk(str(tmp_path / "nulls"))
    rc, err = run(capsys, "select", "--data", tmp_path / "nulls", "--out", tmp_path / "kept", "--fraction", "0.5",
                  "--by", "saev_score")
    assert rc == 1 and "no row could be used" in err and "8 x the row has no image" in err


def test_item01_some_failed_rows_end_with_a_one_line_summary_on_stderr_and_in_metadata(env, tmp_path, capsys):
    import datasets
    from scoring_rows import make_rows

    datasets.Dataset.from_list(make_rows(8, seed=11)).save_to_disk(str(tmp_path / "one-bad"))  # row 3: no image
    rc, err = run(capsys, *_score(env, tmp_path / "one-bad", tmp_path / "out"))
    assert rc == 0 and "1 of 8 rows failed: 1 x the image is missing" in err
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["n_failed"] == 1 and summary["n_rows"] == 8
    # a share threshold: 7 of 8 usable is less than 0.9
    rc, err = run(capsys, *_score(env, tmp_path / "one-bad", tmp_path / "out2", "--min-usable-share", "0.9"))
    assert rc == 1 and "only 7 of 8 rows could be used" in err and "--min-usable-share" in err


def test_item01_python_api_follows_the_same_rule(env):
    import datasets

    from saev_curate.core.row_errors import TooFewUsableRows
    from saev_curate.curation.scorers import SaevScorer

    root, _ = env
    scorer = SaevScorer(str(root / "model"), None, str(root / "sae"), str(root / "w"), int(LAYER), device="cpu")
    ds = datasets.Dataset.from_list([{"question": "q", "img": None}] * 3)
    with pytest.raises(TooFewUsableRows, match="no row could be used") as info:
        scorer.map(ds)
    assert info.value.result is not None and len(info.value.result) == 3


# ----------------------------------------------------------------------------------------- item 2, 3
def _image_rows(tmp_path, bad: list):
    import datasets

    rows = [{"prompt": f"what is in picture {i}?", "image": {"bytes": _png(24, 24, i), "path": None}}
            for i in range(6)]
    for i, value in enumerate(bad):
        rows[i + 1]["image"] = value
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())


def test_item02_03_bad_images_in_an_image_column_are_row_errors(env, tmp_path, capsys):
    root, _ = env
    ds = _image_rows(tmp_path, [{"bytes": b"not an image", "path": None},
                                {"bytes": _bomb_png(14000, 14000), "path": None}])
    ds.save_to_disk(str(tmp_path / "data"))
    rc, err = run(capsys, *_score(env, tmp_path / "data", tmp_path / "out"))
    assert rc == 0 and "2 of 6 rows failed" in err
    import datasets

    out = datasets.load_from_disk(str(tmp_path / "out"))
    errors = out["saev_error"]
    assert "not a readable image" in errors[1]
    assert "14000x14000 = 196,000,000 pixels, over the limit of 89,478,485" in errors[2]
    assert all(e is None for e in (errors[0], *errors[3:]))
    assert out.features["image"] == datasets.Image()  # the user's column type is kept

    # a configurable pixel limit: 24x24 = 576 pixels is over 500
    rc, err = run(capsys, *_score(env, tmp_path / "data", tmp_path / "out2", "--max-image-pixels", "500",
                                  "--min-usable-share", "0"))
    assert rc == 1 and "over the limit of 500" in err  # every row over the limit: no row could be used


def test_item02_plain_map_and_scorer_map_decode_images_per_row(env, tmp_path):
    from saev_curate.curation.scorers import SaevScorer

    root, _ = env
    ds = _image_rows(tmp_path, [{"bytes": b"not an image", "path": None},
                                {"bytes": None, "path": str(tmp_path / "missing.png")}])
    scorer = SaevScorer(str(root / "model"), None, str(root / "sae"), str(root / "w"), int(LAYER), device="cpu")
    for out in (ds.map(scorer, batched=True, batch_size=4), scorer.map(ds, batch_size=4)):
        assert "not a readable image" in out["saev_error"][1]
        assert "image file not found" in out["saev_error"][2]
        assert out["saev_score"][0] is not None


# ----------------------------------------------------------------------------------------- item 4
def _train(root, out, layer, *extra):
    return ["train-sae", "--model", root / "model", "--data", root / "data", "--layer", layer, "--output_dir", out,
            "--architecture", "topk", "--k", "4", "--expansion_factor", "2", "--total_steps", "4",
            "--batch_size", "32", "--checkpoint_every", "2", "--buffer_tokens", "64", *extra]


def test_item04_train_sae_refuses_to_resume_another_run_and_says_when_done(env, tmp_path, capsys):
    root, _ = env
    out = tmp_path / "sae"
    rc, _ = run(capsys, *_train(root, out, "2"))
    assert rc == 0
    rc, err = run(capsys, *_train(root, out, "2"))
    assert rc == 0 and "already holds the finished SAE of this run" in err
    rc, err = run(capsys, *_train(root, out, "1"))
    assert rc == 1 and "--layer: 2 -> 1" in err and "different run" in err and f"delete {out}" in err
    rc, err = run(capsys, *_train(root, out, "2", "--mode", "prompt"))
    assert rc == 1 and "--mode: 'full' -> 'prompt'" in err


# ----------------------------------------------------------------------------------------- item 5
def test_item05_a_score_run_that_fails_before_scoring_leaves_nothing_that_blocks_the_rerun(env, tmp_path, capsys):
    root, common = env
    bad = ["score", "--model", root / "model", "--sae", root / "sae", "--layer", "40", "--weights", root / "w",
           "--data", root / "data", "--out", tmp_path / "out", "--device", "cpu"]
    rc, err = run(capsys, *bad)
    assert rc == 1 and "40" in err
    rc, err = run(capsys, *_score(env, root / "data", tmp_path / "out"))
    assert rc == 0, err


# ----------------------------------------------------------------------------------------- item 6
def test_item06_corrupt_weights_and_cache_files_are_one_clear_error(env, tmp_path, capsys):
    import shutil

    root, _ = env
    cases = {
        "garbage-json": ("crossmodal_weights.json", b"{not json", "not readable JSON"),
        "json-list": ("crossmodal_weights.json", b"[1, 2]", "expected a JSON object, found list"),
        "truncated": ("crossmodal_weights.safetensors", None, "not a readable safetensors file"),
    }
    for name, (file, content, expected) in cases.items():
        w = tmp_path / name
        shutil.copytree(root / "w", w)
        if content is None:
            data = (w / file).read_bytes()
            (w / file).write_bytes(data[: len(data) // 2])
        else:
            (w / file).write_bytes(content)
        rc, err = run(capsys, *_score(env, root / "data", tmp_path / f"out-{name}")[:-6], "--weights", w,
                      "--data", root / "data", "--out", tmp_path / f"out-{name}", "--device", "cpu")
        assert rc == 1 and expected in err and str(w) in err, (name, err)

    # an activation cache whose index is damaged
    cache = tmp_path / "acts"
    assert main([str(a) for a in ["cache-activations", "--model", root / "model", "--data", root / "data",
                                  "--out", cache, "--layer", LAYER, "--max-rows", "4"]]) == 0
    (cache / "cache.json").write_text("[]")
    rc, err = run(capsys, *_train(root, tmp_path / "sae", LAYER, "--activation_cache", cache))
    assert rc == 1 and "cache.json: expected a JSON object" in err and "cache-activations" in err


# ----------------------------------------------------------------------------------------- item 7
def test_item07_empty_datasets(env, tmp_path, capsys):
    import datasets

    from saev_curate.curation.scorers import SaevScorer

    root, common = env
    (tmp_path / "empty.jsonl").write_text("")
    rc, err = run(capsys, *_score(env, tmp_path / "empty.jsonl", tmp_path / "o1"))
    assert rc == 1 and "the file is empty" in err
    empty = datasets.load_from_disk(str(root / "data")).select([])
    empty.save_to_disk(str(tmp_path / "empty"))
    for argv in (_score(env, tmp_path / "empty", tmp_path / "o2"),
                 ["fit-weights", *common, "--data", tmp_path / "empty", "--out", tmp_path / "o3"],
                 ["select", "--data", tmp_path / "empty", "--out", tmp_path / "o4", "--fraction", "0.5"],
                 ["eval-sae", "--model", root / "model", "--sae", root / "sae", "--data", tmp_path / "empty"],
                 ["cache-activations", "--model", root / "model", "--data", tmp_path / "empty", "--out", tmp_path / "o5"]):
        rc, err = run(capsys, *argv)
        assert rc == 1 and "the dataset has no rows" in err, (argv[0], err)
    scorer = SaevScorer(str(root / "model"), None, str(root / "sae"), str(root / "w"), int(LAYER), device="cpu")
    out = scorer.map(empty)
    assert "saev_score" in out.column_names and "saev_error" in out.column_names and len(out) == 0


# ----------------------------------------------------------------------------------------- item 9
def test_item09_rows_beyond_the_models_context_are_row_errors(env, tmp_path, capsys):
    import datasets
    from scoring_rows import make_rows

    rows = make_rows(4, seed=3, with_bad=False)
    rows[1]["prompt"] = "word " * 2500
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "long"))
    rc, err = run(capsys, *_score(env, tmp_path / "long", tmp_path / "out", "--responses", "no"))
    assert rc == 0
    error = datasets.load_from_disk(str(tmp_path / "out"))["saev_error"][1]
    assert "more than the model's context of 2048" in error and "--max-length 2048" in error


# ----------------------------------------------------------------------------------------- item 10
def test_item10_out_paths(env, tmp_path, capsys):
    root, _ = env
    rc, err = run(capsys, *_score(env, root / "data", root / "data"))
    assert rc == 1 and "is the input dataset" in err
    rc, err = run(capsys, *_score(env, root / "data", tmp_path / "scored.tsv"))
    assert rc == 1 and "cannot write .tsv files" in err
    # CSV cannot hold image columns (issue 24, item 2): refused before scoring, nothing written
    rc, err = run(capsys, *_score(env, root / "data", tmp_path / "scored.csv"))
    assert rc == 1 and "cannot hold the image column(s) ['images']" in err and "scored.parquet" in err, err
    assert "scored.jsonl" in err and not any(tmp_path.glob("scored.csv*"))
    rc, _ = run(capsys, *_score(env, root / "data", tmp_path / "scored.parquet"))
    assert rc == 0 and (tmp_path / "scored.parquet").is_file()
    rc, err = run(capsys, "select", "--data", tmp_path / "scored.parquet", "--out", tmp_path / "kept.csv",
                  "--fraction", "0.5")
    assert rc == 1 and "cannot hold the image column(s)" in err and not (tmp_path / "kept.csv").exists()
    rc, err = run(capsys, "select", "--data", tmp_path / "scored.parquet", "--out", tmp_path / "kept.parquet",
                  "--fraction", "0.5", "--report", tmp_path / "why.csv")
    assert rc == 0 and (tmp_path / "kept.parquet").is_file() and (tmp_path / "why.csv").is_file()
    import datasets

    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "kept.parquet"), split="train")
    assert len(back) == 4 and back[0]["images"][0].size[0] > 1  # the images come back as images
    # the report on the kept rows' path would overwrite them (issue 24, item 6): refused before anything is written
    for report in (tmp_path / "kept2.parquet", tmp_path / "kept2" / "report.jsonl"):
        out = tmp_path / ("kept2.parquet" if report.suffix == ".parquet" else "kept2")
        rc, err = run(capsys, "select", "--data", tmp_path / "scored.parquet", "--out", out, "--fraction", "0.5",
                      "--report", report)
        assert rc == 1 and "would overwrite them" in err and not out.exists(), err


def _raw_images(ds) -> list:
    """Each row's image bytes, undecoded (``datasets.Image`` storage)."""
    import datasets

    raw = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return [[x["bytes"] for x in row] for row in raw["images"]]


def test_issue24_item01_score_and_select_write_image_rows_to_json_lines(env, tmp_path, capsys):
    """``score --out x.jsonl`` / ``select --out x.jsonl`` on rows with a list of images: JSON Lines with the images
    in base64, loaded back as the same rows (the same image bytes as the input, the same other columns)."""
    import base64

    import datasets

    from saev_curate.io.datasets import load_local_dataset

    root, _ = env
    data = datasets.load_from_disk(str(root / "data"))
    rc, err = run(capsys, *_score(env, root / "data", tmp_path / "scored.jsonl"))
    assert rc == 0, err
    lines = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(lines) == len(data)
    assert [[base64.b64decode(x["bytes"]) for x in r["images"]] for r in lines] == _raw_images(data)
    back = load_local_dataset(tmp_path / "scored.jsonl")
    assert back.features["images"] == datasets.List(datasets.Image())
    assert _raw_images(back) == _raw_images(data)
    for col in data.column_names:
        if col != "images":
            assert back[col] == data[col], col
    assert all(isinstance(v, float) for v in back["saev_score"])
    # select reads the JSON Lines and writes JSON Lines: the kept rows are the input's rows
    rc, err = run(capsys, "select", "--data", tmp_path / "scored.jsonl", "--out", tmp_path / "kept.jsonl",
                  "--fraction", "0.5", "--by", "saev_score")
    assert rc == 0, err
    kept = load_local_dataset(tmp_path / "kept.jsonl")
    order = sorted(range(len(back)), key=lambda i: -back["saev_score"][i])[:4]
    assert sorted(kept["saev_score"]) == sorted(back["saev_score"][i] for i in order)
    by_prompt = {p: imgs for p, imgs in zip(data["prompt"], _raw_images(data))}
    assert [by_prompt[p] for p in kept["prompt"]] == _raw_images(kept)


def test_item10_sae_files(env, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import save_file

    root, _ = env
    sae = tmp_path / "nan-sparsity"
    shutil.copytree(root / "sae", sae)
    save_file({"sparsity": torch.tensor([float("nan")] + [-2.0] * 191)}, str(sae / "sparsity.safetensors"))
    rc, err = run(capsys, "sae", "info", sae)
    assert rc == 1 and "sparsity.safetensors: holds 1 NaN/+inf values" in err
    pickled = tmp_path / "pickled"
    shutil.copytree(root / "sae", pickled)
    torch.save({"W_enc": torch.zeros(2)}, pickled / "sae_weights.safetensors")
    rc, err = run(capsys, "sae", "info", pickled)
    assert rc == 1 and "looks like a torch.save" in err


def test_item10_relative_image_paths_resolve_against_the_data_file(env, tmp_path, capsys, monkeypatch):
    from saev_curate.io.datasets import load_local_dataset

    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "a.png").write_bytes(_png(20, 20))
    (tmp_path / "data" / "rows.jsonl").write_text(json.dumps({"prompt": "what?", "image": "imgs/a.png"}) + "\n")
    monkeypatch.chdir(tmp_path)  # not the file's folder
    ds = load_local_dataset(tmp_path / "data" / "rows.jsonl")
    assert ds[0]["image"] == str((tmp_path / "data" / "imgs" / "a.png").resolve())
    rc, err = run(capsys, *_score(env, tmp_path / "data" / "rows.jsonl", tmp_path / "out", "--responses", "no"))
    assert rc == 0, err


def test_item10_flags_and_messages(env, tmp_path, capsys):
    import datasets

    root, common = env
    rc, err = run(capsys, "train-sae", "--model", root / "model", "--data", root / "data", "--steps", "10")
    assert rc == 1 and "unknown option --steps (did you mean --total_steps" in err
    for argv in (["demo", "--rows", "0"], ["demo", "--fraction", "0"]):
        with pytest.raises(SystemExit) as info:  # argparse: usage + one line, before any work
            main(argv)
        assert info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    prompt_only = tmp_path / "prompts"
    datasets.load_from_disk(str(root / "data")).select_columns(["prompt", "images"]).save_to_disk(str(prompt_only))
    rc, err = run(capsys, "eval-sae", "--model", root / "model", "--sae", root / "sae", "--data", prompt_only,
                  "--mode", "full", "--out", tmp_path / "eval.json")
    assert rc == 1 and "no row could be used" in err and "x " in err  # counts by reason
    from saev_curate.core.errors import InputError
    from saev_curate.curation.scorers import SaevScorer

    scorer = SaevScorer(str(root / "model"), None, str(root / "sae"), str(root / "w"), int(LAYER), device="cpu")
    with pytest.raises(InputError, match="call the scorer on it"):
        scorer.map([{"prompt": "x"}])
    # weights fitted for another SAE: the fix is the CLI command
    from scoring_rows import make_sae

    make_sae(64, seed=5).save(tmp_path / "other-sae")
    rc, err = run(capsys, "score", "--model", root / "model", "--sae", tmp_path / "other-sae", "--layer", LAYER,
                  "--weights", root / "w", "--data", root / "data", "--out", tmp_path / "o", "--device", "cpu")
    assert rc == 1 and "refit them for this SAE: saev-curate fit-weights" in err


def test_no_traceback_without_the_flag(env, tmp_path, capsys, monkeypatch):
    import saev_curate.curation.selection as selection

    root, _ = env

    def boom(*a, **k):
        raise PermissionError("[Errno 13] Permission denied: 'x'")

    monkeypatch.setattr(selection, "select", boom)
    argv = ["select", "--data", root / "data", "--out", tmp_path / "k", "--fraction", "0.5"]
    rc, err = run(capsys, *argv)
    assert rc == 1 and "PermissionError: [Errno 13]" in err and "--traceback" in err
    with pytest.raises(PermissionError):
        main([str(a) for a in argv] + ["--traceback"])


def test_item03_a_decompression_bomb_given_as_a_path_is_a_row_error(env, tmp_path):
    from saev_curate.curation.scorers import SaevScorer

    root, _ = env
    (tmp_path / "bomb.png").write_bytes(_bomb_png(14000, 14000))
    rows = [{"prompt": "what is this?", "image": str(tmp_path / "bomb.png")},
            {"prompt": "and this?", "image": _png(24, 24)}]
    scorer = SaevScorer(str(root / "model"), None, str(root / "sae"), str(root / "w"), int(LAYER), device="cpu")
    out = scorer(rows)
    assert "over the limit of 89,478,485" in out["saev_error"][0] and out["saev_error"][1] is None


@pytest.mark.parametrize("command, flag, value, named", [
    *[(c, "--defect-rate", "1.5", "--defect-rate 1.5") for c in ("demo", "pipeline")],
    *[(c, "--by", "saev_banana", "--by 'saev_banana'") for c in ("demo", "pipeline")],
    ("pipeline", "--learning-rate", "-1", "--learning-rate -1 must be positive"),
    ("pipeline", "--sft-weight", "-0.5", "--sft-weight -0.5 must be 0 (pure DPO) or positive"),
    ("pipeline", "--seeds", "3 3", "--seeds [3, 3]: give one or more distinct")])
def test_main_jobs_refuse_bad_arguments_before_building_anything(tmp_path, monkeypatch, capsys, command, flag, value,
                                                                 named):
    """With an empty cache a job's first step is the 9-minute testbed build: a bad argument must stop it first."""
    import saev_curate.testbed as testbed
    import saev_curate.testbed.build as build

    def no_build(*a, **k):
        raise AssertionError("the testbed build started before the arguments were checked")

    monkeypatch.setattr(build, "build_testbed", no_build)
    monkeypatch.setattr(testbed, "build_testbed", no_build)
    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "empty"))
    rc, err = run(capsys, command, "--out", tmp_path / "out", flag, *value.split())
    assert rc == 1 and named in err and err.count("\n") == 1, err


def test_an_unknown_flag_names_the_command_and_the_closest_flags(capsys):
    """Before any data is read: the command's own options, not the top-level usage (issue 24, item 11)."""
    rc, err = run(capsys, "select", "--data", "missing", "--out", "o", "--by", "s", "--fraction", "0.5",
                  "--repport", "r")
    assert rc == 1 and "select: unknown option --repport (did you mean --report" in err
    assert "`saev-curate select --help` lists every option" in err and "missing" not in err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"saev-curate {version('saev-curate')}"


def test_a_missing_model_folder_is_not_called_a_hub_id(tmp_path, capsys):
    """Issue 24, item 11: a path that does not exist is named as a missing folder, not a hub id."""
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "hi", "image": None}) + "\n")
    for model in (tmp_path / "no-such-model", "./no-such-model"):
        rc, err = run(capsys, "score", "--model", model, "--sae", "s", "--weights", "w", "--data",
                      tmp_path / "d.jsonl", "--out", tmp_path / "o")
        assert rc == 1 and "no such model folder" in err and "hub id (owner/name)" in err and "Repo id" not in err

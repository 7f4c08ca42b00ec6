"""recipes/evaluate_policy.py: accuracies against a brute-force per-row computation, lmms-eval-shaped results, adapters."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


def _tiny():
    from saev_curate.testing import build_tiny_vlm, save_tiny_vlm

    return build_tiny_vlm, save_tiny_vlm


def _image(seed: int):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


def brute_prompt(processor, row):
    from saev_curate.recipes.evaluate_policy import prompt_text

    text = prompt_text(processor, row["question"], True)
    return processor(text=[text], images=[[row["image"]]], return_tensors="pt", add_special_tokens=False)


def brute_loglik(model, processor, row, option: str) -> float:
    """One unpadded forward per option; sum of log p over the option's tokens."""
    enc = brute_prompt(processor, row)
    cont = processor.tokenizer(option, add_special_tokens=False)["input_ids"]
    ids = torch.cat([enc["input_ids"], torch.tensor([cont])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"]).logits
    logp = torch.log_softmax(logits[0].float(), -1)
    P = enc["input_ids"].shape[1]
    return float(sum(logp[P - 1 + t, c] for t, c in enumerate(cont)))


def brute_greedy(model, processor, row, n: int) -> str:
    """Token-by-token argmax without a cache, stopping at EOS."""
    enc = brute_prompt(processor, row)
    ids, eos = enc["input_ids"], processor.tokenizer.eos_token_id
    new = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"]).logits
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        if nxt == eos:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def tiny():
    build, _ = _tiny()
    model, processor = build("llava", seed=0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def case(tiny):
    """6 rows; answers placed by hand from the brute-force computation: acc 4/6, exact match 2/6."""
    model, processor = tiny
    rows, expect_acc, expect_em = [], [], []
    for i in range(6):
        row = {"question": f"What is shown in picture {i}?", "image": _image(i)}
        greedy = brute_greedy(model, processor, row, 3)
        options = [greedy or "cat", "a red sofa", "the yellow bus"]
        lls = [brute_loglik(model, processor, row, o) for o in options]
        best = int(np.argmax(lls))
        if i < 4:  # right by likelihood
            gold = best
        else:  # wrong by likelihood: the worst option
            gold = int(np.argmin(lls))
        if i in (0, 5):  # generation target = the greedy text (exact match 1) ...
            options[gold] = greedy if greedy else options[gold]
        elif normalize_eq(greedy, options[gold]):  # ... elsewhere make sure the greedy text is not the answer
            options[gold] = options[gold] + " indeed"
        lls = [brute_loglik(model, processor, row, o) for o in options]
        gold_ok = int(np.argmax(lls)) == gold
        row.update(options=options, answer=[options[gold], "ABC"[gold]][i % 2])  # text or letter
        rows.append((row, lls))
        expect_acc.append(float(gold_ok))
        expect_em.append(float(normalize_eq(greedy, options[gold])))
    return rows, expect_acc, expect_em


def normalize_eq(a: str, b: str) -> bool:
    from saev_curate.recipes.evaluate_policy import normalize

    return normalize(a) == normalize(b)


def test_accuracy_and_exact_match_match_brute_force(tiny, case, tmp_path):
    import datasets

    from saev_curate.recipes.evaluate_policy import evaluate, mean_stderr

    model, processor = tiny
    rows, expect_acc, expect_em = case
    assert sum(expect_em) >= 1 and 0 < sum(expect_acc) < len(rows)  # the case is not degenerate
    ds = datasets.Dataset.from_list([r for r, _ in rows])
    res = evaluate(model, processor, ds, task="toy", max_new_tokens=3, output_dir=tmp_path, log_samples=True)
    r = res["results"]["toy"]
    assert r["acc,none"] == pytest.approx(sum(expect_acc) / 6)
    assert r["acc_stderr,none"] == pytest.approx(mean_stderr(expect_acc))
    assert r["exact_match,none"] == pytest.approx(sum(expect_em) / 6)
    assert r["acc_stderr,none"] == pytest.approx(math.sqrt(np.var(expect_acc, ddof=1) / 6))
    assert res["n-samples"]["toy"] == {"original": 6, "effective": 6}
    assert "config" in res and res["configs"]["toy"]["task"] == "toy"
    (res_file,) = tmp_path.glob("*/*_results.json")  # lmms-eval's <model>/<date>_results.json
    on_disk = json.loads(res_file.read_text())
    assert on_disk["results"]["toy"]["acc,none"] == r["acc,none"]
    samples = [json.loads(line) for line in
               res_file.with_name(res_file.name.replace("_results.json", "_samples_toy.jsonl")).read_text().splitlines()]
    assert [s["acc"] for s in samples] == expect_acc and [s["exact_match"] for s in samples] == expect_em
    for s, (_, lls) in zip(samples, rows):  # batched + padded log-likelihoods = one forward per option
        assert [ll for ll, _ in s["resps"]] == pytest.approx(lls, abs=1e-4)


def test_answer_forms():
    from saev_curate.recipes.evaluate_policy import gold_index

    row = {"options": ["cat", "dog", "bus"]}
    assert [gold_index({**row, "answer": a}) for a in (2, "dog", "c", " cat ")] == [2, 1, 2, 0]
    for bad in (3, "horse", None, True):
        with pytest.raises(ValueError):
            gold_index({**row, "answer": bad})


def test_saev_score_of_the_policy(tiny, case):
    import datasets

    from saev_curate import SAE, CrossModalWeights, SAEConfig
    from saev_curate.curation.config import ScoreConfig
    from saev_curate.recipes.evaluate_policy import evaluate, scoring_rows

    model, processor = tiny
    rows = [r for r, _ in case[0]]
    sae = SAE(SAEConfig(d_in=64, d_sae=128, hook_layer=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    w = CrossModalWeights.fit(model, processor, sae, scoring_rows(rows), 1, n_reference=None, batch_size=6)
    res = evaluate(model, processor, datasets.Dataset.from_list(rows), task="toy", sae=sae, weights=w,
                   score_config=ScoreConfig(layer=1, delta=0.0), max_new_tokens=0)
    r = res["results"]["toy"]
    assert math.isfinite(r["saev_score,none"]) and r["saev_score,none"] > 0
    assert "saev_score" in res["higher_is_better"]["toy"]


def test_cli_main_with_an_adapter(tmp_path, case):
    import datasets
    from peft import LoraConfig, get_peft_model

    from saev_curate.recipes.evaluate_policy import main, make_parser

    _, save = _tiny()
    base = save("llava", tmp_path / "base", seed=0)
    build, _ = _tiny()
    model, _ = build("llava", seed=0)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    datasets.Dataset.from_list([r for r, _ in case[0]]).save_to_disk(str(tmp_path / "heldout"))
    common = ["--model_name_or_path", str(base), "--dataset_name", str(tmp_path / "heldout"), "--max_new_tokens", "2",
              "--log_samples"]
    r_base = main(*make_parser().parse_args_and_config(args=[*common, "--output_dir", str(tmp_path / "e0")]))
    r_ad = main(*make_parser().parse_args_and_config(
        args=[*common, "--adapter", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "e1")]))
    # lmms-eval's layout (issue 24, item 8): <output_dir>/<last two path parts joined by __>/<date>_results.json,
    # the adapter's name when there is one, the samples beside it with the same date
    base_dir, ad_dir = tmp_path / "e0" / f"{tmp_path.name}__base", tmp_path / "e1" / f"{tmp_path.name}__adapter"
    assert [p.parent for p in (tmp_path / "e0").glob("*/*")] == [base_dir] * 2
    (res0,) = base_dir.glob("*_results.json")
    (res1,) = ad_dir.glob("*_results.json")
    date = res1.name[: -len("_results.json")]
    assert re.fullmatch(r"\d{8}_\d{6}", date) and (ad_dir / f"{date}_samples_saev_heldout.jsonl").is_file()
    assert "adapter=" in r_ad["config"]["model_args"]
    s0 = [json.loads(x)["resps"] for x in next(base_dir.glob("*_samples_saev_heldout.jsonl")).read_text().splitlines()]
    s1 = [json.loads(x)["resps"] for x in (ad_dir / f"{date}_samples_saev_heldout.jsonl").read_text().splitlines()]
    assert s0 != s1  # the adapter is on
    assert r_base["results"]["saev_heldout"]["acc,none"] == pytest.approx(sum(case[1]) / 6)
    assert json.loads(res0.read_text())["results"]["saev_heldout"]["acc,none"] == pytest.approx(sum(case[1]) / 6)
    # a second run into the same folder keeps the first run's files
    main(*make_parser().parse_args_and_config(args=[*common, "--output_dir", str(tmp_path / "e0")]))
    assert len(list(base_dir.glob("*_results.json"))) == 2 and res0.is_file()
    # one row: stderr is undefined and written as lmms-eval writes it, strict JSON (issue 24, item 8)
    main(*make_parser().parse_args_and_config(args=[*common, "--limit", "1", "--output_dir", str(tmp_path / "e2")]))
    (res2,) = (tmp_path / "e2").glob("*/*_results.json")
    doc = json.loads(res2.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert doc["results"]["saev_heldout"]["acc_stderr,none"] == "N/A"
    # mistakes are refused before the model loads
    datasets.Dataset.from_list([{"question": r["question"], "image": r["image"], "answer": r["answer"]}
                                for r, _ in case[0]]).save_to_disk(str(tmp_path / "no-options"))
    datasets.Dataset.from_list([{**r, "answer": "horse"} for r, _ in case[0]]).save_to_disk(str(tmp_path / "bad-ans"))
    for bad, named in ((["--limit", "0"], "--limit 0"), (["--sae", str(tmp_path)], "--sae and --crossmodal_weights"),
                       (["--dataset_name", str(tmp_path / "no-options")], "no `options` column"),
                       (["--dataset_name", str(tmp_path / "bad-ans")], "held-out row 0: answer 'horse'")):
        with pytest.raises(Exception, match=named):
            main(*make_parser().parse_args_and_config(args=[*common, *bad, "--model_name_or_path", "/no/such/model",
                                                            "--output_dir", str(tmp_path / "e3")]))


def test_description_rows_report_hallucination_rate_and_recall(monkeypatch):
    """Description rows (no options, a testbed concept): the greedy text's facts checked against the concept,
    aggregated over the set as CHAIR does; the counts below are worked out by hand."""
    from saev_curate.core.errors import InputError
    from saev_curate.recipes import evaluate_policy as ev
    from saev_curate.testbed.images import Concept

    three = Concept("digit", digit=3).to_dict()  # facts: three, odd, after two
    scene = Concept("scene", shape="circle", colour="red", count=2, size="big", position=("left",)).to_dict()
    said = iter(["a handwritten three . it is odd .",  # 2 stated, 0 false, 2 of 3 recalled
                 "two blue circles . they are on the left . they are big ."])  # 5 stated, 1 false, 4 of 5 recalled
    monkeypatch.setattr(ev, "generate_answer", lambda *a, **k: next(said))
    rows = [{"question": "describe the image .", "image": _image(0), "concept": three},
            {"question": "describe the image .", "image": _image(1), "concept": scene}]
    from types import SimpleNamespace

    stub = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode: None)  # generation is patched
    res = ev.evaluate(stub, None, rows, task="describe")["results"]["describe"]
    assert res["hallucination_rate,none"] == pytest.approx(1 / 7)
    assert res["recall,none"] == pytest.approx(6 / 8)
    assert "acc,none" not in res
    with pytest.raises(InputError, match="no `options` column"):
        ev.evaluate(stub, None, [{"question": "describe the image .", "image": _image(0)}])


def test_recipe_mistakes_are_one_line(tmp_path, capsys):
    """As the CLI: a user's mistake in a recipe is one line on stderr and exit code 1 (issue 24, item 11), in
    process and as users run the script; --traceback shows the traceback."""
    import os
    import subprocess

    from saev_curate.recipes import dpo
    from saev_curate.recipes.common import run_script
    from saev_curate.recipes.evaluate_policy import main, make_parser

    common = ["--model_name_or_path", str(tmp_path / "nowhere"), "--dataset_name", str(tmp_path / "data")]
    assert run_script(make_parser, main, [*common, "--limit", "0"], prog="recipes/evaluate_policy.py") == 1
    err = capsys.readouterr().err
    assert err.startswith("recipes/evaluate_policy.py: error: --limit 0") and err.count("\n") == 1, err
    with pytest.raises(Exception, match="--limit 0"):
        run_script(make_parser, main, [*common, "--limit", "0", "--traceback"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: [1e-4\n")
    assert run_script(dpo.make_parser, dpo.main, ["--config", str(bad_yaml)], prog="recipes/dpo.py") == 1
    err = capsys.readouterr().err
    assert err.startswith("recipes/dpo.py: error: ") and "--traceback" in err and "Traceback" not in err, err
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "evaluate_policy.py"), *common, "--limit", "0"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1",
                              "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert run.returncode == 1 and "Traceback" not in run.stderr and "--limit 0" in run.stderr, run.stderr[-2000:]


def test_a_missing_image_is_that_rows_error_not_the_evaluations_end(tiny, case, tmp_path):
    """Issue 24, item 8: the other rows are evaluated exactly as without the bad one; the bad row is listed with its
    reason; when no row is readable the run is one error naming the most common reason."""
    import datasets

    from saev_curate.core.errors import InputError
    from saev_curate.recipes.evaluate_policy import evaluate

    model, processor = tiny
    rows = []
    for i, (r, _) in enumerate(case[0]):  # images as files, so that one of them can be missing
        r["image"].save(tmp_path / f"{i}.png")
        rows.append({**r, "image": str(tmp_path / f"{i}.png")})
    good = evaluate(model, processor, datasets.Dataset.from_list(rows[1:]), task="toy", max_new_tokens=0)
    broken = [{**rows[0], "image": str(tmp_path / "gone.png")}] + rows[1:]
    res = evaluate(model, processor, datasets.Dataset.from_list(broken), task="toy", max_new_tokens=0)
    assert res["results"]["toy"]["acc,none"] == pytest.approx(good["results"]["toy"]["acc,none"])
    assert res["n-samples"]["toy"] == {"original": 6, "effective": 5}
    (err,) = res["row_errors"]["toy"]
    assert err["doc_id"] == 0 and "gone.png" in err["error"]
    with pytest.raises(InputError, match="no row of toy could be evaluated: 6 rows"):
        evaluate(model, processor, datasets.Dataset.from_list([{**r, "image": str(tmp_path / "x.png")} for r in rows]),
                 task="toy", max_new_tokens=0)


def test_issue24_item08_mistakes_in_the_held_out_set_and_the_score_arguments(tiny, case):
    """No `options` column (a set the evaluation cannot read) and an SAE without its weights are one-line errors
    naming the column or the argument, raised before any forward (the model here fails on any call)."""
    from types import SimpleNamespace

    from saev_curate.core.errors import InputError
    from saev_curate.recipes.evaluate_policy import evaluate

    def boom(*a, **k):
        raise AssertionError("the model ran before the mistake was found")

    model = SimpleNamespace(training=False, eval=boom, train=boom, parameters=boom, __call__=boom)
    rows = [r for r, _ in case[0]]
    for data, named in (([{"question": r["question"], "image": r["image"]} for r in rows], "no `options` column"),
                        ([{"image": r["image"], "options": r["options"], "answer": r["answer"]} for r in rows],
                         "no `question` column"),
                        ([{k: v for k, v in r.items() if k != "answer"} for r in rows], "no `answer` column")):
        with pytest.raises(InputError, match=named) as e:
            evaluate(model, None, data)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="sae and weights go together"):
        evaluate(model, None, rows, sae=object())
    with pytest.raises(InputError, match="sae and weights go together"):
        evaluate(model, None, rows, weights=object())


def test_lmms_eval_model_folder_names():
    """lmms-eval's sanitize_model_name on hub ids and paths, written out by hand."""
    from saev_curate.recipes.evaluate_policy import sanitize_model_name

    assert sanitize_model_name("lmms-lab/llava-onevision-qwen2-0.5b") == "lmms-lab__llava-onevision-qwen2-0.5b"
    assert sanitize_model_name("/data/runs/out/dpo-top50") == "out__dpo-top50"
    assert sanitize_model_name("./base") == "base" and sanitize_model_name("out/dpo/") == "out__dpo"
    assert sanitize_model_name("llava") == "llava"

"""recipes/dpo.py and recipes/sft.py on CPU: tiny LLaVA, LoRA and QLoRA, SAE-V scoring + selection, 2 steps."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

CONFIGS = ROOT / "recipes" / "configs"


def tiny_builders():
    from saev_curate.testing import save_tiny_vlm

    return save_tiny_vlm


def _image(seed: int):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


def align_anything_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"question": f"What is in picture {i}?", "image": _image(seed * 100 + i),
             "response_1": "A cat on a red sofa.", "response_2": "The bus is yellow.",
             "overall_response": 1 + i % 2} for i in range(n)]


def random_sae(d_in: int, d_sae: int = 128, layer: int = 1, seed: int = 0):
    from saev_curate import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_layer=layer))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) * 0.5)
    return sae


def parse(recipe: str, config: Path, overrides: list[str]):
    from recipes import dpo, sft

    return {"dpo": dpo, "sft": sft}[recipe].make_parser().parse_args_and_config(
        args=["--config", str(config), *overrides])


def cpu_overrides(model, data, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--warmup_steps", "0", "--lora_r", "4", "--lora_alpha", "8", *extra]


def lora_b_norm(adapter_dir: Path) -> float:
    from safetensors.torch import load_file

    w = load_file(str(adapter_dir / "adapter_model.safetensors"))
    b = [v for k, v in w.items() if "lora_B" in k]
    assert b, f"no LoRA B matrices in {sorted(w)[:5]}"
    return float(sum(v.float().norm() for v in b))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("recipes")
    model = tiny_builders()("llava", root / "model", seed=0)
    random_sae(64).save(root / "sae")
    datasets.Dataset.from_list(align_anything_rows(8)).save_to_disk(str(root / "data"))
    return root, model


@pytest.fixture(scope="module")
def dpo_run(work):
    """One DPO + LoRA run through the CPU config: score with SAE-V, keep the top half, 2 steps."""
    from saev_curate.recipes.dpo import main

    root, model = work
    out = root / "dpo"
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(
        model, root / "data", out, "--sae", str(root / "sae"), "--n_reference", "8", "--delta", "0",
        "--score_batch_size", "4"))
    trainer = main(*args)
    return out, trainer


def test_dpo_lora_scores_selects_and_saves_adapter(dpo_run):
    import datasets

    out, trainer = dpo_run
    assert (out / "adapter_config.json").is_file()
    assert lora_b_norm(out) > 0  # B starts at zero: non-zero means the adapter trained
    assert trainer.state.global_step == 2
    sel = json.loads((out / "selection.json").read_text())
    scored = datasets.Dataset.from_parquet(str(out / "saev_scores" / "scores.parquet"))
    assert scored["row_index"] == list(range(8))
    # select_by auto: the table's recommendation for preference rows, the model's own perplexity, lowest kept
    assert sel["by"] == "response_perplexity" and "auto" in sel["by_from"]
    ppl = scored["saev_ppl"]
    assert sel["n_rows"] == 8 and sel["n_kept"] == 4 and sel["fraction"] == 0.5
    best = sorted(range(8), key=lambda i: (ppl[i], i))[:4]
    assert sel["kept_indices"] == sorted(best)
    assert sel["cut"] == pytest.approx(max(ppl[i] for i in best))
    assert sel["score_stats"]["all"]["n"] == 8 and sel["score_stats"]["kept"]["max"] <= sel["score_stats"]["dropped"]["min"]
    assert all(v is not None for v in scored["saev_score"])  # with an SAE, the SAE-V columns come along
    src = sel["scores_source"]
    assert src["kind"] == "computed" and src["sae"].endswith("sae") and src["scorer_fingerprint"]
    assert (out / "crossmodal_weights").is_dir() and src["crossmodal_weights"].endswith("crossmodal_weights")
    assert sel["recipe"] == "dpo" and sel["args"]["saev"]["select_fraction"] == 0.5


@pytest.fixture(scope="module")
def scored_folder(work, dpo_run):
    """The DPO run's data with its saved scores joined back (what `saev-curate score --out` writes)."""
    import datasets

    from saev_curate.recipes.common import join_scores

    root, _ = work
    path = root / "scored"
    join_scores(datasets.load_from_disk(str(root / "data")),
                dpo_run[0] / "saev_scores" / "scores.parquet").save_to_disk(str(path))
    return path


def test_sft_lora_selects_on_an_already_scored_folder(work, dpo_run, scored_folder):
    from saev_curate.recipes.sft import main

    root, model = work
    out = root / "sft"
    scored = scored_folder
    args = parse("sft", CONFIGS / "sft_testbed_cpu.yaml", cpu_overrides(
        model, scored, out, "--select_fraction", "0.25"))
    trainer = main(*args)
    assert trainer.state.global_step == 2 and lora_b_norm(out) > 0
    sel = json.loads((out / "selection.json").read_text())
    dpo_sel = json.loads((dpo_run[0] / "selection.json").read_text())
    assert sel["scores_source"] == {"kind": "dataset columns", "dataset": str(scored)}
    assert sel["n_kept"] == 2 and set(sel["kept_indices"]) <= set(dpo_sel["kept_indices"])
    assert not (out / "saev_scores").exists()  # nothing re-scored


def test_selection_needs_scores_or_sae(work, tmp_path):
    from saev_curate.recipes.dpo import main

    root, model = work
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(model, root / "data", tmp_path / "o",
                                                                         "--select_by", "saev_score"))
    with pytest.raises(ValueError, match="needs its column 'saev_score'"):
        main(*args)


def test_dpo_with_rescoring_during_training(work, dpo_run, scored_folder):
    """--rescore_every_n_steps: all rows go to the trainer, the callback starts from the recipe's selection."""
    from saev_curate.recipes.dpo import main

    root, model = work
    first = dpo_run[0]
    out = root / "dpo-rescore"
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(
        model, scored_folder, out, "--sae", str(root / "sae"), "--crossmodal_weights",
        str(first / "crossmodal_weights"), "--delta", "0", "--rescore_every_n_steps", "1", "--score_batch_size", "4"))
    trainer = main(*args)
    callbacks = [c for c in trainer.callback_handler.callbacks if type(c).__name__ == "SaevRescoreCallback"]
    assert len(callbacks) == 1 and len(trainer.train_dataset) == 8  # every row; the sampler draws the selection
    assert trainer.state.global_step == 2 and lora_b_norm(out) > 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["rescore_every_n_steps"] == 1 and sel["n_kept"] == 4
    assert any(k.startswith("saev/") for entry in trainer.state.log_history for k in entry)


def test_dpo_qlora_4bit_on_cpu(tmp_path):
    """QLoRA: bitsandbytes 4-bit base (layers >= 64 wide for its CPU kernel), LoRA adapters trained in fp32."""
    import datasets

    from saev_curate.recipes.dpo import main

    model = tiny_builders()("llava", tmp_path / "model", seed=0, hidden_size=128, intermediate_size=256,
                            vision_hidden_size=64)
    datasets.Dataset.from_list(align_anything_rows(4, seed=1)).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "out"
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(
        model, tmp_path / "data", out, "--load_in_4bit", "--select_by", "random", "--select_fraction", "1.0",
        "--max_steps", "1"))
    assert args[3].load_in_4bit
    trainer = main(*args)
    linear4 = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4, "the base model is not 4-bit"
    assert trainer.state.global_step == 1 and lora_b_norm(out) > 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["by"] == "random" and sel["n_kept"] == 4 and sel["scores_source"]["kind"] == "none"


def test_dpo_scores_and_trains_rlaif_v_rows(work, tmp_path):
    """RLAIF-V rows as they are (question/image/chosen/rejected): scored with SAE-V (chosen and rejected too), the
    top half kept, DPO-trained; the saved scores keep the user's columns."""
    import datasets
    from scoring_rows import make_rlaif_v_rows

    from saev_curate.recipes.dpo import main

    root, model = work
    rows = make_rlaif_v_rows(4, seed=3)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "out"
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(
        model, tmp_path / "data", out, "--sae", str(root / "sae"), "--n_reference", "4", "--delta", "0",
        "--score_batch_size", "4"))
    trainer = main(*args)
    assert trainer.state.global_step == 2 and lora_b_norm(out) > 0
    scored = datasets.Dataset.from_parquet(str(out / "saev_scores" / "scores.parquet"))
    # the scores alone, by row index: no second copy of the rows or their images (issue 24, item 15)
    assert scored["row_index"] == [0, 1, 2, 3] and all(c.startswith("saev_") for c in scored.column_names[:-1])
    assert not {"question", "image", "chosen", "rejected", "prompt"} & set(scored.column_names)
    assert all(v is not None for c in ("saev_score", "saev_score_margin") for v in scored[c])
    sel = json.loads((out / "selection.json").read_text())
    assert sel["n_rows"] == 4 and sel["n_kept"] == 2


def test_row_shapes_become_trl_rows():
    import datasets

    from saev_curate.core.errors import InputError
    from saev_curate.recipes.common import to_preference_rows, to_sft_rows

    img = _image(0)
    aa = datasets.Dataset.from_list([{"question": "q?", "image": img, "response_1": "r1", "response_2": "r2",
                                      "overall_response": 2, "saev_score": 1.0}])
    rlaif = datasets.Dataset.from_list([{"question": "q?", "image": img, "chosen": "c", "rejected": "r", "idx": 3}])
    trl = datasets.Dataset.from_list([{"prompt": "q?", "images": [img], "chosen": "c", "rejected": "r"}])
    p = to_preference_rows(aa)[0]
    assert set(p) == {"prompt", "chosen", "rejected", "image"}
    assert p["prompt"] == [{"role": "user", "content": "q?"}] and p["chosen"][0]["content"] == "r2"
    assert p["rejected"] == [{"role": "assistant", "content": "r1"}]
    r = to_preference_rows(rlaif)[0]
    assert set(r) == {"prompt", "chosen", "rejected", "image"} and r["prompt"] == [{"role": "user", "content": "q?"}]
    assert r["chosen"] == [{"role": "assistant", "content": "c"}] and r["rejected"][0]["content"] == "r"
    assert to_sft_rows(rlaif)[0]["completion"] == [{"role": "assistant", "content": "c"}]
    assert set(to_preference_rows(trl)[0]) == {"prompt", "chosen", "rejected", "images"}
    s = to_sft_rows(aa)[0]
    assert set(s) == {"prompt", "completion", "image"} and s["completion"][0]["content"] == "r2"
    with pytest.raises(InputError, match=r"DPO training: unrecognised row format \(columns: \['text'\]\); accepted "
                                         r"formats: prompt/chosen/rejected \(TRL preference\), question/chosen/"
                                         r"rejected \(RLAIF-V\), question/response_1/response_2/overall_response "
                                         r"\(Align-Anything\)$"):
        to_preference_rows(datasets.Dataset.from_list([{"text": "x"}]))
    with pytest.raises(InputError, match=r"row 0: 'overall_response' must be 1 or 2 .* got 3"):
        to_preference_rows(aa.map(lambda _: {"overall_response": 3}))
    with pytest.raises(InputError, match=r"look like TRL preference rows but lack rejected"):
        to_preference_rows(datasets.Dataset.from_list([{"prompt": "p", "chosen": "c"}]))
    with pytest.raises(InputError, match=r"SFT training: the columns \['images', 'texts'\] are interleaved rows"):
        to_sft_rows(datasets.Dataset.from_list([{"texts": ["x", None], "images": [None, img]}]))


def test_dpo_script_under_accelerate_launch_two_processes(work, tmp_path):
    """The script under a two-process launcher (2 CPU processes, gloo): each process scores its share of the rows, the
    scores are gathered, the selection is the one-process selection."""
    import os
    import subprocess

    import datasets

    root, model = work
    out = tmp_path / "out"
    # torchrun, what `accelerate launch --multi_gpu` runs: on a CPU, `accelerate launch --cpu --num_processes 2`
    # starts one process (accelerate's multi-CPU mode needs its config or mpirun), which hid that only one scored
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "recipes" / "dpo.py"), "--config", str(CONFIGS / "dpo_testbed_cpu.yaml"),
           *cpu_overrides(model, root / "data", out, "--sae", str(root / "sae"), "--n_reference", "8",
                          "--delta", "0", "--per_device_train_batch_size", "1", "--select_by", "saev_score")]
    # this checkout's package, not whichever one the environment has installed (the launcher runs from tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and lora_b_norm(out) > 0
    # each process scored its own half of the 8 rows (issue 24, item 13), not the main process all of them
    logs = run.stdout + run.stderr
    assert "process 1 of 2: 4 of 8 rows" in logs and "process 2 of 2: 4 of 8 rows" in logs, logs[-3000:]
    scores = datasets.Dataset.from_parquet(str(out / "saev_scores" / "scores.parquet"))["saev_score"]
    sel = json.loads((out / "selection.json").read_text())
    assert sel["kept_indices"] == sorted(sorted(range(8), key=lambda i: (-scores[i], i))[:4])


# ----------------------------------------------------------------------------------- issue 24, items 7 and 15
def _no_model(monkeypatch):
    """Make loading the model fail loudly: the mistakes below must be found before it."""
    from saev_curate.recipes import common

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(common, "load_model_and_processor", boom)


def test_issue24_item07_an_output_dir_holds_one_run(work, dpo_run, scored_folder, tmp_path, monkeypatch):
    from saev_curate.core.errors import InputError
    from saev_curate.recipes.dpo import main

    root, model = work
    out = dpo_run[0]
    _no_model(monkeypatch)
    base = ["--sae", str(root / "sae"), "--n_reference", "8", "--delta", "0", "--score_batch_size", "4"]
    before = sorted(p.name for p in out.iterdir())
    # resuming with another fraction or method: refused, both values named
    for extra, named in ((["--select_fraction", "0.25"], "saev.select_fraction 0.5 -> 0.25"),
                         (["--select_by", "saev_score"], "saev.select_by 'auto' -> 'saev_score'"),
                         (["--learning_rate", "1e-3"], "training.learning_rate 0.01 -> 0.001")):
        args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", [*cpu_overrides(model, root / "data", out, *base),
                                                                 *extra])
        with pytest.raises(InputError, match=re.escape(named)) as e:
            main(*args)
        assert "holds another run" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing of the first run touched
    # a folder with files and no record (another tool's, or a run from before the record): refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adapter_model.safetensors").write_bytes(b"x")
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(model, root / "data", tmp_path / "other"))
    with pytest.raises(InputError, match="is not empty .*adapter_model.safetensors.* holds no saev_run.json"):
        main(*args)
    # rescoring on a dataset that already has its scores, without --crossmodal_weights: never the weights that
    # happen to lie in output_dir (here: the first run's folder copied beside), refused before the model loads
    import shutil

    shutil.copytree(out / "crossmodal_weights", tmp_path / "fresh" / "crossmodal_weights")
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(
        model, scored_folder, tmp_path / "fresh", "--sae", str(root / "sae"), "--rescore_every_n_steps", "1",
        "--select_by", "saev_score"))
    with pytest.raises(InputError, match="already has saev_score, so the recipe fits none: pass --crossmodal_weights"):
        main(*args)


def test_issue24_item15_streaming_and_a_missing_eval_split_are_refused(work, tmp_path, monkeypatch):
    from saev_curate.core.errors import InputError
    from saev_curate.recipes.sft import main

    root, model = work
    _no_model(monkeypatch)
    args = parse("sft", CONFIGS / "sft_testbed_cpu.yaml", cpu_overrides(model, root / "data", tmp_path / "a",
                                                                         "--dataset_streaming", "true"))
    with pytest.raises(InputError, match="--dataset_streaming: SAE-V selection ranks every row"):
        main(*args)
    args = parse("sft", CONFIGS / "sft_testbed_cpu.yaml", cpu_overrides(
        model, root / "data", tmp_path / "b", "--eval_strategy", "steps", "--eval_steps", "1"))
    with pytest.raises(InputError, match="--dataset_test_split 'test'"):
        main(*args)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_issue24_item15_eval_split_and_push_to_hub_as_trl_scripts(work, tmp_path, monkeypatch):
    """With eval_strategy set the recipe evaluates on dataset_test_split (TRL's scripts: eval_dataset =
    dataset[dataset_test_split]); push_to_hub calls trainer.push_to_hub(dataset_name=...) after saving."""
    import datasets
    import transformers

    from saev_curate.recipes.dpo import main

    root, model = work
    datasets.DatasetDict(train=datasets.Dataset.from_list(align_anything_rows(4, seed=5)),
                         test=datasets.Dataset.from_list(align_anything_rows(2, seed=6))).save_to_disk(
        str(tmp_path / "dd"))
    pushed = []
    monkeypatch.setattr(transformers.Trainer, "init_hf_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(transformers.Trainer, "push_to_hub",
                        lambda self, *a, **k: pushed.append((sorted(p.name for p in Path(self.args.output_dir)
                                                                    .iterdir()), k)))
    args = parse("dpo", CONFIGS / "dpo_testbed_cpu.yaml", cpu_overrides(
        model, tmp_path / "dd", tmp_path / "out", "--select_by", "random", "--select_fraction", "1.0",
        "--eval_strategy", "steps", "--eval_steps", "1", "--push_to_hub", "true", "--hub_model_id", "me/x"))
    trainer = main(*args)
    assert len(trainer.eval_dataset) == 2
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    files, kw = pushed[-1]  # (Trainer.save_model pushes too when push_to_hub is set; the script's call is last)
    assert kw == {"dataset_name": str(tmp_path / "dd")}
    assert "selection.json" in files and "adapter_model.safetensors" in files and "saev_run.json" in files

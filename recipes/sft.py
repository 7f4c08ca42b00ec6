# Copyright 2025 the saev-curate authors. Apache-2.0.
r"""SFT with PEFT on SAE-V-selected data (the shape of TRL's examples/scripts/sft_vlm.py).

Score the rows with the pre-alignment policy's SAE-V, keep the top fraction, train LoRA/QLoRA adapters:

```bash
accelerate launch --config_file recipes/configs/deepspeed_zero2.yaml recipes/sft.py \
    --config recipes/configs/sft_llava_next_7b_align_anything_lora.yaml \
    --sae ./sae-llava-next-layer16 --select_fraction 0.5 --output_dir out/sft-llava-next-top50
```

On a CPU (minutes, a small model):

```bash
python recipes/sft.py --config recipes/configs/sft_testbed_cpu.yaml \
    --model_name_or_path ./my-small-vlm --dataset_name ./prefs --sae ./sae --select_fraction 0.5
```

The dataset (`--dataset_name`) is a hub id (read from the local cache under `HF_HUB_OFFLINE=1`), a local dataset
(save_to_disk folder, parquet, JSON, CSV) or an already-scored folder (`saev-curate score --out`: its `saev_*`
columns are selected on, never re-scored). Rows: TRL SFT (`messages`, or `prompt`/`completion`, + `image(s)`), or
any preference shape the DPO recipe takes (TRL, Align-Anything, RLAIF-V), trained on its preferred response.
Written to `--output_dir`: the adapter, `selection.json` (kept row indices, rule, score statistics, where the
scores came from), `saev_run.json` (the run's settings), and when the recipe scored `crossmodal_weights/` and
`saev_scores/scores.parquet` (row index + score columns, no copy of the rows). One output_dir holds one run:
other settings there are refused before the model loads (a rerun with the same settings resumes). As in TRL's
scripts: `--eval_strategy` evaluates on `--dataset_test_split`, `--push_to_hub` pushes the folder;
`--dataset_streaming` is refused (selection ranks every row).
"""

import sys

from saev_curate.recipes.sft import main, make_parser

__all__ = ["main", "make_parser"]

if __name__ == "__main__":
    from saev_curate.recipes.common import run_script

    sys.exit(run_script(make_parser, main, prog="recipes/sft.py"))

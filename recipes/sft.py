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
scores came from), `saev_scored/` and `crossmodal_weights/` when the recipe scored.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repo root replaces recipes/ on the path (no module shadowing)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from recipes.common import (  # noqa: E402
    SaevArguments,
    args_record,
    attach_rescore_callback,
    curate,
    load_model_and_processor,
    load_train_dataset,
    to_sft_rows,
    write_selection,
)


def main(script_args, saev_args, training_args, model_args, *, model=None, processor=None, dataset=None):
    """Curate, then SFT-train adapters; returns the trainer (its model holds the trained adapter).

    ``model``/``processor``/``dataset`` may be passed in-memory (the pipeline and the tests do); otherwise they are
    loaded from ``model_args.model_name_or_path`` and ``script_args.dataset_name``.
    """
    from trl import SFTTrainer, get_peft_config

    if model is None or processor is None:
        model, processor = load_model_and_processor(model_args, training_args)
    if dataset is None:
        dataset = load_train_dataset(script_args)

    ################
    # SAE-V: score (or read scores) and select
    ################
    kept, selection, scored = curate(dataset, model, processor, saev_args, model_args, training_args.output_dir,
                                     dataset_name=script_args.dataset_name)
    # re-scoring during training: all rows go to the trainer and the callback's sampler draws the selection
    train_dataset = to_sft_rows(scored if saev_args.rescore_every_n_steps else kept)

    ################
    # Training
    ################
    peft_config = get_peft_config(model_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    attach_rescore_callback(trainer, scored, saev_args, training_args.output_dir)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        write_selection(selection, training_args.output_dir,
                        {"recipe": "sft", "args": args_record(script=script_args, saev=saev_args, model=model_args)})
    trainer.accelerator.print(f"adapter and selection.json saved to {training_args.output_dir} "
                              f"({selection['n_kept']} of {selection['n_rows']} rows by {selection['by']})")
    return trainer


def make_parser():
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SaevArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    script_args, saev_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, saev_args, training_args, model_args)

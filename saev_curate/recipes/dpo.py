"""The DPO recipe's core: ``main(...)`` and ``make_parser()``; ``recipes/dpo.py`` is the file users run
(its docstring has the ``accelerate launch`` lines), ``saev-curate pipeline`` calls ``main`` in-process.
"""

from __future__ import annotations

from saev_curate.recipes.common import (
    SaevArguments,
    args_record,
    attach_rescore_callback,
    curate,
    load_model_and_processor,
    load_train_dataset,
    to_preference_rows,
    write_selection,
)


def main(script_args, saev_args, training_args, model_args, *, model=None, processor=None, dataset=None):
    """Curate, then DPO-train adapters; returns the trainer (its model holds the trained adapter).

    ``model``/``processor``/``dataset`` may be passed in-memory (the pipeline and the tests do); otherwise they are
    loaded from ``model_args.model_name_or_path`` and ``script_args.dataset_name``.
    """
    from trl import DPOTrainer, get_peft_config

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
    train_dataset = to_preference_rows(scored if saev_args.rescore_every_n_steps else kept)

    ################
    # Training
    ################
    peft_config = get_peft_config(model_args)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # with PEFT the reference is the policy with its adapter disabled
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
                        {"recipe": "dpo", "args": args_record(script=script_args, saev=saev_args, model=model_args)})
    trainer.accelerator.print(f"adapter and selection.json saved to {training_args.output_dir} "
                              f"({selection['n_kept']} of {selection['n_rows']} rows by {selection['by']})")
    return trainer


def make_parser():
    from trl import DPOConfig, ModelConfig, ScriptArguments, TrlParser

    return TrlParser((ScriptArguments, SaevArguments, DPOConfig, ModelConfig))


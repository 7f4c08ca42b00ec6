"""The SFT recipe's core: ``main(...)`` and ``make_parser()``; ``recipes/sft.py`` is the file users run
(its docstring has the ``accelerate launch`` lines), ``saev-curate pipeline`` calls ``main`` in-process.
"""

from __future__ import annotations

from saev_curate.recipes.common import SaevArguments, run_recipe, to_sft_rows


def main(script_args, saev_args, training_args, model_args, *, model=None, processor=None, dataset=None,
         eval_dataset=None):
    """Curate, then SFT-train adapters; returns the trainer (its model holds the trained adapter).

    ``model``/``processor``/``dataset``/``eval_dataset`` may be passed in-memory (the pipeline and the tests do);
    :func:`~saev_curate.recipes.common.prepare_run` loads the data and checks the run before the model loads.
    """
    from trl import SFTTrainer

    return run_recipe("sft", SFTTrainer, to_sft_rows, script_args, saev_args, training_args, model_args, model=model,
                      processor=processor, dataset=dataset, eval_dataset=eval_dataset)


def make_parser():
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SaevArguments, SFTConfig, ModelConfig))

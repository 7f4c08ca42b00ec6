# Copyright 2025 the saev-curate authors. Apache-2.0.
r"""Evaluate a base model + LoRA adapter on a held-out question set; results in lmms-eval's shape.

Rows: `question` (the prompt text), `image` (or `images`), `options` (list of answer strings) and `answer` (the
index of the right option, its text, or its letter A, B, ...). Metrics:

- `acc`: the option with the highest log-likelihood given image + question is the answer (`acc_norm`: the
  log-likelihood divided by the option's length in bytes, as lm-eval does);
- `exact_match`: greedy generation, stripped and lower-cased, equals the answer's text;
- `saev_score` (with `--sae` and `--crossmodal_weights`): the policy's mean SAE-V cross-modal score on the set
  (the paper found it tracks benchmark scores, r = 0.84);
- description rows (no `options`, a testbed `concept`: `saev_curate.testbed.evaluate.heldout_descriptions`):
  `hallucination_rate` (CHAIR-style: false stated facts / stated facts, over the set) and `recall` (true facts
  stated / the images' facts) of greedy descriptions, checked exactly against the concept records.

```bash
python recipes/evaluate_policy.py --model_name_or_path ./base --adapter out/dpo-top50 --dataset_name ./heldout \
    --sae ./sae --crossmodal_weights out/dpo-top50/crossmodal_weights --output_dir out/eval-top50 --log_samples
```

Writes lmms-eval's layout: `OUTPUT_DIR/<model>/<date>_results.json` (`results[task]["acc,none"]`,
`"acc_stderr,none"`, `"exact_match,none"`, ..., `config`, `n-samples`) and, with `--log_samples`,
`OUTPUT_DIR/<model>/<date>_samples_<task>.jsonl` (one record per row); `<model>` is the adapter (else the base
model) path's last two parts joined by `__`, `<date>` is `YYYYmmdd_HHMMSS`; non-finite numbers are `"N/A"`.
"""

import sys

from saev_curate.recipes.evaluate_policy import EvalArguments, evaluate, load_policy, main, make_parser

__all__ = ["EvalArguments", "evaluate", "load_policy", "main", "make_parser"]

if __name__ == "__main__":
    from saev_curate.recipes.common import run_script

    sys.exit(run_script(make_parser, main, prog="recipes/evaluate_policy.py"))

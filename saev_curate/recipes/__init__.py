"""The recipes' reusable core (in the package, so ``saev-curate pipeline`` and installed users can import it).

``recipes/dpo.py``, ``recipes/sft.py`` and ``recipes/evaluate_policy.py`` at the repository root are the readable entry
files users run (``python recipes/dpo.py --config ...`` or under ``accelerate launch``); they import from here:
``common`` (SAE-V arguments, model/data loading, score + select), ``dpo`` / ``sft`` (``main``, ``make_parser``),
``evaluate`` (``evaluate``, ``load_policy``, ``main``, ``make_parser``).
"""

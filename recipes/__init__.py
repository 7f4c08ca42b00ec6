"""Training and evaluation recipes on SAE-V-selected data (TRL + PEFT).

Each recipe is one file users run as written under ``python`` or ``accelerate launch`` (``dpo.py``, ``sft.py``,
``evaluate.py``); its docstring is its manual. The code they run lives in the package, ``saev_curate.recipes``
(so an installed saev-curate and ``saev-curate pipeline`` have it too): ``recipes.dpo.main`` is
``saev_curate.recipes.dpo.main``.
"""

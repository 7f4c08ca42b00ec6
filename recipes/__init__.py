"""Training and evaluation recipes on SAE-V-selected data (TRL + PEFT).

Each recipe is one readable script (``dpo.py``, ``sft.py``, ``evaluate.py``) that runs as written under
``python`` or ``accelerate launch`` and exposes a ``main(...)`` (and ``evaluate(...)``) for Python callers;
``common.py`` holds the parts the two training recipes share (arguments, model, data, selection).
"""

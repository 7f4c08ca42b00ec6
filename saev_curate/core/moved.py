"""Old module names that keep working for one release after a module moved."""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["moved"]


def moved(old: str, new: str) -> None:
    """Make module ``old`` the module ``new`` itself (the same classes and state, so ``isinstance`` and
    monkeypatching keep working), with a DeprecationWarning naming where to import it from."""
    warnings.warn(f"{old} moved to {new}; import it from there (the old name goes in the next release)",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)

"""Package faces whose names load on first use (PEP 562), so that importing the package, a light submodule of it,
or the CLI for ``--help`` does not import torch and transformers."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package``, which exports ``modules`` (defining module -> the names it
    defines); a name is imported from its module on first use and then kept on the package."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return sorted(exports), __getattr__

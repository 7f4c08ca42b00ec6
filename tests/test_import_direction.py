"""Imports flow one way: SAE and model access at the bottom, curation above, integrations, CLI, recipes and the
jobs on top. Read from the source (every ``import`` statement, at any depth), not from what happens to be loaded."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "saev_curate"
#: package layer -> the layers above it, which it must never import
TOP = ("integrations", "inspect", "cli", "recipes", "jobs")
ABOVE = {
    "core": ("io", "sae", "vlm", "curation", "testbed", "testing", *TOP),
    "io": ("sae", "vlm", "curation", "testbed", *TOP),
    "sae": ("curation", "testbed", *TOP),
    "vlm": ("curation", "testbed", *TOP),
    "curation": ("testbed", *TOP),
    "testbed": ("integrations", "cli", "jobs"),
    "inspect": ("integrations", "cli", "recipes", "jobs"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_no_lower_layer_imports_a_higher_one():
    wrong = []
    for layer, above in ABOVE.items():
        for path in (PKG / layer).rglob("*.py"):
            for mod in imported_modules(path):
                parts = mod.split(".")
                if parts[0] == "saev_curate" and len(parts) > 1 and parts[1] in above:
                    wrong.append(f"{path.relative_to(PKG.parent)} imports {mod}")
    assert not wrong, "imports that run upwards:\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from saev_curate.curation.sharded import score_to_disk\n")
    assert "saev_curate.curation.sharded" in imported_modules(bad)


def test_no_private_name_is_imported_across_modules():
    wrong = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saev_curate"):
                wrong += [f"{path.relative_to(PKG.parent)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def test_moved_modules_are_the_new_modules_with_a_warning():
    """Old names of moved modules work for one release: the very same module, and a DeprecationWarning."""
    import importlib
    import sys

    import pytest

    import saev_curate.core.errors
    import saev_curate.jobs.demo

    for old, new in (("saev_curate.errors", saev_curate.core.errors), ("saev_curate.demo", saev_curate.jobs.demo)):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new.__name__}"):
            assert importlib.import_module(old) is new

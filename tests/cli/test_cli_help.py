"""Every flag of every command explains itself, and one vocabulary (--data, --out) works everywhere."""

from __future__ import annotations

import argparse

from saev_curate.cli import build_parser

# Every command of the CLI, by hand, with the flags of the shared vocabulary it must have: (--data/--dataset, --out).
# Checked against the parser both ways (a command added, renamed or dropped fails) and against the README.
COMMANDS = {
    "fit-weights": (True, True), "score": (True, True), "select": (True, True),
    "cache-activations": (True, True), "train-sae": (True, True), "eval-sae": (True, True),
    "demo": (False, True), "pipeline": (False, True),  # they make their own data
    "sae": (False, False), "sae info": (False, False),  # a group, and one SAE folder in, a table out
    "methods": (False, False),  # prints the methods table
    "check": (True, True),
    "patch-filter": (True, True), "inspect": (True, True),
}


def _commands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _commands(sub))


def test_every_flag_has_help_and_data_out_are_the_vocabulary():
    from trl import TrlParser

    from saev_curate.sae.training import SaevTrainConfig

    commands = dict(_commands(build_parser()))
    assert set(commands) == set(COMMANDS)
    commands["train-sae"] = TrlParser((SaevTrainConfig,))  # train-sae hands its flags to TrlParser
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"
        flags = {s for a in parser._actions for s in a.option_strings}
        data, out = COMMANDS[name]
        assert ({"--data", "--dataset"} <= flags) == data and ("--dataset" in flags) == data, name
        assert ("--out" in flags) == out, name


def test_the_readme_shows_every_command_and_only_real_ones():
    """The README is the user's list of commands: each command it runs exists, and each top-level command
    (and `sae info`) appears in it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = set(re.findall(r"(?:^|`|/)saev-curate ((?:sae )?[a-z][a-z-]+)", readme, re.M))  # commands, not prose
    assert shown <= set(COMMANDS), shown - set(COMMANDS)
    assert shown == set(COMMANDS) - {"sae"}


def test_help_of_every_command_imports_no_torch():
    """`--help` is instant: no torch, transformers or datasets import (checked in a fresh interpreter, as a user
    runs it; issue 24, item 12)."""
    import subprocess
    import sys

    names = [""] + sorted({n.split()[0] for n, _ in _commands(build_parser())})
    code = ("import sys\nfrom saev_curate.cli import main\nfor name in sys.argv[1:]:\n"
            "    try:\n        main(([name] if name else []) + ['--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True).stdout
    assert names == [""] + sorted({n.split()[0] for n in COMMANDS}) and "usage: saev-curate train-sae" in out
    for name in names[1:]:  # each command printed its own help (none was skipped or failed before --help)
        assert f"usage: saev-curate {name}" in out, name
    assert out.strip().splitlines()[-1] == "[]", out[-300:]


def test_one_flag_dialect_both_spellings_everywhere():
    """Every option is spelled with hyphens in `--help`, and the underscore spelling reaches the same option
    (issue 24, item 12)."""
    from saev_curate.cli import one_dialect

    parser = build_parser()
    for name, sub in _commands(parser):
        for action in sub._actions:
            assert all("_" not in s for s in action.option_strings), (name, action.option_strings)
    assert one_dialect(["demo", "--defect_rate=0.2", "--by", "saev_score", "--n_reference", "16", "--", "--a_b"]) == \
        ["demo", "--defect-rate=0.2", "--by", "saev_score", "--n-reference", "16", "--", "--a_b"]
    under = parser.parse_args(one_dialect(["pipeline", "--defect_rate", "0.2", "--n_eval", "7", "--dpo_steps=3"]))
    hyphen = parser.parse_args(["pipeline", "--defect-rate", "0.2", "--n-eval", "7", "--dpo-steps=3"])
    assert vars(under) == vars(hyphen) and under.n_eval == 7 and under.dpo_steps == 3

"""Every flag of every command explains itself, and one vocabulary (--data, --out) works everywhere."""

from __future__ import annotations

import argparse

from saev_curate.cli import build_parser


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
    assert {"fit-weights", "score", "select", "train-sae", "cache-activations", "eval-sae", "demo", "sae info"} <= set(commands)
    commands["train-sae"] = TrlParser((SaevTrainConfig,))  # train-sae hands its flags to TrlParser
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"
        flags = {s for a in parser._actions for s in a.option_strings}
        if name in ("fit-weights", "score", "select", "cache-activations", "eval-sae", "train-sae"):
            assert {"--data", "--dataset"} <= flags, name
        if name in ("fit-weights", "score", "select", "cache-activations", "eval-sae", "demo", "train-sae"):
            assert "--out" in flags, name


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
    assert len(names) > 8 and "usage: saev-curate train-sae" in out
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

"""The embedded default: a small grounded LLaVA built offline, and alignment data with tagged defects."""

from saev_curate.testbed.build import ALIGNMENT_BASE, TestbedConfig, build_testbed, testbed_path
from saev_curate.testbed.data import alignment_rows
from saev_curate.testbed.evaluate import evaluate_accuracy, evaluate_descriptions, heldout_descriptions, heldout_questions

__all__ = ["ALIGNMENT_BASE", "TestbedConfig", "alignment_rows", "build_testbed", "evaluate_accuracy",
           "evaluate_descriptions", "heldout_descriptions", "heldout_questions", "testbed_path"]

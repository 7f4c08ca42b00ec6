"""The embedded default: a small grounded LLaVA built offline, and alignment data with tagged defects."""

from saev_curate.testbed.build import TestbedConfig, build_testbed, testbed_path
from saev_curate.testbed.evaluate import evaluate_accuracy, heldout_questions

__all__ = ["TestbedConfig", "build_testbed", "evaluate_accuracy", "heldout_questions", "testbed_path"]

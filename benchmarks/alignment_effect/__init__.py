"""The alignment-effect study (issue 13): ``python -m benchmarks.alignment_effect``; see ``study.py``."""

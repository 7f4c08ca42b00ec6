"""The alignment-effect study: ``python -m benchmarks.alignment_effect``; see ``study.py`` and ``PREREGISTRATION.md``
(the one-word v3 study is kept in ``v3-one-word/``)."""

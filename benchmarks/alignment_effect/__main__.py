"""``python -m benchmarks.alignment_effect [--quick] [--workers 2]``: run (or resume) the study."""

from benchmarks.alignment_effect.study import main

if __name__ == "__main__":
    main()

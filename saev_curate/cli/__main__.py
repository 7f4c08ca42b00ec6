"""`python -m saev_curate.cli ...` (what `accelerate launch -m` runs)."""

import sys

from saev_curate.cli import main

sys.exit(main())

"""`python -m saev_curate ...`: the saev-curate command."""

import sys

from saev_curate.cli import main

sys.exit(main())

"""Comparing scores computed with different batch sizes, worker counts or processes.

Scores are float32 results of a forward pass, an SAE encode and a masked sum over the SAE's features
(a few hundred terms). Changing the batch size changes the padded length and therefore the blocking of
every matmul and reduction, so the same row's value may differ in its last bits (observed: 0.65756784 vs
0.657567839). fp32's unit roundoff is 6e-8; a sum of n ~ 300 terms keeps a typical relative error of
sqrt(n) * 6e-8 ~ 1e-6 and a worst case n * 6e-8 ~ 2e-5. So floats are compared with rel=1e-5 and an
absolute floor of 1e-6 scaled by the column's magnitude (a score near zero is a difference of larger
terms). Everything else (row order, None positions, error texts, integer counts) must match exactly.
"""

from __future__ import annotations

import math

REL = 1e-5
ABS = 1e-6


def assert_columns_close(got: list, expected: list, name: str = "", rel: float = REL, abs_: float = ABS) -> None:
    """Element-wise: floats within the fp32 tolerance above, every other value (None, str, int) equal."""
    assert len(got) == len(expected), f"{name}: {len(got)} vs {len(expected)} rows"
    scale = max([abs(v) for v in expected if isinstance(v, float) and math.isfinite(v)] + [1.0])
    for i, (a, b) in enumerate(zip(got, expected)):
        if isinstance(a, float) and isinstance(b, float):
            assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_ * scale), f"{name}[{i}]: {a} vs {b}"
        else:
            assert type(a) is type(b) and a == b, f"{name}[{i}]: {a!r} vs {b!r}"

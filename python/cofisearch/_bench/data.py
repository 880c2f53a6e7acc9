"""The benchmarks' data: seeded random codes and vectors, built before any timing.

:data:`SEED` seeds every benchmark's data (the suites, the scripts, ``cofisearch bench``).
Each role draws from its own stream (``stream=0`` a database, ``stream=1`` its queries),
so the queries do not change when the database size does, and a smaller database is not
a prefix of a larger one by accident.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SEED", "make_codes", "make_vectors", "rng"]

SEED = 20240728


def rng(seed=SEED, stream=0):
    """The generator of one role (``stream``) under ``seed``."""
    return np.random.default_rng([seed, stream])


def make_codes(n, nbits, *, seed=SEED, stream=0):
    """``n`` uniformly random packed codes of ``nbits`` bits, ``(n, nbits // 8)`` uint8."""
    if nbits % 8:
        raise ValueError(f"nbits must be a multiple of 8, got {nbits}")
    return rng(seed, stream).integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)


def make_vectors(n, dim, *, seed=SEED, stream=0):
    """``n`` standard-normal float32 vectors, ``(n, dim)``; generated in float32 directly
    so a 2 GB database never passes through a 4 GB float64 temporary."""
    return rng(seed, stream).standard_normal(size=(n, dim), dtype=np.float32)

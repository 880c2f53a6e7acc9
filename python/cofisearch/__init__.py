"""cofisearch: coarse-to-fine image-text retrieval on a SIMD search engine.

Exact top-k search over packed binary codes (Hamming) and float vectors (inner product
or cosine), with the selection fused into the scan, plus the pieces of a coarse-to-fine
pipeline: binary screening, float rerank of the candidates, and evaluation.

The SIMD level is chosen at import from what the processor supports; the environment
variable ``COFISEARCH_SIMD`` (``scalar``, ``avx2`` or ``avx512``) overrides it, and
naming a level the processor lacks is an error.
"""

from __future__ import annotations

import os as _os

from . import _core, datasets, encoders, metrics
from ._bits import pack_bits, unpack_bits
from .cascade import Cascade, CascadeResult
from ._checks import check_positive_int as _check_positive_int
from ._checks import default_num_threads as _default_num_threads
from ._checks import set_default_num_threads as _set_default_num_threads
from ._index import (
    HAMMING_SENTINEL,
    SCORE_SENTINEL,
    BinaryIndex,
    FloatIndex,
    SearchResult,
    dot_knn,
    hamming_knn,
    load_index,
)
from .ivf import IVFBinaryIndex
from .tuning import OperatingPoint, TuningResult, tune

__version__ = _core.__version__

__all__ = [
    "HAMMING_SENTINEL",
    "SCORE_SENTINEL",
    "BinaryIndex",
    "Cascade",
    "CascadeResult",
    "FloatIndex",
    "IVFBinaryIndex",
    "OperatingPoint",
    "SearchResult",
    "TuningResult",
    "__version__",
    "available_simd_levels",
    "datasets",
    "encoders",
    "dot_knn",
    "get_num_threads",
    "hamming_knn",
    "load_index",
    "metrics",
    "pack_bits",
    "set_num_threads",
    "set_simd_level",
    "simd_level",
    "tune",
    "unpack_bits",
]


def simd_level():
    """The SIMD level searches use now: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return _core.simd_level()


def available_simd_levels():
    """The levels this processor supports, from ``"scalar"`` upwards."""
    return list(_core.available_simd_levels())


def set_simd_level(level):
    """Forces a SIMD level for every later search (``ValueError`` if unsupported)."""
    if not isinstance(level, str):
        raise TypeError(f"level must be a string, got {type(level).__name__}")
    _core.set_simd_level(level)


def set_num_threads(n):
    """Default number of threads for searches that do not pass ``num_threads``."""
    _set_default_num_threads(_check_positive_int(n, "n"))


def get_num_threads():
    """Default number of threads for searches (initially the CPUs this process may use)."""
    return _default_num_threads()


def _apply_environment():
    level = _os.environ.get("COFISEARCH_SIMD")
    if not level:
        return
    try:
        _core.set_simd_level(level.strip().lower())
    except ValueError as exc:
        raise ValueError(f"environment variable COFISEARCH_SIMD={level!r}: {exc}") from None


_apply_environment()

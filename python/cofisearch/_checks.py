"""Input checks shared by the public API.

Every public entry point funnels its arguments through here so that bad input always
meets the same rule: a wrong dtype is a ``TypeError``, a wrong shape or value is a
``ValueError``, and each message names the argument, what was expected and what was
given. Nothing here casts binary codes; float data of another float dtype is converted
to float32 once, as documented on the indexes.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

__all__ = [
    "as_numpy",
    "check_codes",
    "check_floats",
    "check_k",
    "check_num_threads",
    "check_positive_int",
    "default_num_threads",
]


def as_numpy(x, name):
    """Returns ``x`` as a NumPy array without importing torch.

    Torch tensors (detected by their module, so torch stays optional) are detached and
    moved to the CPU; anything else goes through ``numpy.asarray``.
    """
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc


def check_positive_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_k(k):
    return check_positive_int(k, "k")


_default_threads = None


def default_num_threads():
    if _default_threads is not None:
        return _default_threads
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def set_default_num_threads(n):
    global _default_threads
    _default_threads = check_positive_int(n, "n")


def check_num_threads(num_threads):
    if num_threads is None:
        return default_num_threads()
    return check_positive_int(num_threads, "num_threads")


def _as_2d(a, name, one_d_ok):
    if a.ndim == 1 and one_d_ok:
        return a[None, :]
    if a.ndim != 2:
        expected = "a 1-D or 2-D array" if one_d_ok else "a 2-D array"
        raise ValueError(f"{name} must be {expected}, got shape {a.shape}")
    return a


def check_codes(codes, name, nbytes=None, *, one_d_ok=False):
    """Packed binary codes: uint8, 2-D (or one code as 1-D), never cast."""
    a = as_numpy(codes, name)
    if a.dtype != np.uint8:
        raise TypeError(
            f"{name} must be packed binary codes of dtype uint8, got dtype {a.dtype}; "
            "pack {0,1} or {-1,+1} bits with cofisearch.pack_bits"
        )
    a = _as_2d(a, name, one_d_ok)
    if nbytes is not None and a.shape[1] != nbytes:
        raise ValueError(
            f"{name} must have {nbytes} bytes per code ({nbytes * 8} bits), "
            f"got {a.shape[1]} bytes"
        )
    return np.ascontiguousarray(a)


def check_floats(x, name, dim=None, *, one_d_ok=False):
    """Float vectors: any float dtype is converted to float32 once; must be finite."""
    a = as_numpy(x, name)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must have a floating-point dtype, got dtype {a.dtype}")
    a = _as_2d(a, name, one_d_ok)
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got {a.shape[1]}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
        a = np.ascontiguousarray(a, dtype=np.float32)
    # min and max propagate NaN and expose infinities without a temporary the size of a.
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
        raise ValueError(f"{name} must contain only finite values, got NaN or infinity")
    return a

"""Input checks shared by the public API.

Every public entry point funnels its arguments through here so that bad input always
meets the same rule: a wrong dtype is a ``TypeError``, a wrong shape or value is a
``ValueError``, and each message names the argument, what was expected and what was
given. Nothing here casts binary codes; float data of another float dtype is converted
to float32 once, as documented on the indexes.

One vocabulary for the whole package: every checker takes ``(value, name, ...)`` with
bounds as keywords and returns the checked value in its canonical type. Modules keep
checks of their own only for what is specific to them (a label layout, a file format),
built from these.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np

from . import _core

__all__ = [
    "as_numpy",
    "check_bool",
    "check_choice",
    "check_codes",
    "check_float",
    "check_floats",
    "check_ids",
    "check_int",
    "check_int_sequence",
    "check_k",
    "check_multi_hot",
    "check_nbits",
    "check_num_threads",
    "check_output_dir",
    "check_path",
    "check_positive_int",
    "check_readable_file",
    "check_result_size",
    "default_num_threads",
    "mem_available_bytes",
    "set_default_num_threads",
]


_NUMPY_TORCH_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def as_numpy(x, name):
    """Returns ``x`` as a NumPy array without importing torch.

    Torch tensors (detected by their module, so torch stays optional) are detached and
    moved to the CPU; anything else goes through ``numpy.asarray``.
    """
    if type(x) is np.ndarray:  # the common case, first: a single query pays every check
        return x
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must not be a masked array (its mask would be ignored); "
            "fill it (numpy.ma.filled) or drop the masked rows first"
        )
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch":
        t = x.detach().cpu()
        # NumPy has no bfloat16 (nor float8): widen to float32, which is exact.
        if t.is_floating_point() and str(t.dtype) not in _NUMPY_TORCH_FLOATS:
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc


def check_int(value, name, *, minimum=None, maximum=None):
    """An integer (not a bool) in ``[minimum, maximum]``, returned as ``int``."""
    if type(value) is int:  # the common case, before the slower ABC checks
        pass
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_interval(minimum, maximum)}, got {value}")
    return value


def check_positive_int(value, name):
    return check_int(value, name, minimum=1)


def check_float(value, name, *, minimum=None, maximum=None, above=None, below=None):
    """A finite real number (not a bool) with the given inclusive (``minimum``,
    ``maximum``) or exclusive (``above``, ``below``) bounds, returned as ``float``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (
        (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
        or (above is not None and value <= above)
        or (below is not None and value >= below)
    ):
        low = f">= {minimum}" if minimum is not None else (f"> {above}" if above is not None else "")
        high = f"<= {maximum}" if maximum is not None else (f"< {below}" if below is not None else "")
        raise ValueError(f"{name} must be {' and '.join(p for p in (low, high) if p)}, got {value}")
    return value


def _interval(minimum, maximum):
    if maximum is None:
        return f">= {minimum}"
    if minimum is None:
        return f"<= {maximum}"
    return f"in [{minimum}, {maximum}]"


def check_bool(value, name):
    """``True`` or ``False`` (NumPy bools too), returned as ``bool``; 0, 1 and None are
    rejected rather than read as flags."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_multi_hot(labels, name):
    """A 2-D multi-hot label array must hold only 0 and 1 (or bools): NaN would make
    every item relevant, and a {-1, +1} encoding would read -1 as "has the label"."""
    if labels.dtype.kind == "b":
        return labels
    bad = (labels != 0) & (labels != 1)  # NaN compares unequal to both
    if bad.any():
        value = labels[bad][0]
        hint = "; convert {-1, +1} labels with labels > 0" if value == -1 else ""
        raise ValueError(f"{name} must be multi-hot (only 0 and 1), got {value}{hint}")
    return labels


def check_choice(value, name, choices):
    """One of ``choices`` (compared with ==), returned unchanged."""
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    return value


def check_int_sequence(values, name, *, minimum=1, allow_none=False, allow_empty=False):
    """A sequence of integers >= ``minimum`` (and ``None`` where allowed), deduplicated in
    order, as a tuple."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integers, got {type(values).__name__}")
    out = []
    for v in values:
        checked = None if v is None and allow_none else check_int(
            v, f"every entry of {name}", minimum=minimum
        )
        if checked not in out:
            out.append(checked)
    if not out and not allow_empty:
        raise ValueError(f"{name} must hold at least one value, got an empty sequence")
    return tuple(out)


def check_nbits(nbits, name="nbits"):
    """Bits per binary code: a positive multiple of 8 (codes pack into whole bytes)."""
    nbits = check_int(nbits, name, minimum=8)
    if nbits % 8:
        raise ValueError(f"{name} must be a multiple of 8, got {nbits}")
    return nbits


def check_path(value, name):
    """A ``str`` or ``os.PathLike``, as a :class:`pathlib.Path`."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    return Path(value)


def check_readable_file(value, name):
    """An existing, readable regular file, as a :class:`pathlib.Path`."""
    path = check_path(value, name)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"{name} must be a readable file, got {str(path)!r}, which {problem}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{name} must be a readable file, got {str(path)!r}: permission denied")
    return path


def check_output_dir(value, name):
    """A directory that can be written: created if missing, then proven writable by
    creating and removing a file in it, so that long work fails before it starts rather
    than after it ends."""
    path = check_path(value, name)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cofisearch-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"{name} must be a writable directory, got {str(path)!r}: {exc.strerror or exc}"
        ) from None
    return path


def check_k(k):
    return check_positive_int(k, "k")


def mem_available_bytes():
    """``MemAvailable`` from ``/proc/meminfo`` (what can be allocated without swapping
    out others), or ``None`` where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Bytes a search holds per (query, result): the int32 or float32 distance and int64 id
# returned, plus the native selection's entries while it runs (up to min(k, rows) each).
_RESULT_BYTES = 12
_SELECTION_BYTES = 40
# Exhaustive scans and reranks select a chunk of queries at a time per thread
# (cpp/search.cpp, query_chunk): a chunk is at most this many queries, or a megabyte of
# selection where that holds more of them.
_CHUNK_QUERIES = 64
_CHUNK_BYTES = 1 << 20
# Below this a search's results are not worth reading /proc/meminfo for: the read costs
# more than a small search itself (60 us against 15 us for a top-4 over 6,000 codes).
_SMALL_RESULT_BYTES = 1 << 26


def check_result_size(nq, k, n, *, threads=None):
    """Refuses, before any work, a search whose results cannot fit in memory: ``nq x k``
    results are returned (padded past ``n`` rows) and ``min(k, n)`` are selected per
    query, for every query at once, or, where ``threads`` is given (a search that selects
    in chunks of queries), for a chunk per thread."""
    per_query = min(k, n) * _SELECTION_BYTES
    if threads is None:
        selection = nq * per_query
    else:
        selection = threads * min(nq * per_query, max(_CHUNK_QUERIES * per_query, _CHUNK_BYTES))
    need = nq * k * _RESULT_BYTES + selection
    if need <= _SMALL_RESULT_BYTES:
        return
    available = mem_available_bytes()
    if available is not None and need > available:
        raise ValueError(
            f"k={k} for {nq} queries over {n} rows needs {need / 2**30:.1f} GiB of results, "
            f"more than the {available / 2**30:.1f} GiB available; results past {n} are "
            "padding: ask for fewer, or search the queries in smaller batches"
        )


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
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating-point dtype, got dtype {a.dtype}")
    a = _as_2d(a, name, one_d_ok)
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got {a.shape[1]}")
    # A single query's search is mostly fixed costs like these: float32 rows in order, the
    # common case, skip the conversion and its error state.
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
            a = np.ascontiguousarray(a, dtype=np.float32)
    if not _core.all_finite(a):
        raise ValueError(f"{name} must contain only finite values, got NaN or infinity")
    return a


def check_ids(ids, name, *, count=None):
    """Item ids as a 1-D int64 array (any integer dtype, widened, never narrowed; a scalar
    is one id); with ``count``, exactly that many. Values are not checked here: the index
    decides what a negative or unknown id means."""
    a = as_numpy(ids, name)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of ids, got shape {a.shape}")
    if a.size == 0 and not np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.int64)  # an empty list arrives as float64
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of ids, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must hold int64 ids, got {int(a.max())}")
    if count is not None and a.shape[0] != count:
        raise ValueError(f"{name} must hold one id per row ({count}), got {a.shape[0]}")
    return np.ascontiguousarray(a, dtype=np.int64)

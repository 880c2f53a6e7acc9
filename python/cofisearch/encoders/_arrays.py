"""Checks and bit packing shared by the binarisers and the torch models (NumPy only)."""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_int, check_multi_hot

__all__ = [
    "CHUNK_ROWS",
    "check_features",
    "check_finite",
    "check_hidden",
    "check_index_map",
    "check_labels",
    "pack_signs",
    "signs_pm1",
]

# Rows per chunk when a whole-array pass (finiteness check, projection) would otherwise
# allocate a temporary as large as the input.
CHUNK_ROWS = 65536


def check_hidden(hidden):
    """Hidden layer widths: an int or a sequence of ints >= 1, as a tuple."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        sizes = tuple(hidden)
    except TypeError:
        raise TypeError(
            f"hidden must be an int or a sequence of ints, got {type(hidden).__name__}"
        ) from None
    return tuple(check_int(h, "hidden", minimum=1) for h in sizes)


def check_finite(arr, name):
    for start in range(0, arr.shape[0], CHUNK_ROWS):
        if not np.isfinite(arr[start : start + CHUNK_ROWS]).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def check_features(x, name, dim=None, *, min_rows=0):
    """A 2-D floating array with `dim` columns; returned without a copy where possible."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a floating-point array (float16, float32 or float64), "
            f"got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValueError(f"{name} must be 2-D with shape {want}, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got shape {arr.shape}")
    return arr


def check_index_map(mapping, name, n_rows, n_targets, target_name):
    arr = mapping if isinstance(mapping, np.ndarray) else np.asarray(mapping)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.shape != (n_rows,):
        raise ValueError(f"{name} must have shape ({n_rows},), got shape {arr.shape}")
    if n_rows and (arr.min() < 0 or arr.max() >= n_targets):
        raise ValueError(
            f"{name} values must index {target_name} (0 <= value < {n_targets}), "
            f"got range [{arr.min()}, {arr.max()}]"
        )
    # A copy: small, and writable, which torch.from_numpy needs to stay quiet.
    return arr.astype(np.int64)


def check_labels(labels, n_images):
    arr = labels if isinstance(labels, np.ndarray) else np.asarray(labels)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"labels must be integer class ids (n_images,) or a multi-hot array "
            f"(n_images, n_classes), got dtype {arr.dtype}"
        )
    if arr.ndim not in (1, 2) or arr.shape[0] != n_images:
        raise ValueError(
            f"labels must have shape ({n_images},) or ({n_images}, n_classes), "
            f"got shape {arr.shape}"
        )
    if arr.ndim == 1 and arr.dtype.kind not in "iu":
        raise TypeError(f"1-D labels must be integer class ids, got dtype {arr.dtype}")
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError(f"multi-hot labels need at least one class, got shape {arr.shape}")
        check_multi_hot(arr, "labels")
    return arr


def pack_signs(signs_nonneg):
    """Pack a boolean "bit is +1" array (n, nbits) into numpy.packbits order."""
    return np.packbits(signs_nonneg, axis=1, bitorder="big")


def signs_pm1(signs_nonneg):
    return np.where(signs_nonneg, np.int8(1), np.int8(-1))

"""Packing the sign bits that hashing models emit into the codes the engine searches."""

from __future__ import annotations

import numpy as np

from ._checks import as_numpy, check_codes, check_nbits

__all__ = ["code_panel", "pack_bits", "unpack_bits"]


def pack_bits(bits):
    """Packs bits into uint8 codes in ``numpy.packbits`` order (first bit = MSB).

    ``bits`` is an ``(n, nbits)`` array (or one ``(nbits,)`` code) in one of the forms
    hashing models emit: bool, ``{0, 1}`` or ``{-1, +1}``, of any integer or float dtype.
    ``True``, ``1`` and ``+1`` are set bits. ``nbits`` must be a multiple of 8. An array
    holding both ``-1`` and ``0``, or any other value, is rejected rather than guessed.
    """
    a = as_numpy(bits, "bits")
    if a.ndim not in (1, 2):
        raise ValueError(f"bits must be a 1-D or 2-D array, got shape {a.shape}")
    if a.shape[-1] % 8:
        raise ValueError(
            f"bits must have a multiple of 8 columns (bits per code), got {a.shape[-1]}"
        )
    if a.dtype == np.bool_:
        return np.packbits(a, axis=-1)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"bits must be bool, integer or float, got dtype {a.dtype}")
    # Linear-time checks: np.unique would sort millions of codes just to validate them.
    is_set = a == 1
    if ((a == 0) | is_set).all() or ((a == -1) | is_set).all():
        return np.packbits(is_set, axis=-1)
    odd = np.unique(a[(a != 0) & (a != 1) & (a != -1)])[:5]
    if odd.size == 0:
        raise ValueError("bits must hold {0, 1} or {-1, +1} values, got a mix of -1, 0 and 1")
    shown = ", ".join(str(v) for v in odd)
    raise ValueError(f"bits must hold {{0, 1}} or {{-1, +1}} values, got values including {shown}")


def unpack_bits(codes, nbits):
    """Inverse of :func:`pack_bits`: ``(n, nbits // 8)`` uint8 codes to ``(n, nbits)`` {0, 1}
    uint8 bits."""
    nbits = check_nbits(nbits)
    one_code = as_numpy(codes, "codes").ndim == 1
    a = check_codes(codes, "codes", nbits // 8, one_d_ok=True)
    out = np.unpackbits(a, axis=1)
    return out[0] if one_code else out


def code_panel(codes, sizes):
    """``(panel, start)``: packed codes of whole 64-bit words, in runs of ``sizes`` rows
    (a list each), rearranged in the kernels' panel layout (cpp/kernels.h, HammingPackFn;
    cpp/ivf.h, AsymPanel): groups of 8 codes, word ``j`` of code ``8g + l`` at
    ``panel[(g * words + j) * 8 + l]``, run ``r`` from group ``start[r]`` (int64), its last
    group padded with zeros. A scan then reads the codes in place instead of packing them."""
    sizes = np.asarray(sizes, dtype=np.int64)
    groups = (sizes + 7) // 8
    start = np.cumsum(groups) - groups
    words = codes.shape[1] // 8
    rows = np.zeros((int(groups.sum()) * 8, words), np.uint64)
    # Row i of run r goes to row 8 start[r] + i.
    before = np.cumsum(sizes) - sizes
    rows[np.repeat(8 * start - before, sizes) + np.arange(int(sizes.sum()))] = (
        np.ascontiguousarray(codes).view(np.uint64))
    return rows.reshape(-1, 8, words).transpose(0, 2, 1).ravel(), start

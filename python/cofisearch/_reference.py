"""The plain-NumPy reference of what the engine computes.

One definition of exact Hamming distances, of top-k with ties broken by the smaller id,
of the padding of short results and of the merge of partial top-k lists. The metrics,
the benchmark checks, the cascade's reranker stage, the sharded merge and the tests all
use these, so that "what the engine must return" is written once. Nothing here is fast
on purpose beyond avoiding needless passes: callers bound the size of what they pass.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HAMMING_SENTINEL",
    "SCORE_SENTINEL",
    "ascending_key",
    "asymmetric_estimates",
    "full_order",
    "hamming_distances",
    "merge_topk",
    "pad_topk",
    "popcount",
    "quantize_queries",
    "smallest_k",
    "topk",
    "topk_by_id",
    "unit_rows",
    "words",
]

# The engine's padding values (cpp/search.h), repeated here so that this module needs
# no compiled code: a test checks that they agree with cofisearch._core.
HAMMING_SENTINEL = np.iinfo(np.int32).max
SCORE_SENTINEL = float("-inf")

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_bytes(a):
    # NumPy < 2.0 has no bitwise_count: count per byte instead. The per-element counts
    # then refer to bytes, not words, so only sums over the last axis are comparable.
    return _BYTE_POPCOUNT[np.ascontiguousarray(a).view(np.uint8)]


#: Set bits per element (``numpy.bitwise_count`` where NumPy has it, >= 2.0). Without
#: it, the result counts per byte: sum over the last axis to compare.
popcount = getattr(np, "bitwise_count", _popcount_bytes)


def words(codes):
    """Packed ``(n, nbytes)`` uint8 codes viewed as the widest unsigned words dividing a
    row, so that XOR and popcount touch 8 bytes at a time where they can."""
    codes = np.ascontiguousarray(codes)
    for dtype in (np.uint64, np.uint32, np.uint16):
        if codes.shape[1] % np.dtype(dtype).itemsize == 0:
            return codes.view(dtype)
    return codes


def unit_rows(x):
    """Each row of a 2-D float array scaled to unit Euclidean norm, in its own dtype; an
    all-zero row stays zero (cosine 0 with everything) rather than becoming NaN.

    Rows are first scaled by a power of two that brings their largest entry into
    [0.5, 1): exact, so rows of ordinary magnitude get the same bits as a plain
    ``x / norm(x)``, while rows near the float range's ends no longer overflow or
    underflow in the sum of squares (1e20 or 1e-22 in float32 are ordinary vectors).
    """
    peak = np.abs(x).max(axis=1, keepdims=True)
    _, exponent = np.frexp(peak)
    scaled = np.ldexp(x, -exponent)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    out = np.zeros_like(scaled)
    np.divide(scaled, norms, out=out, where=norms > 0)
    return out


def hamming_distances(queries, database):
    """``(nq, n)`` int32 Hamming distances between packed uint8 codes of equal width.

    Materialises ``nq x n x words`` temporaries: callers pass bounded blocks.
    """
    q, db = words(queries), words(database)
    return popcount(q[:, None, :] ^ db[None, :, :]).sum(axis=2, dtype=np.int32)


def ascending_key(values, *, largest):
    """A key whose ascending order is the best-first order of ``values``.

    Integers (and bools) are complemented, which reverses their order without the
    overflow that negating the smallest integer would cause; floats are negated.
    """
    if not largest:
        return values
    return -values if values.dtype.kind == "f" else ~values


def full_order(key):
    """Column order of every entry of each row of ``key``, ascending, ties by column."""
    # The default (SIMD) sort is several times faster than the stable one; only rows with
    # ties are sorted again stably.
    order = np.argsort(key, axis=1)
    ranked = np.take_along_axis(key, order, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(key[tied], axis=1, kind="stable")
    return order


def smallest_k(key, k):
    """Column order of the ``k`` smallest entries of each row (``k <= columns``), ties by
    the smaller column, in O(columns) per row plus a sort of ``k``."""
    n = key.shape[1]
    if k >= n:
        return full_order(key)
    if key.dtype.kind in "biu" and key.size:
        lo, hi = int(key.min()), int(key.max())
        span = (hi - lo + 1) * n
        if span <= 2**63:
            # Small integers (Hamming distances) tie constantly; folding the column into
            # the key makes every entry distinct, so one partition and one sort suffice.
            # Built in place, in 32 bits where it fits: this is most of the cost.
            dtype = np.uint32 if span <= 2**32 else np.int64
            # Negative keys shift in 64 bits first, so the cast to unsigned cannot wrap.
            unique = key.astype(np.int64 if lo < 0 else dtype)
            unique -= lo
            unique = unique.astype(dtype, copy=False)
            unique *= dtype(n)
            unique += np.arange(n, dtype=dtype)
            part = np.argpartition(unique, k - 1, axis=1)[:, :k]
            chosen = np.take_along_axis(unique, part, axis=1)
            return np.take_along_axis(part, np.argsort(chosen, axis=1), axis=1)
    part = np.argpartition(key, k - 1, axis=1)[:, :k]
    chosen = np.take_along_axis(key, part, axis=1)
    kth = chosen.max(axis=1, keepdims=True)
    # argpartition keeps an arbitrary subset of the entries tied with the k-th value;
    # where it had to split them, keep the ones with the smallest columns instead.
    equal = key == kth
    split = equal.sum(axis=1) > (chosen == kth).sum(axis=1)
    if split.any():
        sub, eq = key[split], equal[split]
        below = sub < kth[split]
        need = k - below.sum(axis=1, keepdims=True)
        take = below | (eq & (np.cumsum(eq, axis=1) <= need))
        part[split] = np.nonzero(take)[1].reshape(len(sub), k)
    part.sort(axis=1)
    sub = np.take_along_axis(key, part, axis=1)
    return np.take_along_axis(part, np.argsort(sub, axis=1, kind="stable"), axis=1)


def pad_topk(distances, ids, k, sentinel):
    """Pads ``(nq, m)`` results with ``m <= k`` to ``k`` columns: id -1, ``sentinel``."""
    pad = k - ids.shape[1]
    if pad <= 0:
        return distances, ids
    return (
        np.pad(distances, ((0, 0), (0, pad)), constant_values=sentinel),
        np.pad(ids, ((0, 0), (0, pad)), constant_values=-1),
    )


def topk(values, k, *, largest):
    """Exact top-``k`` of each row of an ``(nq, n)`` matrix, as the engine returns it.

    Returns ``(distances, ids)``: best first (ascending, or descending with
    ``largest``), ties by the smaller id (the column), padded to ``k`` with id -1 and the
    engine's sentinel for the dtype. ``values`` must hold no NaN.
    """
    values = np.asarray(values)
    order = smallest_k(ascending_key(values, largest=largest), min(k, values.shape[1]))
    distances = np.take_along_axis(values, order, axis=1)
    sentinel = SCORE_SENTINEL if values.dtype.kind == "f" else HAMMING_SENTINEL
    return pad_topk(distances, order.astype(np.int64), k, sentinel)


def merge_topk(parts, k, *, largest):
    """Top-``k`` of the union of several ``(distances, ids)`` lists over the same queries.

    Each list may hold padding (id -1), which sorts after every real result; ties break
    by the smaller id. When each part is the exact top-k of disjoint rows, the result is
    the exact top-k of all of them. Returns exactly ``k`` columns, padded as needed.
    """
    d = np.concatenate([np.asarray(p[0]) for p in parts], axis=1)
    i = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    padding = i < 0
    key = ascending_key(d, largest=largest)
    id_key = np.where(padding, np.iinfo(np.int64).max, i)
    # Padding goes last whatever its distance: the first sort key says "is padding".
    order = np.lexsort((id_key, key, padding), axis=1)[:, :k]
    sentinel = SCORE_SENTINEL if d.dtype.kind == "f" else HAMMING_SENTINEL
    out_d = np.take_along_axis(d, order, axis=1)
    out_i = np.take_along_axis(i, order, axis=1)
    out_d[out_i < 0] = sentinel
    return pad_topk(out_d, out_i, k, sentinel)


def quantize_queries(rotated, qbits):
    """The asymmetric screen's form of float queries (cpp/asym.h): ``(planes, consts)``.

    Each row ``w`` of ``rotated`` (float32, ``(nq, nbits)``, ``nbits`` a multiple of 8) is
    quantised to ``u = rint((w - lo) / delta)`` in ``[0, 2**qbits)`` with ``lo = min(w)``
    and ``delta = (max(w) - lo) / (2**qbits - 1)`` (1 for a constant row); ``planes`` is
    uint8 ``(nq, qbits * nbits // 8)``, plane ``j`` (bit ``j`` of every ``u``) packed like
    the codes (``numpy.packbits``), and ``consts`` float32 ``(nq, 3)`` holds ``(2 delta,
    2 lo, shift)``, ``shift = -((nbits * lo) + (delta * sum(u)))``: minus the sum of the
    quantised query (integers and two roundings, so the engine makes the same bits). All
    arithmetic is float32, one rounding per operation.
    """
    w = np.ascontiguousarray(rotated, dtype=np.float32)
    lo = w.min(axis=1, keepdims=True)
    span = w.max(axis=1, keepdims=True) - lo
    top = np.float32(2**qbits - 1)
    delta = np.where(span > 0, span / top, np.float32(1)).astype(np.float32)
    u = np.clip(np.rint((w - lo) / delta), 0, top).astype(np.uint8)
    bits = (u[:, None, :] >> np.arange(qbits, dtype=np.uint8)[None, :, None]) & 1
    planes = np.packbits(bits, axis=2).reshape(w.shape[0], -1)
    f32 = np.float32
    total = u.sum(axis=1, keepdims=True, dtype=np.int64).astype(f32)
    shift = -(f32(w.shape[1]) * lo + delta * total)
    consts = np.concatenate([f32(2) * delta, f32(2) * lo, shift], axis=1).astype(f32)
    return planes, consts


def asymmetric_estimates(planes, consts, bias, codes, factors):
    """``(nq, n)`` float32 estimated inner products of the asymmetric screen (cpp/asym.h)
    between queries (``planes`` and ``consts`` as :func:`quantize_queries` makes them,
    ``bias`` one float per query) and 1-bit ``codes`` with their ``factors``: exactly what
    the kernels compute, ``bias + f * (((scale * ip) + (lo2 * pc)) + shift)``, one float32
    rounding per operation. Materialises ``nq x n x qbits`` counts: pass bounded blocks."""
    codes = np.ascontiguousarray(codes)
    nq, nbytes = planes.shape[0], codes.shape[1]
    qbits = planes.shape[1] // nbytes
    q = planes.reshape(nq, qbits, nbytes)
    counts = popcount(q[:, :, None, :] & codes[None, None, :, :]).sum(axis=3, dtype=np.int64)
    ip = (counts << np.arange(qbits, dtype=np.int64)[None, :, None]).sum(axis=1)
    pc = popcount(codes).sum(axis=1, dtype=np.int64)
    f32 = np.float32
    scale, lo2, shift = (consts[:, i : i + 1].astype(f32) for i in range(3))
    s = scale * ip.astype(f32) + lo2 * pc.astype(f32)[None, :]
    s = s + shift
    s = np.asarray(factors, dtype=f32)[None, :] * s
    return (np.asarray(bias, dtype=f32)[:, None] + s).astype(f32)


def topk_by_id(values, ids, k, *, largest):
    """:func:`topk` over items named by ``ids`` (one per column, unique): ties by the
    smaller id rather than the smaller column, and the ids returned."""
    ids = np.asarray(ids, dtype=np.int64)
    by_id = np.argsort(ids, kind="stable")
    d, cols = topk(np.asarray(values)[:, by_id], k, largest=largest)
    return d, np.where(cols >= 0, ids[by_id][np.maximum(cols, 0)], -1)

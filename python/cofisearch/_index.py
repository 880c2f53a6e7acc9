"""Exact indexes over packed binary codes and float vectors.

Both indexes keep their data in one contiguous NumPy buffer that grows geometrically,
so ``add`` is amortised O(rows) and a search passes the buffer to the native scan with
no copy. A single ``add`` of N rows into an empty index allocates exactly N rows.

Thread safety: every method of both indexes may be called from any number of threads
at once. Adds are serialised; a search, ``save``, pickling or a read of ``codes`` /
``vectors`` sees the index as it was before or after each add, never in between (the
live rows are published as one snapshot, and searches take it once, without a lock).

Results are :class:`SearchResult` tuples that unpack as ``(distances, ids)`` (the faiss
order). Where fewer than ``k`` results exist, ids are ``-1`` and distances are
:data:`HAMMING_SENTINEL` (binary) or :data:`SCORE_SENTINEL` (float, ``-inf``).

Ids, removals and filters (what a backend needs; faiss's IndexIDMap + remove_ids +
IDSelector, usearch's keys):

- ``add(data, ids=...)`` names the rows by the caller's int64 ids: unique, non-negative.
  A negative id, or one repeated within the call or already present, is a ``ValueError``
  naming it, and nothing of that call is added. Without ``ids`` a row gets the next
  sequential id: one past the largest id the index has ever held (``0, 1, 2, ...`` for an
  index that was never given ids, exactly as before: such an index keeps no id map at
  all). A removed id may be added again.
- ``remove(ids)`` returns how many of them were present; absent ids are ignored. A
  removed item never appears in a result again. Its row stays in place as a tombstone (a
  bit in a bitmap of present rows, which the scan checks) until a compaction rewrites
  the rows: :meth:`compact`, or the next ``add`` once a quarter of the rows are removed.
- ``search(..., allowed=ids)`` returns only items whose id is in ``allowed`` (ids that
  are not present are ignored), the exact top-``k`` among them: ``k`` results whenever
  ``k`` allowed items are present. The filter becomes a bitmap of rows checked in the
  scan where a row would enter the top ``k`` (not a post-filter: every allowed row is a
  candidate); a filter of few rows (:data:`GATHER_ROWS`, or a small fraction of the
  index) skips the scan and computes the distances of those rows only.
- Ties are broken by the smaller caller's id, as for rows without ids (the faiss
  IndexIDMap breaks them by insertion order instead). Ids that increase with the order
  of adding cost nothing more; ids in any other order make the scan admit the ties at
  the k-th distance, and make each ``add`` with ids, ``remove`` or ``allowed`` after a
  change sort the ids once (O(n log n)) to look them up.
- ``ntotal``, ``codes`` / ``vectors`` and ``ids`` describe the present items, in
  storage order (``codes`` is a copy while removed rows await compaction).

A ``remove`` or ``compact`` is published like an add: a search sees the index before or
after it, never in between.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import zlib
from typing import NamedTuple

import numpy as np

from . import _core
from ._checks import (
    as_numpy,
    check_choice,
    check_codes,
    check_floats,
    check_ids,
    check_k,
    check_nbits,
    check_num_threads,
    check_positive_int,
    check_result_size,
)
from ._files import atomic_write, byte_chunks
from ._reference import unit_rows
from ._rows import MAX_ID, MAX_ROWS, Indexed, Items, Storage

__all__ = [
    "HAMMING_SENTINEL",
    "SCORE_SENTINEL",
    "BinaryIndex",
    "FloatIndex",
    "SearchResult",
    "dot_knn",
    "hamming_knn",
    "load_index",
]

#: Distance reported for a missing Hamming result (id -1): the largest int32.
HAMMING_SENTINEL = int(_core.HAMMING_SENTINEL)
#: Score reported for a missing inner-product result (id -1): negative infinity.
SCORE_SENTINEL = float(_core.SCORE_SENTINEL)

# Widest code accepted: Hamming distances must fit the int32 results with room to spare.
MAX_NBITS = 1 << 24


class SearchResult(NamedTuple):
    """Top-k results, each row sorted best-first, ties broken by the smaller id.

    distances: ``(nq, k)`` int32 Hamming distances (ascending) or float32 scores
        (descending).
    ids: ``(nq, k)`` int64 database ids; ``-1`` where fewer than ``k`` results exist.
    """

    distances: np.ndarray
    ids: np.ndarray


class BinaryIndex(Indexed):
    """Exact Hamming search over packed binary codes.

    Parameters
    ----------
    nbits:
        Bits per code, a multiple of 8. Codes are ``uint8`` rows of ``nbits // 8`` bytes in
        ``numpy.packbits`` order (see :func:`cofisearch.pack_bits`).

    Safe to share between threads: concurrent searches run in parallel, adds are
    serialised, and each search sees the index before or after an add, never between.
    """

    kind = "binary"

    def __init__(self, nbits):
        nbits = check_nbits(nbits)
        if nbits > MAX_NBITS:
            raise ValueError(f"nbits must be at most {MAX_NBITS}, got {nbits}")
        self._nbits = nbits
        self._lock = threading.Lock()
        self._store = Storage(nbits // 8, np.uint8)

    def _new_storage(self, rows, items):
        return Storage(rows.shape[1], np.uint8, rows, items=items)

    @property
    def nbits(self):
        return self._nbits

    @property
    def code_size(self):
        """Bytes per code."""
        return self._nbits // 8

    @property
    def codes(self):
        """The present items' codes, ``(ntotal, code_size)`` uint8, read-only (no copy
        unless removed rows await compaction); ``ids`` holds their ids."""
        return self._present_view()

    def add(self, codes, *, ids=None):
        """Appends codes as the items ``ids`` (int64, unique, non-negative, none present
        already), or as the next sequential ids (see the module docstring)."""
        self._append(check_codes(codes, "codes", self.code_size, one_d_ok=True), ids)

    def search(self, queries, k, *, allowed=None, num_threads=None):
        """Exact Hamming top-``k``; a 1-D query is a batch of one. With ``allowed``, a 1-D
        array of ids, only among those items.

        Returns a :class:`SearchResult` of int32 distances (ascending) and int64 ids.
        """
        q = check_codes(queries, "queries", self.code_size, one_d_ok=True)
        k = check_k(k)
        threads = check_num_threads(num_threads)
        if self._store.n == 0:
            raise ValueError("the index is empty: add codes before searching")
        buffer, n, ids, ascending, allow, gather = self._plan(allowed, q.shape[0])
        check_result_size(q.shape[0], k, n, threads=threads)
        if ids is None and allow is None and gather is None:
            return SearchResult(*_core.hamming_search(buffer, n, q, k, threads))
        if gather is not None:
            return SearchResult(*_core.hamming_gather(buffer, n, q, gather, k, threads, ids))
        return SearchResult(*_core.hamming_search(buffer, n, q, k, threads, allow, ids, ascending))

    def save(self, path):
        """Writes the index to ``path`` atomically (see :func:`load_index`)."""
        _save(path, _KIND_BINARY, self._nbits, 0, *_parts(self))

    def __reduce__(self):
        return _reduce(_KIND_BINARY, self._nbits, 0, *_parts(self))

    def __repr__(self):
        return f"BinaryIndex(nbits={self._nbits}, ntotal={self.ntotal})"


_METRICS = {"ip": 0, "cosine": 1}


class FloatIndex(Indexed):
    """Exact inner-product search over float32 vectors.

    Parameters
    ----------
    dim:
        Vector dimension.
    metric:
        ``"ip"`` (inner product) or ``"cosine"``. Cosine normalises vectors to unit length
        once, at :meth:`add` and for each query batch, then uses the inner product; the
        stored vectors are the normalised ones.

    Vectors of another float dtype (float16, float64) and torch tensors are converted to
    float32 once; integer arrays are rejected with ``TypeError``; NaN or infinite values
    with ``ValueError``.

    Safe to share between threads: concurrent searches run in parallel, adds are
    serialised, and each search sees the index before or after an add, never between.
    """

    kind = "float"

    def __init__(self, dim, metric="ip"):
        dim = check_positive_int(dim, "dim")
        check_choice(metric, "metric", tuple(_METRICS))
        self._dim = dim
        self._metric = metric
        self._lock = threading.Lock()
        # The storage keeps the largest row norm: a lone query's scan uses it to bound
        # rounding instead of computing every row's norm.
        self._store = Storage(dim, np.float32, track_norm=True)

    def _new_storage(self, rows, items):
        return Storage(rows.shape[1], np.float32, rows, track_norm=True, items=items)

    @property
    def dim(self):
        return self._dim

    @property
    def metric(self):
        return self._metric

    @property
    def vectors(self):
        """The present items' vectors (normalised for cosine), read-only (no copy unless
        removed rows await compaction); ``ids`` holds their ids."""
        return self._present_view()

    def _prepare(self, x, name):
        a = check_floats(x, name, self._dim, one_d_ok=True)
        if self._metric == "cosine":
            a = unit_rows(a)
        return a

    def add(self, vectors, *, ids=None):
        """Appends vectors as the items ``ids`` (int64, unique, non-negative, none present
        already), or as the next sequential ids (see the module docstring)."""
        rows = self._prepare(vectors, "vectors")
        self._append(rows, ids)

    def search(self, queries, k, *, candidates=None, allowed=None, num_threads=None):
        """Exact inner-product top-``k``; a 1-D query is a batch of one. With ``allowed``,
        a 1-D array of ids, only among those items.

        With ``candidates``, an int64 ``(nq, c)`` array of item ids (``-1`` as padding,
        duplicates counted once), each query is scored against its own candidates only:
        the rerank stage of a coarse-to-fine search, O(nq * c * dim) whatever the index
        size. In an index with ids or removals, candidates that are not present (or not
        allowed) are skipped. Returns a :class:`SearchResult` of float32 scores
        (descending) and int64 ids.
        """
        q = self._prepare(queries, "queries")
        k = check_k(k)
        threads = check_num_threads(num_threads)
        store = self._store
        if candidates is not None:
            return self._rerank(store, q, candidates, k, allowed, threads)
        if store.n == 0:
            raise ValueError("the index is empty: add vectors before searching")
        buffer, n, ids, ascending, allow, gather = self._plan(allowed, q.shape[0])
        check_result_size(q.shape[0], k, n, threads=threads)
        if gather is not None:
            return SearchResult(*_core.dot_gather(buffer, n, q, gather, k, threads, ids))
        # The bound is read after the snapshot, so it covers every row of it.
        bound = store.norm_bound()
        if ids is None and allow is None:
            return SearchResult(*_core.dot_search(buffer, n, q, k, threads, bound))
        return SearchResult(
            *_core.dot_search(buffer, n, q, k, threads, bound, allow, ids, ascending)
        )

    def _rerank(self, store, q, candidates, k, allowed, threads):
        buffer, n = store.snapshot
        items = store.items
        if n == 0:
            raise ValueError("the index is empty: add vectors before searching")
        if items is None and allowed is None:
            cand = check_candidates(candidates, q.shape[0], n, ranged=False)
            check_result_size(q.shape[0], k, cand.shape[1], threads=threads)
            return SearchResult(*_core.dot_rerank(buffer, n, q, cand, k, threads))
        bound = (items.next_id if items is not None else n)
        cand = check_candidates(candidates, q.shape[0], max(bound, 1))
        lookup = items or Items(None, True, None, 0, n)
        rows = lookup.rows_of(cand.reshape(-1), n).reshape(cand.shape)
        if allowed is not None:
            rows[~np.isin(cand, check_ids(allowed, "allowed"))] = -1
        check_result_size(q.shape[0], k, cand.shape[1], threads=threads)
        if items is None or items.ids is None:
            return SearchResult(*_core.dot_rerank(buffer, n, q, rows, k, threads))
        if items.ascending:
            s, i = _core.dot_rerank(buffer, n, q, rows, k, threads)
            return SearchResult(s, np.where(i >= 0, items.ids[np.maximum(i, 0)], -1))
        # Rows out of id order: every candidate's score, then the top k by (score, id).
        c = max(cand.shape[1], 1)
        s, i = _core.dot_rerank(buffer, n, q, rows, c, threads)
        i = np.where(i >= 0, items.ids[np.maximum(i, 0)], -1)
        order = np.lexsort((np.where(i >= 0, i, MAX_ID), -s.astype(np.float64)), axis=1)[:, :k]
        s = np.take_along_axis(s, order, 1)
        i = np.take_along_axis(i, order, 1)
        if k > c:
            s = np.pad(s, ((0, 0), (0, k - c)), constant_values=SCORE_SENTINEL)
            i = np.pad(i, ((0, 0), (0, k - c)), constant_values=-1)
        return SearchResult(np.ascontiguousarray(s), np.ascontiguousarray(i))

    def save(self, path):
        """Writes the index to ``path`` atomically (see :func:`load_index`)."""
        _save(path, _KIND_FLOAT, self._dim, _METRICS[self._metric], *_parts(self))

    def __reduce__(self):
        return _reduce(_KIND_FLOAT, self._dim, _METRICS[self._metric], *_parts(self))

    def __repr__(self):
        return f"FloatIndex(dim={self._dim}, metric={self._metric!r}, ntotal={self.ntotal})"


def check_candidates(candidates, nq, ntotal, *, ranged=True):
    """Candidate ids for ``nq`` queries over ``ntotal`` rows, as a contiguous int64
    ``(nq, c)`` array: any integer dtype (widened, never narrowed), ids in
    ``[0, ntotal)`` or ``-1`` as padding (unless not ``ranged``: the caller hands them
    to ``_core.dot_rerank``, which checks the same in one pass), and a 1-D row for a
    single query. Shared with the sharded index, whose candidates are global ids checked
    the same way."""
    c = as_numpy(candidates, "candidates")
    if c.dtype != np.int64:
        if not np.issubdtype(c.dtype, np.integer):
            raise TypeError(f"candidates must be an integer array of ids, got dtype {c.dtype}")
        if c.dtype.kind == "u" and c.size and int(c.max()) >= ntotal:
            # Checked before the cast, which would wrap 2**64 - 1 to the padding id -1.
            raise ValueError(
                f"candidates must hold ids in [0, {ntotal}) or -1 as padding, got {int(c.max())}"
            )
        c = c.astype(np.int64)
    if c.ndim == 1 and nq == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[0] != nq:
        raise ValueError(f"candidates must have shape ({nq}, c), one row per query, got {c.shape}")
    if ranged and c.size:
        lo, hi = int(c.min()), int(c.max())
        if lo < -1 or hi >= ntotal:
            bad = lo if lo < -1 else hi
            raise ValueError(
                f"candidates must hold ids in [0, {ntotal}) or -1 as padding, got {bad}"
            )
    return np.ascontiguousarray(c)


def hamming_knn(database, queries, k, *, num_threads=None):
    """One-off exact Hamming top-``k`` of ``queries`` over ``database`` (both packed uint8),
    without building an index or copying a contiguous database."""
    db = check_codes(database, "database")
    q = check_codes(queries, "queries", db.shape[1], one_d_ok=True)
    k = check_k(k)
    threads = check_num_threads(num_threads)
    if db.shape[0] == 0:
        raise ValueError("database must hold at least one code, got 0 rows")
    if db.shape[1] == 0:
        raise ValueError("database codes must have at least 1 byte (8 bits), got 0 bytes")
    check_result_size(q.shape[0], k, db.shape[0], threads=threads)
    return SearchResult(*_core.hamming_search(db, db.shape[0], q, k, threads))


def dot_knn(database, queries, k, *, num_threads=None):
    """One-off exact inner-product top-``k`` of ``queries`` over ``database`` (float
    vectors, converted to float32 once if needed), without building an index.

    Every call checks that the database is finite, a pass over its memory: to search the
    same database repeatedly, a :class:`FloatIndex` checks once, at ``add``."""
    db = check_floats(database, "database")
    q = check_floats(queries, "queries", db.shape[1], one_d_ok=True)
    k = check_k(k)
    threads = check_num_threads(num_threads)
    if db.shape[0] == 0:
        raise ValueError("database must hold at least one vector, got 0 rows")
    if db.shape[1] == 0:
        raise ValueError("database vectors must have at least 1 dimension, got 0 columns")
    check_result_size(q.shape[0], k, db.shape[0], threads=threads)
    return SearchResult(*_core.dot_search(db, db.shape[0], q, k, threads))


# ---- persistence ------------------------------------------------------------------------
#
# File layout (little-endian), version 1 (an index that never had ids or removals, still
# written as version 1 so that older builds read it) and version 2:
#   0  magic      8 bytes  b"COFISRCH"
#   8  version    u32
#  12  kind       u32      1 = binary codes, 2 = float32 vectors
#  16  width      u64      nbits (binary) or dim (float)
#  24  count      u64      rows
#  32  metric     u32      0 = ip (and binary), 1 = cosine
#  36  reserved   u32      0
#  40  payload    u64      payload size in bytes
#  48  checksum   u32      CRC-32 of bytes 0..47 followed by the payload
#  52  zero padding up to 64, then the payload: count rows, packed back to back.
# The payload starts at a 64-byte offset so that a memory map of it is aligned.
# Version 2 adds to the payload, after the rows and zero padding to a multiple of 8
# bytes: count int64 ids (the present items', in row order), then the int64 next
# sequential id. Removed items are not written: a saved index is compacted.

_MAGIC = b"COFISRCH"
_VERSION = 2
_VERSION_PLAIN = 1
_KIND_BINARY = 1
_KIND_FLOAT = 2
_KIND_IVF_BINARY = 3  # laid out by cofisearch.ivf
_HEAD = struct.Struct("<8sIIQQIIQ")
_HEADER_SIZE = 64
_CHUNK_ROWS = 1 << 16


def _row_layout(kind, width):
    if kind == _KIND_BINARY:
        return np.dtype(np.uint8), width // 8
    return np.dtype(np.float32), width


def _checksum(head, payload, ids=None, next_id=None):
    crc = zlib.crc32(head)
    for chunk in byte_chunks(payload.reshape(-1).view(np.uint8)):
        crc = zlib.crc32(chunk, crc)
    if ids is not None:
        crc = zlib.crc32(b"\0" * _pad8(payload.nbytes), crc)
        for chunk in byte_chunks(ids.view(np.uint8)):
            crc = zlib.crc32(chunk, crc)
        crc = zlib.crc32(struct.pack("<q", next_id), crc)
    return crc & 0xFFFFFFFF


def _pad8(nbytes):
    return -nbytes % 8


def _payload_size(rows_bytes, count, with_ids):
    return rows_bytes + (_pad8(rows_bytes) + 8 * count + 8 if with_ids else 0)


def _head(kind, width, metric, rows, with_ids=False):
    version = _VERSION if with_ids else _VERSION_PLAIN
    payload = _payload_size(rows.nbytes, rows.shape[0], with_ids)
    return _HEAD.pack(_MAGIC, version, kind, width, rows.shape[0], metric, 0, payload)


def _parts(index):
    """What a file or a pickle holds of ``index``: ``(rows, ids, next_id)``, the present
    items only; ids and next_id are None for an index that never had ids or removals."""
    store = index._store
    buffer, n = store.snapshot
    items = store.items
    rows = buffer[:n]
    if items is None:
        return rows, None, None
    ids = np.arange(n, dtype=np.int64) if items.ids is None else items.ids[:n]
    if items.dead:
        keep = items.present_rows(n)
        rows, ids = rows[keep], ids[keep]
    return rows, np.ascontiguousarray(ids, dtype=np.int64), int(items.next_id)


def _save(path, kind, width, metric, rows, ids=None, next_id=None):
    path = os.fspath(path)
    rows = np.ascontiguousarray(rows)
    head = _head(kind, width, metric, rows, ids is not None)
    header = head + struct.pack("<I", _checksum(head, rows, ids, next_id))
    header += b"\0" * (_HEADER_SIZE - len(header))

    def write(f):
        f.write(header)
        for chunk in byte_chunks(rows.reshape(-1).view(np.uint8)):
            f.write(chunk)
        if ids is not None:
            f.write(b"\0" * _pad8(rows.nbytes))
            for chunk in byte_chunks(ids.view(np.uint8)):
                f.write(chunk)
            f.write(struct.pack("<q", next_id))

    # Written beside the target, then renamed over it: a crash mid-save leaves the old file.
    atomic_write(path, write)


def _reduce(kind, width, metric, rows, ids=None, next_id=None):
    # The pickle carries the CRC-32 a saved file would (header and payload): a pickle
    # corrupted in storage or transit, in the rows, the ids or the layout, is refused on
    # load instead of restoring a different index. Without ids it is the pickle that
    # builds before ids wrote.
    rows = np.array(rows)
    crc = _checksum(_head(kind, width, metric, rows, ids is not None), rows, ids, next_id)
    if ids is None:
        return (_restore, (kind, width, metric, rows, crc))
    return (_restore, (kind, width, metric, rows, crc, np.array(ids), next_id))


def _restore(kind, width, metric, rows, checksum=None, ids=None, next_id=None):
    """Rebuilds an index from its parts (a pickle), checking them as ``add`` would have:
    nothing restored can hold what ``add`` refuses. ``checksum`` is absent from pickles
    written before it existed, ``ids`` and ``next_id`` from those of indexes without."""
    problem = _restore_problem(kind, width, metric, rows) or _ids_problem(ids, next_id, rows)
    if problem:
        raise ValueError(f"cannot restore a cofisearch index: {problem}")
    # A pickle may carry a Fortran-ordered or strided array; the scans read one C block.
    rows = np.ascontiguousarray(rows)
    if ids is not None:
        ids = np.ascontiguousarray(ids)
    if checksum is not None and (
        type(checksum) is not int
        or checksum != _checksum(_head(kind, width, metric, rows, ids is not None), rows, ids, next_id)
    ):
        raise ValueError("cannot restore a cofisearch index: checksum mismatch (corrupted pickle)")
    return _build(kind, width, metric, rows, ids, next_id)


def _ids_problem(ids, next_id, rows):
    if ids is None and next_id is None:
        return None
    if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or ids.ndim != 1:
        got = f"{ids.dtype} {ids.shape}" if isinstance(ids, np.ndarray) else type(ids).__name__
        return f"ids must be a 1-D int64 array, got {got}"
    if not isinstance(rows, np.ndarray) or ids.shape[0] != rows.shape[0]:
        return f"ids must hold one id per row ({getattr(rows, 'shape', ('?',))[0]}), got {ids.shape[0]}"
    if isinstance(next_id, bool) or not isinstance(next_id, int) or not 0 <= next_id <= MAX_ID:
        return f"next_id must be a non-negative int64, got {next_id!r}"
    if ids.size:
        if int(ids.min()) < 0 or int(ids.max()) >= next_id:
            return f"ids must lie in [0, {next_id}), got {int(ids.min())} .. {int(ids.max())}"
        ordered = np.sort(ids)
        if (ordered[1:] == ordered[:-1]).any():
            return "ids are not unique"
    return None


def _build(kind, width, metric, rows, ids=None, next_id=None):
    if kind == _KIND_BINARY:
        index = BinaryIndex(width)
    else:
        index = FloatIndex(width, metric="cosine" if metric == 1 else "ip")
    items = None
    if ids is not None:
        ids = np.array(ids, dtype=np.int64)  # its own, writeable: adds append to it
        ascending = bool(ids.size < 2 or (np.diff(ids) > 0).all())
        items = Items(ids, ascending, None, 0, next_id)
    index._store = Storage(
        rows.shape[1], rows.dtype, rows, track_norm=kind == _KIND_FLOAT, items=items
    )
    return index


# Normalised float32 rows have norms within a few ulps of 1; anything further off was not
# written by a cosine index.
_UNIT_TOLERANCE = 1e-4


def _restore_problem(kind, width, metric, rows):
    known = type(kind) is int and type(metric) is int  # 1.0 or True would pass `in`
    if not known or kind not in (_KIND_BINARY, _KIND_FLOAT) or metric not in (0, 1):
        return f"unknown kind {kind!r} or metric {metric!r}"
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        return f"width must be a positive int, got {width!r}"
    if kind == _KIND_BINARY and (width % 8 or width > MAX_NBITS or metric):
        return f"nbits {width} (metric {metric}) is not a binary index's"
    dtype, row_len = _row_layout(kind, width)
    if isinstance(rows, np.ma.MaskedArray):
        return "rows must not be a masked array (its mask would be ignored)"
    if not isinstance(rows, np.ndarray) or rows.dtype != dtype or rows.ndim != 2:
        got = f"{rows.dtype} {rows.shape}" if isinstance(rows, np.ndarray) else type(rows).__name__
        return f"rows must be a 2-D {dtype} array, got {got}"
    if rows.shape[1] != row_len:
        return f"rows must have {row_len} columns for width {width}, got {rows.shape[1]}"
    if kind == _KIND_FLOAT:
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            part = rows[start : start + _CHUNK_ROWS]
            if not (np.isfinite(part.min()) and np.isfinite(part.max())):
                return "rows hold NaN or infinite values"
            if metric == 1:
                norms = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64))
                off = (norms != 0) & (np.abs(norms - 1) > _UNIT_TOLERANCE)
                if off.any():
                    row = start + int(np.argmax(off))
                    return f"row {row} of a cosine index has norm {norms[row - start]:.6g}, not 1"
    return None


def index_file_checksum(path):
    """The CRC-32 stored in the header of the index file at ``path`` (which
    :func:`load_index` verifies against the whole file), to tell one file from another
    without reading it all."""
    with open(path, "rb") as f:
        header = f.read(_HEAD.size + 4)
    if len(header) < _HEAD.size + 4 or header[:8] != _MAGIC:
        raise ValueError(f"{os.fspath(path)!r} is not a cofisearch index file")
    return struct.unpack_from("<I", header, _HEAD.size)[0]


def load_index(path, *, mmap=False):
    """Loads an index written by ``save``: a :class:`BinaryIndex`, a :class:`FloatIndex` or
    an :class:`~cofisearch.IVFBinaryIndex`.

    With ``mmap=True`` the rows are memory-mapped read-only instead of read into memory
    (the operating system pages them in as searches touch them); adding to such an index
    first copies the rows into memory. Either way the checksum is verified, so a truncated,
    corrupted or foreign file raises ``ValueError`` naming the file and the problem.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            # A FIFO or a device would block or never end; an index is a regular file.
            raise ValueError(f"cannot read index file {path!r}: not a regular file")
        size = info.st_size
        with open(path, "rb") as f:
            header = f.read(_HEADER_SIZE)
    except OSError as exc:
        raise ValueError(f"cannot read index file {path!r}: {exc.strerror or exc}") from exc

    def bad(problem):
        return ValueError(f"{path!r} is not a valid cofisearch index: {problem}")

    if len(header) < _HEADER_SIZE:
        raise bad(f"file is {size} bytes, shorter than the {_HEADER_SIZE}-byte header")
    magic, version, kind, width, count, metric, _, payload = _HEAD.unpack_from(header)
    if magic != _MAGIC:
        raise bad(f"wrong magic {magic!r} (expected {_MAGIC!r})")
    if kind == _KIND_IVF_BINARY:
        # An inverted-file index: the same container, its own layout (cofisearch.ivf).
        from .ivf import load_ivf_index

        return load_ivf_index(path, mmap=mmap)
    if version not in (_VERSION_PLAIN, _VERSION):
        raise bad(
            f"format version {version} is not supported (this build reads "
            f"{_VERSION_PLAIN} and {_VERSION})"
        )
    with_ids = version == _VERSION
    (stored_crc,) = struct.unpack_from("<I", header, _HEAD.size)
    if kind not in (_KIND_BINARY, _KIND_FLOAT) or metric not in (0, 1) or width == 0:
        raise bad(f"corrupt header (kind {kind}, width {width}, metric {metric})")
    if kind == _KIND_BINARY and (width % 8 or width > MAX_NBITS):
        raise bad(f"corrupt header (nbits {width})")
    dtype, row_len = _row_layout(kind, width)
    rows_bytes = count * row_len * dtype.itemsize
    if payload != _payload_size(rows_bytes, count, with_ids) or count > MAX_ROWS:
        raise bad(f"corrupt header (payload {payload} bytes for {count} rows of width {width})")
    if size != _HEADER_SIZE + payload:
        raise bad(f"file is {size} bytes, expected {_HEADER_SIZE + payload} (truncated or padded)")
    if mmap and count:
        rows = np.memmap(path, dtype=dtype, mode="r", offset=_HEADER_SIZE, shape=(count, row_len))
    else:
        rows = np.empty((count, row_len), dtype=dtype)
        with open(path, "rb") as f:
            f.seek(_HEADER_SIZE)
            got = f.readinto(rows.reshape(-1).view(np.uint8))
        if got != rows_bytes:
            raise bad(f"payload ended after {got} of {rows_bytes} bytes")
    ids = next_id = None
    if with_ids:
        with open(path, "rb") as f:
            f.seek(_HEADER_SIZE + rows_bytes + _pad8(rows_bytes))
            tail = f.read(8 * count + 8)
        if len(tail) != 8 * count + 8:
            raise bad(f"payload ended {8 * count + 8 - len(tail)} bytes short of its ids")
        ids = np.frombuffer(tail, dtype="<i8", count=count).astype(np.int64)
        (next_id,) = struct.unpack_from("<q", tail, 8 * count)
    if _checksum(header[: _HEAD.size], rows, ids, next_id) != stored_crc:
        raise bad("checksum mismatch: the file is corrupted")
    # A file with a valid checksum can still hold rows that add refuses (written by
    # another program, or by a build with a bug): the same check as for a pickle.
    problem = _restore_problem(kind, width, metric, rows) or _ids_problem(ids, next_id, rows)
    if problem:
        raise bad(problem)
    return _build(kind, width, metric, rows, ids, next_id)

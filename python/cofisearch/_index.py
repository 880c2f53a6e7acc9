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
from ._files import atomic_write, byte_chunks
from ._reference import unit_rows
from ._checks import (
    as_numpy,
    check_choice,
    check_codes,
    check_floats,
    check_k,
    check_nbits,
    check_num_threads,
    check_positive_int,
    check_result_size,
)

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
# Ids are int64 but the heaps key on (distance, id); keep both far from overflow.
MAX_ROWS = 1 << 40


class SearchResult(NamedTuple):
    """Top-k results, each row sorted best-first, ties broken by the smaller id.

    distances: ``(nq, k)`` int32 Hamming distances (ascending) or float32 scores
        (descending).
    ids: ``(nq, k)`` int64 database ids; ``-1`` where fewer than ``k`` results exist.
    """

    distances: np.ndarray
    ids: np.ndarray


class _Storage:
    """A growable 2-D buffer whose live rows are published as one immutable snapshot.

    ``snapshot`` is a ``(buffer, n)`` pair replaced in a single assignment, so a reader
    that takes it once sees rows ``[0, n)`` of that buffer as they were when it was
    published: appends write only past ``n`` (or into a new buffer) before publishing.
    Appends are serialised by a lock; reads take no lock.

    With ``track_norm`` it also keeps an upper bound on the norm of every row, raised
    before each snapshot is published, so a reader that takes the snapshot first and the
    bound second always gets a bound that holds for its rows.
    """

    def __init__(self, width, dtype, rows=None, *, track_norm=False):
        self._lock = threading.Lock()
        self._track_norm = track_norm
        # None where no bound is known yet (rows restored from a file or a pickle).
        self._norm_bound = 0.0 if rows is None else None
        if rows is None:
            rows = np.empty((0, width), dtype=dtype)
        self.snapshot = (rows, rows.shape[0])

    @property
    def n(self):
        return self.snapshot[1]

    def append(self, rows):
        """Appends ``rows`` and returns the new snapshot."""
        with self._lock:
            buffer, n = self.snapshot
            needed = n + rows.shape[0]
            if needed > MAX_ROWS:
                raise ValueError(
                    f"an index holds at most {MAX_ROWS} rows, adding would give {needed}"
                )
            if needed > buffer.shape[0] or not buffer.flags.writeable:
                capacity = needed if n == 0 else max(needed, buffer.shape[0] * 3 // 2)
                grown = np.empty((capacity, buffer.shape[1]), dtype=buffer.dtype)
                grown[:n] = buffer[:n]
                buffer = grown
            buffer[n:needed] = rows
            if self._track_norm and self._norm_bound is not None:
                self._norm_bound = max(self._norm_bound, _max_norm(rows))
            self.snapshot = (buffer, needed)
            return self.snapshot

    def norm_bound(self):
        """An upper bound on the norm of every row of any snapshot taken before the call."""
        bound = self._norm_bound
        if bound is None:
            with self._lock:
                if self._norm_bound is None:
                    buffer, n = self.snapshot
                    self._norm_bound = _max_norm(buffer[:n])
                bound = self._norm_bound
        return bound

    def view(self):
        buffer, n = self.snapshot
        v = buffer[:n]
        if v.flags.writeable:
            v = v.view()
            v.flags.writeable = False
        return v


class BinaryIndex:
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
        self._store = _Storage(nbits // 8, np.uint8)

    @property
    def nbits(self):
        return self._nbits

    @property
    def code_size(self):
        """Bytes per code."""
        return self._nbits // 8

    @property
    def ntotal(self):
        return self._store.n

    def __len__(self):
        return self._store.n

    @property
    def codes(self):
        """The stored codes, ``(ntotal, code_size)`` uint8, read-only (no copy)."""
        return self._store.view()

    def add(self, codes):
        """Appends codes; they get the ids ``ntotal .. ntotal + n - 1``."""
        self._store.append(check_codes(codes, "codes", self.code_size, one_d_ok=True))

    def search(self, queries, k, *, num_threads=None):
        """Exact Hamming top-``k``; a 1-D query is a batch of one.

        Returns a :class:`SearchResult` of int32 distances (ascending) and int64 ids.
        """
        q = check_codes(queries, "queries", self.code_size, one_d_ok=True)
        k = check_k(k)
        threads = check_num_threads(num_threads)
        buffer, n = self._store.snapshot
        if n == 0:
            raise ValueError("the index is empty: add codes before searching")
        check_result_size(q.shape[0], k, n, threads=threads)
        d, i = _core.hamming_search(buffer, n, q, k, threads)
        return SearchResult(d, i)

    def save(self, path):
        """Writes the index to ``path`` atomically (see :func:`load_index`)."""
        _save(path, _KIND_BINARY, self._nbits, 0, self.codes)

    def __reduce__(self):
        return _reduce(_KIND_BINARY, self._nbits, 0, self.codes)

    def __repr__(self):
        return f"BinaryIndex(nbits={self._nbits}, ntotal={self.ntotal})"


_METRICS = {"ip": 0, "cosine": 1}


def _max_norm(rows):
    if rows.shape[0] == 0:
        return 0.0
    # Float32 sums are 6x faster than float64 here; their rounding (relative, below 1e-4)
    # sits well inside the kernel's margin, and an overflow to inf stays a valid bound.
    return float(np.sqrt(np.einsum("ij,ij->i", rows, rows).max()))


class FloatIndex:
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
        # The storage keeps the largest row norm: a lone query's scan uses it to bound
        # rounding instead of computing every row's norm.
        self._store = _Storage(dim, np.float32, track_norm=True)

    @property
    def dim(self):
        return self._dim

    @property
    def metric(self):
        return self._metric

    @property
    def ntotal(self):
        return self._store.n

    def __len__(self):
        return self._store.n

    @property
    def vectors(self):
        """The stored vectors (normalised for cosine), read-only (no copy)."""
        return self._store.view()

    def _prepare(self, x, name):
        a = check_floats(x, name, self._dim, one_d_ok=True)
        if self._metric == "cosine":
            a = unit_rows(a)
        return a

    def add(self, vectors):
        """Appends vectors; they get the ids ``ntotal .. ntotal + n - 1``."""
        rows = self._prepare(vectors, "vectors")
        self._store.append(rows)

    def search(self, queries, k, *, candidates=None, num_threads=None):
        """Exact inner-product top-``k``; a 1-D query is a batch of one.

        With ``candidates``, an int64 ``(nq, c)`` array of database ids (``-1`` as padding,
        duplicates counted once), each query is scored against its own candidates only:
        the rerank stage of a coarse-to-fine search, O(nq * c * dim) whatever the index
        size. Returns a :class:`SearchResult` of float32 scores (descending) and int64 ids.
        """
        q = self._prepare(queries, "queries")
        k = check_k(k)
        threads = check_num_threads(num_threads)
        buffer, n = self._store.snapshot
        if n == 0:
            raise ValueError("the index is empty: add vectors before searching")
        if candidates is None:
            check_result_size(q.shape[0], k, n, threads=threads)
            # The bound is read after the snapshot, so it covers every row of it.
            s, i = _core.dot_search(buffer, n, q, k, threads, self._store.norm_bound())
            return SearchResult(s, i)
        cand = check_candidates(candidates, q.shape[0], n)
        check_result_size(q.shape[0], k, cand.shape[1], threads=threads)
        s, i = _core.dot_rerank(buffer, n, q, cand, k, threads)
        return SearchResult(s, i)

    def save(self, path):
        """Writes the index to ``path`` atomically (see :func:`load_index`)."""
        _save(path, _KIND_FLOAT, self._dim, _METRICS[self._metric], self.vectors)

    def __reduce__(self):
        return _reduce(_KIND_FLOAT, self._dim, _METRICS[self._metric], self.vectors)

    def __repr__(self):
        return f"FloatIndex(dim={self._dim}, metric={self._metric!r}, ntotal={self.ntotal})"


def check_candidates(candidates, nq, ntotal):
    """Candidate ids for ``nq`` queries over ``ntotal`` rows, as a contiguous int64
    ``(nq, c)`` array: any integer dtype (widened, never narrowed), ids in
    ``[0, ntotal)`` or ``-1`` as padding, and a 1-D row for a single query. Shared with
    the sharded index, whose candidates are global ids checked the same way."""
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
    if c.size:
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
# File layout (little-endian), version 1:
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

_MAGIC = b"COFISRCH"
_VERSION = 1
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


def _checksum(head, payload):
    crc = zlib.crc32(head)
    for chunk in byte_chunks(payload.reshape(-1).view(np.uint8)):
        crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def _head(kind, width, metric, rows):
    return _HEAD.pack(_MAGIC, _VERSION, kind, width, rows.shape[0], metric, 0, rows.nbytes)


def _save(path, kind, width, metric, rows):
    path = os.fspath(path)
    rows = np.ascontiguousarray(rows)
    head = _head(kind, width, metric, rows)
    header = head + struct.pack("<I", _checksum(head, rows))
    header += b"\0" * (_HEADER_SIZE - len(header))

    def write(f):
        f.write(header)
        for chunk in byte_chunks(rows.reshape(-1).view(np.uint8)):
            f.write(chunk)

    # Written beside the target, then renamed over it: a crash mid-save leaves the old file.
    atomic_write(path, write)


def _reduce(kind, width, metric, rows):
    # The pickle carries the CRC-32 a saved file would (header and rows): a pickle
    # corrupted in storage or transit, in the rows or the layout, is refused on load
    # instead of restoring a different index.
    rows = np.array(rows)
    return (_restore, (kind, width, metric, rows, _checksum(_head(kind, width, metric, rows), rows)))


def _restore(kind, width, metric, rows, checksum=None):
    """Rebuilds an index from its parts (a pickle), checking them as ``add`` would have:
    nothing restored can hold what ``add`` refuses. ``checksum`` is absent from pickles
    written before it existed."""
    problem = _restore_problem(kind, width, metric, rows)
    if problem:
        raise ValueError(f"cannot restore a cofisearch index: {problem}")
    # A pickle may carry a Fortran-ordered or strided array; the scans read one C block.
    rows = np.ascontiguousarray(rows)
    if checksum is not None and (
        type(checksum) is not int or checksum != _checksum(_head(kind, width, metric, rows), rows)
    ):
        raise ValueError("cannot restore a cofisearch index: checksum mismatch (corrupted pickle)")
    return _build(kind, width, metric, rows)


def _build(kind, width, metric, rows):
    if kind == _KIND_BINARY:
        index = BinaryIndex(width)
    else:
        index = FloatIndex(width, metric="cosine" if metric == 1 else "ip")
    index._store = _Storage(rows.shape[1], rows.dtype, rows, track_norm=kind == _KIND_FLOAT)
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
    if version != _VERSION:
        raise bad(f"format version {version} is not supported (this build reads {_VERSION})")
    if kind == _KIND_IVF_BINARY:
        # An inverted-file index: the same container, its own layout (cofisearch.ivf).
        from .ivf import load_ivf_index

        return load_ivf_index(path, mmap=mmap)
    (stored_crc,) = struct.unpack_from("<I", header, _HEAD.size)
    if kind not in (_KIND_BINARY, _KIND_FLOAT) or metric not in (0, 1) or width == 0:
        raise bad(f"corrupt header (kind {kind}, width {width}, metric {metric})")
    if kind == _KIND_BINARY and (width % 8 or width > MAX_NBITS):
        raise bad(f"corrupt header (nbits {width})")
    dtype, row_len = _row_layout(kind, width)
    if payload != count * row_len * dtype.itemsize or count > MAX_ROWS:
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
        if got != payload:
            raise bad(f"payload ended after {got} of {payload} bytes")
    if _checksum(header[: _HEAD.size], rows) != stored_crc:
        raise bad("checksum mismatch: the file is corrupted")
    # A file with a valid checksum can still hold rows that add refuses (written by
    # another program, or by a build with a bug): the same check as for a pickle.
    problem = _restore_problem(kind, width, metric, rows)
    if problem:
        raise bad(problem)
    return _build(kind, width, metric, rows)

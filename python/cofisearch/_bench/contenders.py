"""The contenders of a search benchmark: cofisearch (at any SIMD level), faiss, NumPy.

:func:`contenders` lists the engine names; :func:`open_engines` binds them to a database
(indexes built here, untimed); ``engine.running(threads)`` fixes the thread counts (and
the SIMD level) for a block of searches and yields the bare ``search(queries, k)``
callable to time. Every engine returns ``(distances, ids)`` as the engine does: best
first, ties by the smaller id, padded with id -1 and the sentinel.

faiss-cpu and threadpoolctl are used when installed; NumPy is the plain brute force of
:mod:`cofisearch._reference`, in bounded chunks of queries.
"""

from __future__ import annotations

import contextlib

import numpy as np

import cofisearch

from .. import _reference
from .machine import blas_threads, faiss_available

__all__ = [
    "BINARY",
    "FLOAT",
    "Engine",
    "capturing",
    "contenders",
    "open_engine",
    "open_engines",
    "result_arrays",
]

BINARY = "binary"
FLOAT = "float"

# Bytes of temporaries the NumPy contenders may hold per chunk of queries: enough to keep
# the per-call overhead small, small enough that a 1M-row database never needs gigabytes.
_NUMPY_CHUNK_BYTES = 64 << 20


def contenders(*, simd_levels=None, keep_missing_faiss=False):
    """Contender names, for either kind of data: cofisearch first, then the peers.

    ``cofisearch`` runs at the SIMD level chosen at import; ``cofisearch-<level>`` forces
    one of ``simd_levels`` (default: every level this processor supports other than the
    chosen one, which ``cofisearch`` already covers). ``faiss`` is listed when installed,
    or always with ``keep_missing_faiss`` (a suite that wants to show it as skipped).
    """
    chosen = cofisearch.simd_level()
    if simd_levels is None:
        simd_levels = [lv for lv in cofisearch.available_simd_levels() if lv != chosen]
    names = ["cofisearch", *[f"cofisearch-{lv}" for lv in simd_levels]]
    if keep_missing_faiss or faiss_available():
        names.append("faiss")
    names.append("numpy")
    return names


class Engine:
    """One contender bound to one database (its index, if any, already built).

    Use ``with engine.running(threads) as search: search(queries, k)``. Thread counts and
    the SIMD level are process-wide settings in faiss, BLAS and cofisearch; ``running``
    sets them once for a block of searches and restores them after, so the callable it
    yields does nothing but search (it is what a benchmark should time).
    """

    def __init__(self, name, kind, database):
        if kind not in (BINARY, FLOAT):
            raise ValueError(f"kind must be {BINARY!r} or {FLOAT!r}, got {kind!r}")
        self.name = name
        self.kind = kind
        self.database = database
        self.nrows = database.shape[0]
        self._index = None
        if name == "faiss":
            import faiss

            if kind == BINARY:
                self._index = faiss.IndexBinaryFlat(database.shape[1] * 8)
            else:
                self._index = faiss.IndexFlatIP(database.shape[1])
            self._index.add(database)
        elif name == "numpy":
            pass  # searches the database itself
        elif name == "cofisearch" or name.startswith("cofisearch-"):
            level = name.partition("-")[2] or None
            if level is not None and level not in cofisearch.available_simd_levels():
                raise ValueError(
                    f"SIMD level {level!r} is not available here; "
                    f"available: {cofisearch.available_simd_levels()}"
                )
            self._level = level
            # The index, not hamming_knn/dot_knn: the one-off functions validate the whole
            # database on every call (dot_knn checks every float is finite), which would
            # swamp a one-query search; an index checks once, at add, as users would.
            if kind == BINARY:
                self._index = cofisearch.BinaryIndex(database.shape[1] * 8)
            else:
                self._index = cofisearch.FloatIndex(database.shape[1])
            self._index.add(database)
        else:
            raise ValueError(f"unknown contender {name!r}; expected one of {contenders()}")

    @contextlib.contextmanager
    def running(self, threads):
        """Fixes the thread count (and SIMD level) and yields ``search(queries, k)``."""
        threads = int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if self.name == "faiss":
            import faiss

            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            try:
                # faiss's own OpenBLAS (used by IndexFlatIP for large batches) too.
                with blas_threads(threads):
                    yield self._index.search
            finally:
                faiss.omp_set_num_threads(before)
        elif self.name == "numpy":
            with blas_threads(threads):
                yield self._numpy_binary if self.kind == BINARY else self._numpy_float
        else:
            before = cofisearch.simd_level()
            if self._level is not None:
                cofisearch.set_simd_level(self._level)
            index_search = self._index.search

            def search(queries, k):
                return index_search(queries, k, num_threads=threads)

            try:
                yield search
            finally:
                cofisearch.set_simd_level(before)

    def _numpy_binary(self, queries, k):
        # XOR + popcount over whole words, then the exact top-k: the plain-NumPy brute
        # force, single-threaded whatever `threads` says (ufuncs do not split work).
        row_bytes = self.database.shape[1]
        chunk = max(1, _NUMPY_CHUNK_BYTES // (self.nrows * row_bytes))
        return _chunked(queries, chunk, lambda q: _reference.topk(
            _reference.hamming_distances(q, self.database), k, largest=False))

    def _numpy_float(self, queries, k):
        db = self.database
        chunk = max(1, _NUMPY_CHUNK_BYTES // (self.nrows * 4))
        return _chunked(queries, chunk,
                        lambda q: _reference.topk(q @ db.T, k, largest=True))


def _chunked(queries, chunk, search):
    parts = [search(queries[s : s + chunk]) for s in range(0, queries.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def open_engine(name, kind, database):
    """Binds contender ``name`` to ``database`` (uint8 codes or float32 vectors)."""
    return Engine(name, kind, database)


def open_engines(kind, database, names=None):
    """``{name: Engine}`` for ``names`` (default: cofisearch at its chosen level, faiss
    when installed, NumPy), faiss left out when it is not installed."""
    names = names or contenders(simd_levels=[])
    return {n: Engine(n, kind, database) for n in names if n != "faiss" or faiss_available()}


def capturing(search, queries, k, results, name):
    """A zero-argument call of ``search(queries, k)`` that keeps its latest answer in
    ``results[name]`` for the checks (the dict store costs nanoseconds per call)."""

    def call():
        results[name] = search(queries, k)

    return call


def result_arrays(result):
    """``(distances, ids)`` as arrays from any contender's return value."""
    d, i = result
    return np.asarray(d), np.asarray(i)

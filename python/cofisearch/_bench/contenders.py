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
from typing import NamedTuple

import numpy as np

import cofisearch

from .. import _reference
from .machine import blas_threads, faiss_available

__all__ = [
    "BINARY",
    "FLOAT",
    "AnnContender",
    "AnnData",
    "CofiFlat",
    "CofiIVFCascade",
    "Engine",
    "FaissFlat",
    "FaissHNSW",
    "FaissIVF",
    "asymmetric_coarse",
    "capturing",
    "contenders",
    "open_engine",
    "open_engines",
    "recall_at",
    "result_arrays",
    "smallest_reaching",
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


# ---- approximate indexes at matched recall (issue 13) ---------------------------------------
#
# An ANN contender is one index over one dataset (float vectors and their binary codes,
# the same items in the same order) with its knobs. ``build(data, threads)`` builds it
# (the caller times it); ``search(setting, data, rows, k)`` answers the queries ``rows``
# (a slice) at one setting and returns the ids; ``finalists(...)`` says which settings
# reach a recall target on a query sample, cheapest first by its own knobs, and what it
# tried on the way. Every contender's settings are dicts, so that a report can show them.


class AnnData(NamedTuple):
    """A dataset for the approximate contenders: unit float vectors and their binary
    codes, for the database and for the queries (query ``i`` is ``query_vectors[i]`` and
    ``query_codes[i]``)."""

    vectors: np.ndarray
    codes: np.ndarray
    query_vectors: np.ndarray
    query_codes: np.ndarray


def recall_at(ids, truth):
    """Mean share of each query's true ids (``-1`` padding ignored) among its ``ids``."""
    hits = (ids[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    found = hits.any(axis=1).sum(axis=1)
    return float(np.mean(found / np.maximum((truth >= 0).sum(axis=1), 1)))


def smallest_reaching(recall_of, lo, hi, target):
    """The smallest integer ``v`` in ``[lo, hi]`` with ``recall_of(v) >= target``, assuming
    recall grows with ``v`` (doubling from ``lo``, then bisection), or ``None``; and every
    ``(v, recall)`` tried, ascending."""
    tried = {}
    target -= 1e-9  # a mean of shares may round just below a target it reaches

    def at(v):
        if v not in tried:
            tried[v] = recall_of(v)
        return tried[v]

    v, last_short = lo, None
    while at(v) < target:
        if v >= hi:
            return None, sorted(tried.items())
        last_short, v = v, min(hi, v * 2)
    if last_short is not None:
        a, b = last_short, v  # at(a) < target <= at(b)
        while b - a > 1:
            mid = (a + b) // 2
            a, b = (a, mid) if at(mid) >= target else (mid, b)
        v = b
    return v, sorted(tried.items())


class AnnContender:
    """Base: a named index whose knob chains are walked for each recall target.

    Subclasses set ``name``, ``family`` (``"float"``, ``"binary"`` or ``"cascade"``) and
    ``chains``: ``[(fixed settings, knob name, lowest, highest)]``, each chain one
    integer knob that recall grows with, the others fixed; an empty list means one
    setting (an exhaustive index).
    """

    name = ""
    family = ""
    chains = ()
    # Whether each chain needs at most the knob value the previous one reached the target
    # with (a later chain fixes a more accurate setting of the other knobs).
    chains_narrow = False

    def build(self, data, threads):
        raise NotImplementedError

    def search(self, setting, data, rows, k):
        raise NotImplementedError

    def finalists(self, target, data, truth, k):
        """``(finalists, tried)``: for each chain its cheapest setting reaching ``target``
        on the queries of ``truth`` (``[(setting, recall)]``), and every ``(setting,
        recall)`` tried."""
        rows = slice(0, truth.shape[0])
        # Recalls already measured on these queries (another target's walk) are reused.
        cache = self.__dict__.setdefault("_recalls", {})

        def recall(setting):
            key = (id(data), id(truth), k, tuple(sorted(setting.items())))
            if key not in cache:
                cache[key] = recall_at(self.search(setting, data, rows, k), truth)
            return cache[key]

        if not self.chains:
            r = recall({})
            return ([({}, r)] if r >= target - 1e-9 else []), [({}, r)]
        finalists, tried = [], []
        found = None
        for fixed, knob, lo, hi in self.chains:
            if found is not None and self.chains_narrow:
                hi = min(hi, found)

            def recall_of(v, fixed=fixed, knob=knob):
                return recall({**fixed, knob: v})

            v, seen = smallest_reaching(recall_of, lo, hi, target)
            tried += [({**fixed, knob: u}, r) for u, r in seen]
            if v is not None:
                finalists.append(({**fixed, knob: v}, dict(seen)[v]))
                found = v
        return finalists, tried

    def resident_bytes(self):
        """Bytes the index holds (``None``: unknown)."""

    def release(self):
        """Drops the built index (its memory), keeping the description."""
        for name in ("index", "_ivf", "_quantizer", "cascade", "_recalls"):
            self.__dict__.pop(name, None)


def _faiss_threads(threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    return faiss


def _pow2_at_most(n):
    return 1 << max(0, int(n).bit_length() - 1)


class FaissFlat(AnnContender):
    """faiss IndexFlatIP over the vectors (FG Flat) or IndexBinaryFlat over the codes
    (CG Flat)."""

    chains = ()

    def __init__(self, family):
        self.family = family
        self.name = "faiss IndexFlatIP" if family == FLOAT else "faiss IndexBinaryFlat"

    def build(self, data, threads):
        faiss = _faiss_threads(threads)
        if self.family == FLOAT:
            self.index = faiss.IndexFlatIP(data.vectors.shape[1])
            self.index.add(data.vectors)
        else:
            self.index = faiss.IndexBinaryFlat(data.codes.shape[1] * 8)
            self.index.add(data.codes)

    def search(self, setting, data, rows, k):
        q = data.query_vectors if self.family == FLOAT else data.query_codes
        return self.index.search(q[rows], k)[1]


class FaissHNSW(AnnContender):
    """faiss IndexHNSWFlat (M = 32, efConstruction 40 as faiss's default), efSearch
    walked."""

    family = FLOAT

    def __init__(self, m=32, max_ef=4096):
        self.name = f"faiss IndexHNSWFlat M={m}"
        self.m = m
        self.chains = [({}, "efSearch", 16, max_ef)]

    def build(self, data, threads):
        faiss = _faiss_threads(threads)
        self.index = faiss.IndexHNSWFlat(data.vectors.shape[1], self.m)
        self.index.add(data.vectors)

    def search(self, setting, data, rows, k):
        self.index.hnsw.efSearch = setting["efSearch"]
        return self.index.search(data.query_vectors[rows], k)[1]

    def resident_bytes(self):
        n, d = self.index.ntotal, self.index.d
        # Vectors, plus the level-0 links (2M per item) and the upper levels' (M per
        # level, 1/ln(M) of the items per level above 0): faiss's own layout, int32 ids.
        links = self.index.hnsw.neighbors.size()
        return n * d * 4 + links * 4


class FaissIVF(AnnContender):
    """faiss IndexIVFFlat, or IndexIVFRaBitQ wrapped in IndexRefineFlat (an exact rerank
    of ``k_factor * k`` candidates), both over the vectors with ``nlist`` lists and L2
    (the vectors are unit: the same order as inner product); IndexBinaryIVF over the codes
    (``family="binary"``)."""

    def __init__(self, kind, nlist, k_factors=(2, 4, 8, 16, 32, 64)):
        self.kind = kind
        self.nlist = nlist
        self.family = BINARY if kind == "binary" else FLOAT
        self.name = {"flat": "faiss IndexIVFFlat", "rabitq": "faiss IndexIVFRaBitQ+RefineFlat",
                     "binary": "faiss IndexBinaryIVF"}[kind] + f" nlist={nlist}"
        if kind == "rabitq":
            self.chains = [({"k_factor": f}, "nprobe", 1, nlist) for f in k_factors]
            self.chains_narrow = True
        else:
            self.chains = [({}, "nprobe", 1, nlist)]

    def build(self, data, threads):
        faiss = _faiss_threads(threads)
        d = data.vectors.shape[1]
        if self.kind == "binary":
            self._quantizer = faiss.IndexBinaryFlat(data.codes.shape[1] * 8)
            self.index = self._ivf = faiss.IndexBinaryIVF(self._quantizer, data.codes.shape[1] * 8,
                                                          self.nlist)
            self.index.train(data.codes)
            self.index.add(data.codes)
            return
        self._quantizer = faiss.IndexFlatL2(d)
        if self.kind == "flat":
            self.index = self._ivf = faiss.IndexIVFFlat(self._quantizer, d, self.nlist)
        else:
            self._ivf = faiss.IndexIVFRaBitQ(self._quantizer, d, self.nlist)
            # The refine wrapper before adding, so that it stores the vectors too.
            self.index = faiss.IndexRefineFlat(self._ivf)
        self.index.train(data.vectors)
        self.index.add(data.vectors)

    def search(self, setting, data, rows, k):
        self._ivf.nprobe = setting["nprobe"]
        if self.kind == "rabitq":
            self.index.k_factor = setting["k_factor"]
        q = data.query_codes if self.kind == "binary" else data.query_vectors
        return self.index.search(q[rows], k)[1]

    def resident_bytes(self):
        n = self.index.ntotal
        if self.kind == "binary":
            return n * (self.index.code_size + 8)
        d = self._ivf.d
        codes = n * (self._ivf.code_size + 8)  # codes and int64 ids in the lists
        return codes + (n * d * 4 if self.kind == "rabitq" else 0) + self.nlist * d * 4


class CofiFlat(AnnContender):
    """cofisearch's exhaustive FloatIndex (family ``"float"``) or BinaryIndex
    (``"binary"``)."""

    chains = ()

    def __init__(self, family, threads):
        self.family = family
        self.threads = threads
        self.name = "cofisearch FloatIndex" if family == FLOAT else "cofisearch BinaryIndex"

    def build(self, data, threads):
        if self.family == FLOAT:
            self.index = cofisearch.FloatIndex(data.vectors.shape[1])
            self.index.add(data.vectors)
        else:
            self.index = cofisearch.BinaryIndex(data.codes.shape[1] * 8)
            self.index.add(data.codes)

    def search(self, setting, data, rows, k):
        q = data.query_vectors if self.family == FLOAT else data.query_codes
        return self.index.search(q[rows], k, num_threads=self.threads).ids


def asymmetric_coarse(nlist, bits_per_dim=None):
    """A ``make_coarse`` for :class:`CofiIVFCascade`: the IVF index routed by the vectors
    and screened by asymmetric estimates (``screen="asymmetric"``) instead of Hamming
    distances, with screen codes of ``bits_per_dim`` bits a dimension rounded up to 64
    (default: the index's, 2)."""

    def make(data, threads):
        bits = None
        if bits_per_dim is not None:
            dim = data.vectors.shape[1]
            bits = max(dim, -(-int(bits_per_dim * dim) // 64) * 64)
        coarse = cofisearch.IVFBinaryIndex(data.codes.shape[1] * 8, nlist, screen="asymmetric",
                                           screen_bits=bits)
        coarse.train(data.codes, data.vectors, num_threads=threads)
        coarse.add(data.codes, data.vectors, num_threads=threads)
        return coarse

    return make


class CofiIVFCascade(AnnContender):
    """cofisearch's Cascade over an IVFBinaryIndex routed by the vectors (the screen)
    and a FloatIndex (the exact rerank); its settings come from :func:`cofisearch.tune`.

    ``make_coarse(data, threads)`` builds the trained and filled coarse index (default:
    ``IVFBinaryIndex(nbits, nlist)`` trained on the vectors): the hook for another
    screen over the same codes.
    """

    family = "cascade"

    def __init__(self, nlist, threads, *, name=None, make_coarse=None, max_candidates=4096):
        self.nlist = nlist
        self.threads = threads
        self.max_candidates = max_candidates
        self.name = name or f"cofisearch IVF cascade nlist={nlist}"
        self._make_coarse = make_coarse or self._ivf_on_vectors

    def _ivf_on_vectors(self, data, threads):
        coarse = cofisearch.IVFBinaryIndex(data.codes.shape[1] * 8, self.nlist)
        coarse.train(data.codes, data.vectors, num_threads=threads)
        coarse.add(data.codes, data.vectors, num_threads=threads)
        return coarse

    def build(self, data, threads):
        coarse = self._make_coarse(data, threads)
        fine = cofisearch.FloatIndex(data.vectors.shape[1])
        fine.add(data.vectors)
        self.cascade = cofisearch.Cascade(coarse, fine)

    def search(self, setting, data, rows, k):
        coarse, fine = self.cascade.coarse, self.cascade.fine
        vectors = data.query_vectors[rows]
        _, candidates = coarse.search(data.query_codes[rows], max(k, setting["n_candidates"]),
                                      nprobe=setting["nprobe"], vectors=vectors,
                                      num_threads=self.threads)
        return fine.search(vectors, k, candidates=candidates, num_threads=self.threads).ids

    def finalists(self, target, data, truth, k):
        rows = slice(0, truth.shape[0])
        result = cofisearch.tune(self.cascade, data.query_codes[rows], data.query_vectors[rows],
                                 target_recall=target, k=k, truth=truth,
                                 max_candidates=self.max_candidates, repeat=1,
                                 num_threads=self.threads)
        tried = [({"nprobe": p.nprobe, "n_candidates": p.n_candidates or result.max_candidates},
                  p.recall) for p in result.explored]
        finalists = [({"nprobe": p.nprobe, "n_candidates": p.n_candidates}, p.recall)
                     for p in result.frontier]
        return finalists, tried

    def resident_bytes(self):
        # The screen alone: the float vectors of the rerank may stay memory-mapped.
        coarse = self.cascade.coarse
        per_item, extra = coarse.code_size + 8, 0
        if coarse.screen == "asymmetric":
            # Its 1-bit codes twice (rows and the kernels' panel) and a factor per item;
            # the rotation and the lists' centres.
            per_item += 2 * coarse.screen_bits // 8 + 4
            extra = coarse.dim * coarse.screen_bits * 4 + coarse.nlist * 4
        return coarse.ntotal * per_item + coarse.nlist * (coarse.dim or 0) * 4 + extra

"""An inverted-file index over packed binary codes: Hamming search that scans only the
lists a query probes, for sub-linear coarse stages.

The database is partitioned into ``nlist`` inverted lists by a coarse quantizer learned
at :meth:`IVFBinaryIndex.train`; a query scans the ``nprobe`` lists nearest to it and gets
the exact Hamming top-k among their items. Each list is one contiguous run of codes in a
shared buffer, so the engine's SIMD kernels scan it as they scan a whole database, and a
batch is scanned list-major: each probed list is read once for every query probing it.

Two ways to partition:

- **codes only** (``train(codes)``): centroids are codes, learned by k-majority (assign
  each code to its nearest centroid in Hamming distance, then set each centroid bit to
  the majority of its cluster's bits; a tie keeps the bit). Items and queries are routed
  by Hamming distance to the centroids, so a query needs nothing but its code (a pure
  cross-modal hashing model, text code against image codes).
- **float vectors** (``train(codes, vectors)``): spherical k-means on the vectors (each
  normalised to unit length; centroids are unit means), and items (``add(codes,
  vectors)``) and queries (``search(..., vectors=...)``) are routed by cosine similarity
  to the centroids: the largest inner product with the unit centroids, which for unit
  vectors is the nearest centroid in L2. This is the setting of a :class:`~cofisearch.
  Cascade`, whose rerank needs the vectors anyway. ``vectors`` is then required on every
  ``add`` and ``search``, and refused on an index trained on codes.

**The asymmetric screen** (``screen="asymmetric"``, vectors required). Symmetric Hamming
between a query's code and the items' codes loses much of the ranking when the query
comes from another embedding map (text against images): on such data a 256-bit ITQ
screen kept recall@10 0.82 with 1,000 candidates out of 1M. The asymmetric screen keeps
the query a float vector and estimates its inner product with each item from a 1-bit
code, as RaBitQ does (Gao & Long, SIGMOD 2024; faiss's IndexIVFRaBitQ): at ``train``, a
random ``(dim, screen_bits)`` rotation with orthonormal rows and, per list, a centre on
its centroid's axis (the mean projection of its members); at ``add``, per item the signs
``x`` of its rotated residual ``r = (v - centre) P`` and one factor ``|r|^2 / sum|r_i|``;
at ``search``, the rotated query quantised to 4 bits per dimension, and
``<v, q> ~ <centre, q> + factor * <2x - 1, Pq>``, the last inner product taken with
popcounts over the query's bit planes (cpp/asym.h). The items' Hamming codes stay, so
``search(..., screen="hamming")`` still answers code-only comparisons.

Training follows faiss: at most ``max_points_per_centroid`` (256) points per centroid
are sampled, ``niter`` (10) iterations run, and it is deterministic for a ``seed``. An
empty cluster takes a member of the largest one (chosen by the seeded generator) as its
centroid. Assignments use the engine's own top-1 searches, never an n x nlist matrix.

Thread safety, as :class:`~cofisearch.BinaryIndex`: searches, ``save``, pickling and the
read-only properties may run from any number of threads at once; ``train`` and ``add`` are
serialised; a search sees the index as it was before or after each ``add`` (or ``train``),
never in between.
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
    check_codes,
    check_floats,
    check_int,
    check_k,
    check_nbits,
    check_num_threads,
    check_positive_int,
    check_result_size,
)
from ._files import atomic_write, byte_chunks
from ._index import MAX_NBITS, MAX_ROWS, SearchResult
from ._reference import quantize_queries, unit_rows

__all__ = ["IVFBinaryIndex"]

_ROUTINGS = (None, "codes", "vectors")
_SCREENS = ("hamming", "asymmetric")
# Bits per dimension of a query in the asymmetric screen: 4 lost nothing measurable
# against float queries on cross-modal data (recall@10 within 0.005 at every depth), as
# RaBitQ's authors found.
_QUERY_BITS = 4
_MAX_SCREEN_BITS = 8192


class _Routing(NamedTuple):
    """A trained coarse quantizer: ``"codes"`` (uint8 centroids) or ``"vectors"`` (float32
    unit centroids and the bound on their norms that the float scan may use), and for the
    asymmetric screen the ``(dim, screen_bits)`` float32 rotation (orthonormal rows) and
    the ``(nlist,)`` float32 scale of each list's centre (``scale[l] * centroids[l]``,
    from which its items' residuals are coded)."""

    kind: str
    centroids: np.ndarray
    norm_bound: float
    rotation: np.ndarray | None = None
    scale: np.ndarray | None = None

    def centres(self, lists):
        """The asymmetric screen's centres of ``lists``, float32."""
        return (self.scale[lists, None] * self.centroids[lists]).astype(np.float32)


class _Lists(NamedTuple):
    """The inverted lists as one published snapshot.

    List ``l`` is rows ``[start[l], start[l] + size[l])`` of ``codes`` and ``ids``, with
    room up to ``cap[l]`` rows; rows ``[used, len(codes))`` are free for lists that
    outgrow their room. Rows past a list's size, and the free tail, were never part of
    any published snapshot: an add writes only there (or into new buffers) before
    publishing, so a reader holding an older snapshot never sees a row change.
    """

    codes: np.ndarray
    ids: np.ndarray
    start: np.ndarray
    size: np.ndarray
    cap: np.ndarray
    used: int
    ntotal: int
    #: The asymmetric screen's 1-bit codes and factors, row for row with ``codes``
    #: (``None`` for a Hamming-only index).
    acodes: np.ndarray | None = None
    factors: np.ndarray | None = None

    def rows(self):
        """The per-row arrays, in the order that _append and the payload keep them."""
        return [a for a in (self.codes, self.ids, self.acodes, self.factors) if a is not None]


def _empty_lists(nlist, nbytes, screen_bits=0):
    zeros = np.zeros(nlist, dtype=np.int64)
    extra = (np.empty((0, screen_bits // 8), np.uint8), np.empty(0, np.float32)) if screen_bits else ()
    return _Lists(np.empty((0, nbytes), np.uint8), np.empty(0, np.int64), zeros, zeros, zeros, 0, 0,
                  *extra)


def _ranges(starts, lengths):
    """The concatenated ``arange(s, s + n)`` of each (start, length), as int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total)


class IVFBinaryIndex:
    """Hamming search over the inverted lists a query probes.

    Parameters
    ----------
    nbits:
        Bits per code, a multiple of 8 (codes as for :class:`~cofisearch.BinaryIndex`).
    nlist:
        Number of inverted lists (centroids). faiss's rule of thumb is 4 to 16 times
        ``sqrt(ntotal)``.
    nprobe:
        Lists each query scans unless :meth:`search` says otherwise (the ``nprobe``
        attribute, settable at any time); default ``max(1, nlist // 16)``, about 6% of
        the items (on 256-bit ITQ codes of cross-modal data it kept 0.8 of the exhaustive
        Hamming top-10, bench/ivf_scale.py). Values above ``nlist`` scan every list.
    seed, niter, max_points_per_centroid:
        Training: the seed of the sampling and initialisation, the number of k-means
        (k-majority) iterations and the largest sample per centroid.
    screen:
        What :meth:`search` ranks by default: ``"hamming"`` (the codes' Hamming
        distances) or ``"asymmetric"``, estimated inner products of the float query
        vectors with the items' vectors (see the module's documentation), which needs an
        index trained and filled with vectors and keeps, per item, ``screen_bits`` more
        bits and one float beside its code.
    screen_bits:
        Bits of the asymmetric screen's codes, a multiple of 64 and at least the vectors'
        dimension; default twice the dimension rounded up to 64 (on 256-d cross-modal
        data, 200k items, 128 of 512 lists probed, the top 200 estimates of 512-bit codes
        held recall@10 0.990 and those of 256-bit codes 0.942,
        bench/results/ivf_asym_200k.txt).

    Ids are insertion order, as in ``BinaryIndex``. With ``nprobe >= nlist`` a Hamming
    search returns exactly what ``BinaryIndex`` returns on the same codes.
    """

    kind = "ivf_binary"

    def __init__(self, nbits, nlist, *, nprobe=None, seed=0, niter=10, max_points_per_centroid=256,
                 screen="hamming", screen_bits=None):
        nbits = check_nbits(nbits)
        if nbits > MAX_NBITS:
            raise ValueError(f"nbits must be at most {MAX_NBITS}, got {nbits}")
        self._nbits = nbits
        self._nlist = check_int(nlist, "nlist", minimum=1, maximum=MAX_ROWS)
        self.nprobe = max(1, self._nlist // 16) if nprobe is None else nprobe
        self._seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
        self._niter = check_int(niter, "niter", minimum=1, maximum=2**31 - 1)
        self._max_points = check_int(
            max_points_per_centroid, "max_points_per_centroid", minimum=1, maximum=MAX_ROWS
        )
        self._screen = _check_screen(screen)
        if screen_bits is not None:
            if self._screen != "asymmetric":
                raise ValueError('screen_bits only applies to screen="asymmetric"')
            screen_bits = check_int(screen_bits, "screen_bits", minimum=64, maximum=_MAX_SCREEN_BITS)
            if screen_bits % 64:
                raise ValueError(f"screen_bits must be a multiple of 64, got {screen_bits}")
        self._screen_bits = screen_bits
        self._lock = threading.Lock()
        # (routing or None, lists): replaced in one assignment, read once per search.
        self._state = (None, _empty_lists(self._nlist, nbits // 8))

    # ---- properties ---------------------------------------------------------------

    @property
    def nbits(self):
        return self._nbits

    @property
    def code_size(self):
        """Bytes per code."""
        return self._nbits // 8

    @property
    def nlist(self):
        return self._nlist

    @property
    def nprobe(self):
        """Lists a search scans by default; settable (a positive int)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value):
        self._nprobe = check_positive_int(value, "nprobe")

    @property
    def ntotal(self):
        return self._state[1].ntotal

    @property
    def screen(self):
        """What :meth:`search` ranks by default: ``"hamming"`` or ``"asymmetric"``."""
        return self._screen

    @property
    def screen_bits(self):
        """Bits of the asymmetric screen's codes (``None`` for a Hamming index, and for an
        asymmetric one trained without a chosen width until :meth:`train`)."""
        routing = self._state[0]
        if routing is not None and routing.rotation is not None:
            return routing.rotation.shape[1]
        return self._screen_bits

    def __len__(self):
        return self.ntotal

    @property
    def is_trained(self):
        return self._state[0] is not None

    @property
    def routing(self):
        """How items and queries find their lists: ``"codes"``, ``"vectors"``, or ``None``
        before :meth:`train`."""
        routing = self._state[0]
        return None if routing is None else routing.kind

    @property
    def dim(self):
        """Dimension of the routing vectors, or ``None`` unless trained on vectors."""
        routing = self._state[0]
        return routing.centroids.shape[1] if routing is not None and routing.kind == "vectors" else None

    @property
    def centroids(self):
        """The trained centroids, read-only: ``(nlist, code_size)`` uint8 codes or
        ``(nlist, dim)`` float32 unit vectors (``None`` before :meth:`train`)."""
        routing = self._state[0]
        if routing is None:
            return None
        view = routing.centroids.view()
        view.flags.writeable = False
        return view

    @property
    def list_sizes(self):
        """Items per inverted list, an int64 array of ``nlist`` entries (a copy)."""
        return self._state[1].size.copy()

    def list_ids(self, list_no):
        """Ids of the items of list ``list_no``, ascending, read-only (no copy)."""
        list_no = check_int(list_no, "list_no", minimum=0, maximum=self._nlist - 1)
        lists = self._state[1]
        s = int(lists.start[list_no])
        view = lists.ids[s : s + int(lists.size[list_no])].view()
        view.flags.writeable = False
        return view

    # ---- training and adding -------------------------------------------------------

    def train(self, codes, vectors=None, *, num_threads=None):
        """Learns the ``nlist`` centroids from ``codes`` alone or, given ``vectors`` (one
        per code), from the vectors; see the module's documentation. Needs at least
        ``nlist`` items and an index that holds none (train before adding)."""
        c = check_codes(codes, "codes", self.code_size)
        v = None if vectors is None else _check_vectors(vectors, "vectors", None, c.shape[0])
        if v is not None and v.shape[1] == 0:
            raise ValueError("vectors must have at least 1 dimension, got 0 columns")
        if self._screen == "asymmetric":
            if v is None:
                raise ValueError('vectors are required: screen="asymmetric" scores the items\' vectors')
            if self._screen_bits is not None and self._screen_bits < v.shape[1]:
                raise ValueError(
                    f"screen_bits must be at least the vectors' dimension {v.shape[1]}, got "
                    f"{self._screen_bits}"
                )
            if v.shape[1] > _MAX_SCREEN_BITS // 2 and self._screen_bits is None:
                raise ValueError(
                    f"vectors of dim {v.shape[1]} need an explicit screen_bits (at most "
                    f"{_MAX_SCREEN_BITS}): the default is twice the dimension"
                )
        threads = check_num_threads(num_threads)
        if c.shape[0] < self._nlist:
            raise ValueError(
                f"codes must hold at least nlist={self._nlist} items to train, got {c.shape[0]}"
            )
        with self._lock:
            if self._state[1].ntotal:
                raise ValueError(
                    f"train must come before add: the index already holds {self._state[1].ntotal} items"
                )
            rng = np.random.default_rng(self._seed)
            n = c.shape[0]
            budget = self._max_points * self._nlist
            sample = np.sort(rng.choice(n, budget, replace=False)) if n > budget else None
            if v is None:
                routing = _train_codes(c if sample is None else c[sample], self._nlist,
                                       self._niter, rng, threads)
            else:
                routing = _train_vectors(v if sample is None else v[sample], self._nlist,
                                         self._niter, rng, threads)
            bits = 0
            if self._screen == "asymmetric":
                bits = self._screen_bits or -(-2 * v.shape[1] // 64) * 64
                routing = routing._replace(rotation=_rotation(v.shape[1], bits, rng),
                                           scale=_centre_scale(routing, v if sample is None else v[sample],
                                                               threads))
            self._state = (routing, _empty_lists(self._nlist, self.code_size, bits))

    def add(self, codes, vectors=None, *, num_threads=None):
        """Appends codes, which get the ids ``ntotal .. ntotal + n - 1``; ``vectors`` (one
        per code) is required when the index was trained on vectors, and refused
        otherwise."""
        c = check_codes(codes, "codes", self.code_size, one_d_ok=True)
        threads = check_num_threads(num_threads)
        with self._lock:
            routing, lists = self._state
            if routing is None:
                raise ValueError("the index is not trained: call train before add")
            if lists.ntotal + c.shape[0] > MAX_ROWS:
                raise ValueError(
                    f"an index holds at most {MAX_ROWS} rows, adding would give "
                    f"{lists.ntotal + c.shape[0]}"
                )
            assign = _route(routing, c, vectors, "vectors", 1, threads)[0][:, 0]
            screened = ()
            if routing.rotation is not None:
                screened = _screen_codes(routing, check_floats(vectors, "vectors", None, one_d_ok=True),
                                         assign)
            self._state = (routing, _append(lists, c, assign, screened))

    # ---- searching -----------------------------------------------------------------

    def probe(self, queries, nprobe=None, *, vectors=None, num_threads=None):
        """The lists each query scans: an int64 ``(nq, min(nprobe, nlist))`` array of
        list numbers, nearest first (ties by the smaller list number)."""
        q = check_codes(queries, "queries", self.code_size, one_d_ok=True)
        nprobe = self._nprobe if nprobe is None else check_positive_int(nprobe, "nprobe")
        threads = check_num_threads(num_threads)
        routing = self._trained_routing()
        return _route(routing, q, vectors, "vectors", min(nprobe, self._nlist), threads)[0]

    def search(self, queries, k, *, nprobe=None, vectors=None, num_threads=None, screen=None):
        """Top-``k`` among the items of the ``nprobe`` lists nearest to each query; a 1-D
        query is a batch of one. ``vectors`` routes the queries when the index was
        trained on vectors (required then, refused otherwise).

        ``screen`` (default: the index's) chooses the ranking. ``"hamming"``: exact
        Hamming distances of the codes over the probed lists, a
        :class:`~cofisearch.SearchResult` of int32 distances (ascending). ``"asymmetric"``
        (an index built with it): estimated inner products of ``vectors`` with the items'
        vectors, float32 scores (descending); ``queries`` are then only checked. Ties go
        to the smaller id; where the probed lists hold fewer than ``k`` items the rows
        are padded with id -1 (and the int32 maximum or ``-inf``).
        """
        q = check_codes(queries, "queries", self.code_size, one_d_ok=True)
        k = check_k(k)
        nprobe = self._nprobe if nprobe is None else check_positive_int(nprobe, "nprobe")
        threads = check_num_threads(num_threads)
        screen = self._screen if screen is None else _check_screen(screen)
        routing, lists = self._state
        if routing is None:
            raise ValueError("the index is not trained: call train, then add, before searching")
        if lists.ntotal == 0:
            raise ValueError("the index is empty: add codes before searching")
        if screen == "asymmetric" and routing.rotation is None:
            raise ValueError('screen="asymmetric" needs an index built with it; this one screens by Hamming')
        probes, bias = _route(routing, q, vectors, "vectors", min(nprobe, self._nlist), threads)
        check_result_size(q.shape[0], k, lists.ntotal)
        if screen == "hamming":
            d, i = _core.ivf_search(lists.codes, lists.ids, lists.start, lists.size, q, probes, k, threads)
            return SearchResult(d, i)
        v = check_floats(vectors, "vectors", routing.centroids.shape[1], one_d_ok=True)
        planes, consts = quantize_queries(v @ routing.rotation, _QUERY_BITS)
        bias = routing.scale[probes] * bias
        d, i = _core.ivf_asym_search(lists.acodes, lists.factors, lists.ids, lists.start, lists.size,
                                     planes, _QUERY_BITS, consts, probes, bias, k, threads)
        return SearchResult(d, i)

    def _trained_routing(self):
        routing = self._state[0]
        if routing is None:
            raise ValueError("the index is not trained: call train first")
        return routing

    # ---- persistence ---------------------------------------------------------------

    def _parts(self):
        """(settings, centroids, sizes, ids, codes, rotation, scale, screen codes, factors), None
        where the index has no such part, with the lists in list order and no room
        between them: what a file or a pickle holds."""
        routing, lists = self._state
        rows = _ranges(lists.start, lists.size)
        settings = _Settings(
            self._nbits, self._nlist, self._nprobe, self._seed, self._niter, self._max_points,
            _ROUTINGS.index(None if routing is None else routing.kind),
            0 if routing is None or routing.kind == "codes" else routing.centroids.shape[1],
            lists.ntotal, _SCREENS.index(self._screen), self.screen_bits or 0,
        )
        if routing is None:
            return settings, None, None, None, None, None, None, None, None
        screened = [None] * 4
        if routing.rotation is not None:
            screened = [routing.rotation, routing.scale, lists.acodes[rows], lists.factors[rows]]
        return (settings, routing.centroids, lists.size.copy(), lists.ids[rows], lists.codes[rows],
                *screened)

    def save(self, path):
        """Writes the index to ``path`` atomically (see :func:`cofisearch.load_index`)."""
        _save(os.fspath(path), *self._parts())

    def __reduce__(self):
        settings, *arrays = self._parts()
        # The checksum stays the sixth argument, where pickles of the Hamming-only index
        # had it; the asymmetric screen's parts follow it.
        screened = arrays[4:] if settings.screen else []
        return (_restore, (tuple(settings), *arrays[:4], _checksum(settings, arrays), *screened))

    def __repr__(self):
        return (
            f"IVFBinaryIndex(nbits={self._nbits}, nlist={self._nlist}, nprobe={self._nprobe}, "
            f"routing={self.routing!r}, ntotal={self.ntotal}"
            + (f", screen='asymmetric', screen_bits={self.screen_bits})" if self._screen == "asymmetric" else ")")
        )


def _check_screen(screen):
    if screen not in _SCREENS:
        raise ValueError(f"screen must be one of {list(_SCREENS)}, got {screen!r}")
    return screen


def _check_vectors(vectors, name, dim, rows):
    v = check_floats(vectors, name, dim, one_d_ok=True)
    if v.shape[0] != rows:
        raise ValueError(f"{name} must hold one vector per code: got {rows} codes and {v.shape[0]} vectors")
    return v


def _route(routing, codes, vectors, name, nprobe, threads):
    """The ``nprobe`` lists nearest to each item or query (``(n, nprobe)`` int64) and
    their Hamming distances or inner products with it."""
    if routing.kind == "codes":
        if vectors is not None:
            raise ValueError(
                f"{name} must not be given: this index was trained on codes and routes by "
                "them; train on vectors to route by vectors"
            )
        return _nearest(_core.hamming_search, routing.centroids, codes, nprobe, threads)
    if vectors is None:
        raise ValueError(
            f"{name} is required: this index was trained on vectors and routes each code by "
            "its vector"
        )
    v = _check_vectors(vectors, name, routing.centroids.shape[1], codes.shape[0])
    return _nearest(_core.dot_search, routing.centroids, v, nprobe, threads, routing.norm_bound)


def _nearest(search, centroids, queries, nprobe, threads, *bound):
    """(ids, distances or scores) of the ``nprobe`` nearest centroids of each query, by the
    engine's ``search`` (which selects in cache-sized chunks of queries itself)."""
    d, i = search(centroids, centroids.shape[0], queries, nprobe, threads, *bound)
    return i, d


# ---- training ---------------------------------------------------------------------------

# Rows per chunk of the centroid updates: bounds their temporaries (a chunk of unpacked
# bits or float rows) whatever the sample size.
_CHUNK_ROWS = 1 << 16


def _cluster_sums(rows_of, n, assign, nlist, width, dtype):
    """``(sums, counts)``: per cluster, the sum of ``rows_of(a, b)`` (rows a..b of the
    data, as a 2-D array) over its members, chunk by chunk."""
    sums = np.zeros((nlist, width), dtype=dtype)
    for a in range(0, n, _CHUNK_ROWS):
        b = min(n, a + _CHUNK_ROWS)
        part = assign[a:b]
        order = np.argsort(part, kind="stable")
        sorted_part = part[order]
        bounds = np.flatnonzero(np.r_[True, sorted_part[1:] != sorted_part[:-1], True])
        rows = rows_of(a, b)[order]
        # One sum per cluster present: np.add.reduceat over the rows (axis 0) ran 20x
        # slower than these slices.
        for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            sums[sorted_part[s]] += rows[s:e].sum(axis=0, dtype=dtype)
    return sums, np.bincount(assign, minlength=nlist)


def _refill_empty(counts, assign, rng):
    """For each empty cluster, ascending: (cluster, member) where member is a point of the
    largest cluster (ties by the smaller number), chosen by ``rng``, which becomes its
    centroid. Each donation halves the donor's count for the next choice, so that several
    empty clusters spread over the large ones."""
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return []
    order = np.argsort(assign, kind="stable")
    first = np.cumsum(counts) - counts
    left = np.where(counts > 0, counts, -1)
    out = []
    for e in empty.tolist():
        donor = int(np.argmax(left))
        out.append((e, int(order[first[donor] + rng.integers(counts[donor])])))
        left[donor] -= left[donor] // 2
    return out


def _train_codes(codes, nlist, niter, rng, threads):
    """k-majority: Hamming k-means whose centroid bits are the majority of their cluster's."""
    n = codes.shape[0]
    centroids = np.ascontiguousarray(codes[np.sort(rng.choice(n, nlist, replace=False))])
    nbits = codes.shape[1] * 8
    for _ in range(niter):
        assign = _nearest(_core.hamming_search, centroids, codes, 1, threads)[0][:, 0]
        ones, counts = _cluster_sums(
            lambda a, b: np.unpackbits(codes[a:b], axis=1), n, assign, nlist, nbits, np.int32
        )
        twice, size = 2 * ones, counts[:, None]
        bits = np.where(twice > size, 1, np.where(twice < size, 0, np.unpackbits(centroids, axis=1)))
        centroids = np.packbits(bits.astype(np.uint8), axis=1)
        for cluster, member in _refill_empty(counts, assign, rng):
            centroids[cluster] = codes[member]
    return _Routing("codes", centroids, float("nan"))


def _train_vectors(vectors, nlist, niter, rng, threads):
    """Spherical k-means: unit vectors, unit centroids, assignment by inner product."""
    x = unit_rows(vectors)
    n, dim = x.shape
    centroids = np.ascontiguousarray(x[np.sort(rng.choice(n, nlist, replace=False))])
    for _ in range(niter):
        assign = _nearest(_core.dot_search, centroids, x, 1, threads, _norm_bound(centroids))[0][:, 0]
        sums, counts = _cluster_sums(lambda a, b: x[a:b], n, assign, nlist, dim, np.float64)
        centroids = unit_rows(sums).astype(np.float32)
        for cluster, member in _refill_empty(counts, assign, rng):
            centroids[cluster] = x[member]
    return _Routing("vectors", centroids, _norm_bound(centroids))


def _rotation(dim, bits, rng):
    """A ``(dim, bits)`` float32 matrix with orthonormal rows: the first ``dim`` rows of a
    random orthogonal ``bits x bits`` matrix (QR of a Gaussian one, signs fixed so that
    it is Haar distributed). Codes wider than the vectors estimate inner products more
    precisely (the estimator's error falls as one over the root of the bits)."""
    q, r = np.linalg.qr(rng.standard_normal((bits, bits)))
    q *= np.sign(np.diag(r))
    return np.ascontiguousarray(q[:dim], dtype=np.float32)


def _centre_scale(routing, vectors, threads):
    """Each list's centre for the residuals, as a multiple of its unit centroid: the mean
    of its members' inner products with the centroid, which makes the residuals shortest
    along it (and the estimate the most precise). On 256-d cross-modal data the unit
    centroids lay far outside their lists (scales 0.35 to 0.52): residuals from them were
    longer than the vectors themselves. An empty list keeps 0 (the origin)."""
    assign = _route(routing, np.empty((vectors.shape[0], 0), np.uint8), vectors, "vectors", 1,
                    threads)[0][:, 0]
    nlist = routing.centroids.shape[0]
    along = np.einsum("ij,ij->i", vectors, routing.centroids[assign], dtype=np.float64)
    counts = np.bincount(assign, minlength=nlist)
    return (np.bincount(assign, weights=along, minlength=nlist) / np.maximum(counts, 1)).astype(np.float32)


def _screen_codes(routing, vectors, assign):
    """(1-bit codes, factors) of the asymmetric screen for ``vectors`` in the lists
    ``assign`` names: the signs of the rotated residual ``r`` from the list's centre and
    ``|r|^2 / sum |r_i|`` (0 for an item on its centre), chunk by chunk."""
    n, bits = vectors.shape[0], routing.rotation.shape[1]
    codes = np.empty((n, bits // 8), np.uint8)
    factors = np.empty(n, np.float32)
    for a in range(0, n, _CHUNK_ROWS):
        b = min(n, a + _CHUNK_ROWS)
        r = (vectors[a:b] - routing.centres(assign[a:b])) @ routing.rotation
        codes[a:b] = np.packbits(r > 0, axis=1)
        l1 = np.abs(r).sum(axis=1, dtype=np.float64)
        l2 = np.einsum("ij,ij->i", r, r, dtype=np.float64)
        factors[a:b] = np.divide(l2, l1, out=np.zeros_like(l1), where=l1 > 0)
    return codes, factors


def _norm_bound(rows):
    return float(np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64).max()))


# ---- the lists ----------------------------------------------------------------------------


def _append(lists, codes, assign, screened=()):
    """The snapshot after appending ``codes`` (and, for the asymmetric screen, the
    ``screened`` pair of their 1-bit codes and factors) to the lists ``assign`` names.

    A list that outgrows its room moves to the free tail with room for 1.5 times its new
    size (so each item is moved O(1) times on average); when the tail is too short, or
    the buffers are read-only (memory-mapped), every list is copied into new buffers
    with a quarter of their rows as free tail. The first add into an empty index
    allocates exactly its rows, as ``BinaryIndex`` does.
    """
    nlist = lists.size.shape[0]
    counts = np.bincount(assign, minlength=nlist).astype(np.int64)
    need = lists.size + counts
    grows = need > lists.cap
    cap = np.where(grows, np.where(lists.size == 0, need, np.maximum(need, lists.cap * 3 // 2)), lists.cap)
    start = lists.start.copy()
    moved = int(cap[grows].sum())
    old = lists.rows()
    if all(a.flags.writeable for a in old) and lists.used + moved <= lists.codes.shape[0]:
        bufs, used = old, lists.used
        src = _ranges(lists.start[grows], lists.size[grows])
        start[grows] = used + np.cumsum(cap[grows]) - cap[grows]
        dst = _ranges(start[grows], lists.size[grows])
        for buf in bufs:
            buf[dst] = buf[src]
        used += moved
    else:
        total = int(cap.sum())
        spare = total // 4 if lists.ntotal else 0
        bufs = [np.empty((total + spare, *a.shape[1:]), dtype=a.dtype) for a in old]
        src = _ranges(lists.start, lists.size)
        start = np.cumsum(cap) - cap
        dst = _ranges(start, lists.size)
        for buf, a in zip(bufs, old):
            buf[dst] = a[src]
        used = total
    # New items in id order within each list, after the list's current items.
    order = np.argsort(assign, kind="stable")
    sorted_lists = assign[order]
    first_of_list = np.cumsum(counts) - counts
    rank = np.arange(order.size) - first_of_list[sorted_lists]
    dst = start[sorted_lists] + lists.size[sorted_lists] + rank
    for buf, new in zip(bufs, (codes, lists.ntotal + np.arange(order.size), *screened)):
        buf[dst] = new[order]
    return _Lists(bufs[0], bufs[1], start, need, cap, used, lists.ntotal + codes.shape[0], *bufs[2:])


def _lists_from(sizes, ids, codes, *screened):
    start = np.cumsum(sizes) - sizes
    return _Lists(codes, ids, start, sizes, sizes.copy(), codes.shape[0], codes.shape[0], *screened)


# ---- persistence ------------------------------------------------------------------------
#
# File layout (little-endian), kind 3 of the container that cofisearch.load_index reads:
#   0  magic      8 bytes  b"COFISRCH"
#   8  version    u32      1, the container's version
#  12  kind       u32      3 = inverted-file binary index
#  16  nbits      u64
#  24  ntotal     u64
#  32  routing    u32      0 = untrained, 1 = codes, 2 = vectors
#  36  layout     u32      1, this layout's version
#  40  payload    u64      bytes after the 128-byte header
#  48  checksum   u32      CRC-32 of the header (this field as zero) and the payload
#  52  niter      u32
#  56  nlist      u64
#  64  dim        u64      0 unless routed by vectors
#  72  nprobe     u64
#  80  seed       u64
#  88  max_points_per_centroid  u64
#  96  screen     u32      0 = Hamming, 1 = asymmetric (layout 2 only; zero in layout 1)
# 100  reserved   u32      0
# 104  screen_bits u64     bits of the asymmetric codes, 0 if none (or not yet chosen)
# 112  zero padding up to 128.
# Then, each padded with zeros to a multiple of 64 bytes (so that a memory map of any of
# them is aligned), for a trained index: the centroids (nlist x code_size uint8, or
# nlist x dim float32), the list sizes (nlist int64), the ids (ntotal int64, list by
# list) and the codes (ntotal x code_size uint8, in the same order); for the asymmetric
# screen, then the rotation (dim x screen_bits float32), the lists' centre scales (nlist
# float32), its codes (ntotal x screen_bits / 8 uint8) and factors (ntotal float32), in
# the same order.
#
# Layout 1 (the Hamming-only index, which still writes it) is layout 2 with screen 0:
# files of either load.

_MAGIC = b"COFISRCH"
_CONTAINER_VERSION = 1
_KIND = 3
_LAYOUTS = (1, 2)
_HEAD = struct.Struct("<8sIIQQIIQIIQQQQQIIQ")
_HEADER_SIZE = 128
_CRC_OFFSET = 48
_ALIGN = 64


class _Settings(NamedTuple):
    nbits: int
    nlist: int
    nprobe: int
    seed: int
    niter: int
    max_points: int
    routing: int
    dim: int
    ntotal: int
    screen: int = 0
    screen_bits: int = 0


def _layout(s):
    return _LAYOUTS[s.screen]


def _header(s, payload, checksum=0):
    head = _HEAD.pack(
        _MAGIC, _CONTAINER_VERSION, _KIND, s.nbits, s.ntotal, s.routing, _layout(s), payload,
        checksum, s.niter, s.nlist, s.dim, s.nprobe, s.seed, s.max_points, s.screen, 0,
        s.screen_bits,
    )
    return head + b"\0" * (_HEADER_SIZE - len(head))


def _padded(nbytes):
    return -(-nbytes // _ALIGN) * _ALIGN


def _sections(s):
    """(dtype, shape) of each payload section of an index with settings ``s``."""
    if s.routing == 0:
        return []
    nbytes = s.nbits // 8
    cent = (np.dtype(np.uint8), (s.nlist, nbytes)) if s.routing == 1 else (
        np.dtype(np.float32), (s.nlist, s.dim))
    out = [cent, (np.dtype(np.int64), (s.nlist,)), (np.dtype(np.int64), (s.ntotal,)),
           (np.dtype(np.uint8), (s.ntotal, nbytes))]
    if s.screen:
        out += [(np.dtype(np.float32), (s.dim, s.screen_bits)), (np.dtype(np.float32), (s.nlist,)),
                (np.dtype(np.uint8), (s.ntotal, s.screen_bits // 8)), (np.dtype(np.float32), (s.ntotal,))]
    return out


def _payload_size(s):
    return sum(_padded(int(np.prod(shape)) * dtype.itemsize) for dtype, shape in _sections(s))


def _payload(arrays):
    """The payload's bytes in order, each array padded with zeros to the alignment."""
    for a in arrays:
        if a is None:
            continue
        flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        yield from byte_chunks(flat)
        yield b"\0" * (_padded(flat.size) - flat.size)


def _checksum(settings, arrays):
    crc = zlib.crc32(_header(settings, _payload_size(settings)))
    for chunk in _payload(arrays):
        crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def _save(path, settings, *arrays):
    header = _header(settings, _payload_size(settings), _checksum(settings, arrays))

    def write(f):
        f.write(header)
        for chunk in _payload(arrays):
            f.write(chunk)

    # Written beside the target, then renamed over it: a crash mid-save leaves the old file.
    atomic_write(path, write)


# Settings of the pickles that the Hamming-only index wrote (before the screen fields).
_OLD_SETTINGS = 9


def _restore(settings, centroids, sizes, ids, codes, checksum, rotation=None, scale=None,
             acodes=None, factors=None):
    """Rebuilds an index from a pickle, refusing what ``add`` or ``train`` could not have
    produced and parts whose CRC does not match."""
    if isinstance(settings, tuple) and len(settings) == _OLD_SETTINGS:
        settings += (0, 0)  # a Hamming index, pickled before the asymmetric screen
    problem = _settings_problem(settings)
    if problem is None:
        settings = _Settings(*settings)
        arrays = [centroids, sizes, ids, codes, rotation, scale, acodes, factors]
        problem = _parts_problem(settings, arrays)
    if problem:
        raise ValueError(f"cannot restore an IVFBinaryIndex: {problem}")
    arrays = [None if a is None else np.ascontiguousarray(a) for a in arrays]
    if type(checksum) is not int or checksum != _checksum(settings, arrays):
        raise ValueError("cannot restore an IVFBinaryIndex: checksum mismatch (corrupted pickle)")
    return _build(settings, *arrays)


def _build(s, centroids, sizes, ids, codes, rotation=None, scale=None, acodes=None, factors=None):
    index = IVFBinaryIndex(s.nbits, s.nlist, nprobe=s.nprobe, seed=s.seed, niter=s.niter,
                           max_points_per_centroid=s.max_points, screen=_SCREENS[s.screen],
                           screen_bits=s.screen_bits or None)
    if s.routing == 0:
        return index
    kind = _ROUTINGS[s.routing]
    bound = float("nan") if kind == "codes" else _norm_bound(centroids)
    screened = () if rotation is None else (acodes, factors)
    index._state = (_Routing(kind, centroids, bound, rotation, scale),
                    _lists_from(sizes, ids, codes, *screened))
    return index


def _settings_problem(settings):
    if not isinstance(settings, tuple) or len(settings) != len(_Settings._fields):
        return f"settings must be a tuple of {len(_Settings._fields)} ints"
    if any(type(v) is not int for v in settings):  # not bool, float or NumPy scalars
        return f"settings must be ints, got {settings!r}"
    s = _Settings(*settings)
    if s.nbits < 8 or s.nbits % 8 or s.nbits > MAX_NBITS:
        return f"nbits {s.nbits} is not a multiple of 8 in [8, {MAX_NBITS}]"
    if not 1 <= s.nlist <= MAX_ROWS or not 1 <= s.nprobe or not 0 <= s.seed < 2**63:
        return f"nlist {s.nlist}, nprobe {s.nprobe} or seed {s.seed} out of range"
    if not 1 <= s.niter < 2**31 or not 1 <= s.max_points <= MAX_ROWS:
        return f"niter {s.niter} or max_points_per_centroid {s.max_points} out of range"
    if s.routing not in (0, 1, 2) or (s.dim > 0) != (s.routing == 2) or s.dim < 0:
        return f"routing {s.routing} with dim {s.dim} is not a valid routing"
    if not 0 <= s.ntotal <= MAX_ROWS or (s.routing == 0 and s.ntotal):
        return f"ntotal {s.ntotal} does not fit routing {s.routing}"
    if s.dim > 2**31 or s.nlist * max(s.dim * 4, s.nbits // 8) > 2**40:
        return f"centroids of {s.nlist} x dim {s.dim} are too large"
    if s.screen not in (0, 1) or (s.screen == 0 and s.screen_bits):
        return f"screen {s.screen} with screen_bits {s.screen_bits} is not a valid screen"
    if s.screen_bits and (s.screen_bits % 64 or not 64 <= s.screen_bits <= _MAX_SCREEN_BITS):
        return f"screen_bits {s.screen_bits} is not a multiple of 64 in [64, {_MAX_SCREEN_BITS}]"
    if s.screen and s.routing and (s.routing != 2 or s.screen_bits < s.dim):
        return (f"an asymmetric screen needs a vector routing and screen_bits >= dim, got routing "
                f"{s.routing}, screen_bits {s.screen_bits}, dim {s.dim}")
    return None


def _parts_problem(s, arrays):
    """Why ``arrays`` (centroids, sizes, ids, codes, rotation, scale, screen codes,
    factors) cannot be an index with settings ``s``, or None: the layout, finite unit
    centroids, sizes adding up to ntotal, ids that are every id once, ascending within
    each list, and for the asymmetric screen a finite rotation and scale and finite
    factors >= 0."""
    if s.routing == 0:
        return None if all(a is None for a in arrays) else "an untrained index holds no arrays"
    sections = _sections(s)
    if any(a is not None for a in arrays[len(sections):]):
        return "an index without the asymmetric screen holds no rotation, scale, screen codes or factors"
    names = ("centroids", "sizes", "ids", "codes", "rotation", "scale", "screen codes", "factors")
    for a, (dtype, shape), name in zip(arrays, sections, names):
        if isinstance(a, np.ma.MaskedArray):
            return f"{name} must not be a masked array (its mask would be ignored)"
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            return f"{name} must be a {shape} array of {dtype}, got {got}"
    centroids, sizes, ids, _, rotation, scale, _, factors = arrays
    if s.screen and not all(np.isfinite(a).all() for a in (rotation, scale, factors)):
        return "the rotation, scale and factors must be finite"
    if s.screen and (factors < 0).any():
        return "the factors must be >= 0"
    if s.routing == 2:
        if not np.isfinite(centroids).all():
            return "centroids hold NaN or infinite values"
        norms = np.sqrt(np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64))
        if (np.abs(norms - 1) > 1e-4).any():
            return "centroids of a vector routing must have unit norm"
    if (sizes < 0).any() or int(sizes.sum()) != s.ntotal:
        return f"list sizes must be >= 0 and add up to ntotal {s.ntotal}"
    if s.ntotal:
        if int(ids.min()) < 0 or int(ids.max()) >= s.ntotal:
            return f"ids must lie in [0, {s.ntotal})"
        if (np.bincount(ids, minlength=s.ntotal) != 1).any():
            return "ids must hold every id exactly once"
        rising = np.diff(ids) > 0
        first = (np.cumsum(sizes) - sizes)[sizes > 0][1:]  # each list's first row but the first
        rising[first - 1] = True
        if not rising.all():
            return "ids must ascend within each list (insertion order)"
    return None


def load_ivf_index(path, *, mmap=False):
    """Loads a file written by :meth:`IVFBinaryIndex.save`; :func:`cofisearch.load_index`
    calls this for such files. ``mmap`` maps the ids and codes (and centroids) read-only;
    an add then copies the lists into memory first."""
    path = os.fspath(path)

    def bad(problem):
        return ValueError(f"{path!r} is not a valid cofisearch index: {problem}")

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"cannot read index file {path!r}: not a regular file")
        with open(path, "rb") as f:
            header = f.read(_HEADER_SIZE)
    except OSError as exc:
        raise ValueError(f"cannot read index file {path!r}: {exc.strerror or exc}") from exc
    if len(header) < _HEADER_SIZE:
        raise bad(f"file is {info.st_size} bytes, shorter than the {_HEADER_SIZE}-byte header")
    (magic, version, kind, nbits, ntotal, routing, layout, payload, stored_crc, niter, nlist,
     dim, nprobe, seed, max_points, screen, reserved, screen_bits) = _HEAD.unpack_from(header)
    if magic != _MAGIC or version != _CONTAINER_VERSION or kind != _KIND:
        raise bad(f"not an inverted-file index (magic {magic!r}, version {version}, kind {kind})")
    if layout not in _LAYOUTS:
        raise bad(f"inverted-file layout {layout} is not supported (this build reads {list(_LAYOUTS)})")
    if header[_HEAD.size :] != b"\0" * (_HEADER_SIZE - _HEAD.size):
        raise bad("corrupt header (padding is not zero)")
    settings = (nbits, nlist, nprobe, seed, niter, max_points, routing, dim, ntotal, screen, screen_bits)
    problem = _settings_problem(settings)
    if problem:
        raise bad(f"corrupt header ({problem})")
    s = _Settings(*settings)
    if reserved or layout != _layout(s):
        raise bad(f"corrupt header (layout {layout} with screen {screen}, reserved {reserved})")
    if payload != _payload_size(s):
        raise bad(f"corrupt header (payload {payload} bytes, the settings need {_payload_size(s)})")
    if info.st_size != _HEADER_SIZE + payload:
        raise bad(f"file is {info.st_size} bytes, expected {_HEADER_SIZE + payload} (truncated or padded)")
    arrays, offset, padding_ok = [], _HEADER_SIZE, True
    try:
        with open(path, "rb") as f:
            for dtype, shape in _sections(s):
                count = int(np.prod(shape))
                used = count * dtype.itemsize
                if mmap and count:
                    a = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
                else:
                    a = np.empty(shape, dtype=dtype)
                    f.seek(offset)
                    if f.readinto(a.reshape(-1).view(np.uint8)) != a.nbytes:
                        raise bad("payload ended early")
                arrays.append(a)
                # The padding after a section is part of the checksum: read it too.
                pad = _padded(used) - used
                if pad:
                    f.seek(offset + used)
                    padding_ok &= f.read(pad) == b"\0" * pad
                offset += _padded(used)
    except OSError as exc:
        raise ValueError(f"cannot read index file {path!r}: {exc.strerror or exc}") from exc
    if not padding_ok or _checksum(s, arrays) != stored_crc:
        raise bad("checksum mismatch: the file is corrupted")
    arrays += [None] * (8 - len(arrays))
    problem = _parts_problem(s, arrays)
    if problem:
        raise bad(problem)
    return _build(s, *arrays)


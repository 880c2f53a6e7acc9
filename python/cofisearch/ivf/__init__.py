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
at ``search``, the rotated query (``Pq``, by the float search's arithmetic, so the same
bits alone and in any batch) quantised to 4 bits per dimension, and
``<v, q> ~ <centre, q> + factor * <2x - 1, Pq>``, the last inner product taken with
popcounts over the query's bit planes (cpp/asym.h); routing, rotation, quantisation and
scan are one call into the engine. The items' Hamming codes stay, so
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
import threading
from typing import NamedTuple

import numpy as np

from .. import _core
from .._bits import code_panel
from .._checks import (
    check_codes,
    check_floats,
    check_ids,
    check_int,
    check_k,
    check_nbits,
    check_num_threads,
    check_positive_int,
    check_result_size,
)
from .._index import MAX_NBITS, SearchResult
from .._reference import unit_rows
from .._rows import MAX_ROWS
from ._file import (
    MAX_SCREEN_BITS,
    _checksum,
    _restore,
    _save,
    _Settings,
    load_ivf_index,
)
from ._lists import (
    _append,
    _empty_lists,
    _filtered,
    _lists_from,
    _new_ids,
    _ranges,
    _sequential,
    _without,
)

__all__ = ["IVFBinaryIndex", "load_ivf_index"]

_ROUTINGS = (None, "codes", "vectors")
_SCREENS = ("hamming", "asymmetric")
# Bits per dimension of a query in the asymmetric screen: 4 lost nothing measurable
# against float queries on cross-modal data (recall@10 within 0.005 at every depth), as
# RaBitQ's authors found.
_QUERY_BITS = 4


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
    #: The float centroids packed by ``_core.dot_pack`` (None for codes), for the routing.
    panel: np.ndarray | None = None
    #: The rotation's columns packed by ``_core.dot_pack``: queries are rotated by the
    #: float search's arithmetic, the same bits alone and in any batch.
    rotation_panel: np.ndarray | None = None

    def centres(self, lists):
        """The asymmetric screen's centres of ``lists``, float32."""
        return (self.scale[lists, None] * self.centroids[lists]).astype(np.float32)





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

    An index routed by vectors also keeps its centroids, and an asymmetric screen its
    rotation, packed for the float kernels (as many bytes again as those matrices: 1.5 MB
    for 1,024 lists of 256-d centroids and a 512-bit screen), built at train and load.

    Ids are the caller's (``add(..., ids=...)``) or, without them, sequential as in
    ``BinaryIndex``; :meth:`remove` takes items out and ``search(..., allowed=...)``
    restricts a search to some ids. With ``nprobe >= nlist`` a Hamming search returns
    exactly what ``BinaryIndex`` returns on the same codes and ids.
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
            screen_bits = check_int(screen_bits, "screen_bits", minimum=64, maximum=MAX_SCREEN_BITS)
            if screen_bits % 64:
                raise ValueError(f"screen_bits must be a multiple of 64, got {screen_bits}")
        self._screen_bits = screen_bits
        self._lock = threading.Lock()
        # (lists, panel, panel_start) of the asymmetric screen's codes for the lists
        # snapshot they were built from (see search); replaced in one assignment.
        self._panel = None
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

    @property
    def ids(self):
        """The ids of the items, int64, list by list (a copy)."""
        lists = self._state[1]
        return lists.ids[lists.list_rows()]

    def _next_id(self):
        """The id the next add without ids gives its first item."""
        return self._state[1].next_id

    def list_ids(self, list_no):
        """Ids of the items of list ``list_no`` in the order they were added, read-only (no
        copy)."""
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
            if v.shape[1] > MAX_SCREEN_BITS // 2 and self._screen_bits is None:
                raise ValueError(
                    f"vectors of dim {v.shape[1]} need an explicit screen_bits (at most "
                    f"{MAX_SCREEN_BITS}): the default is twice the dimension"
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
                rotation = _rotation(v.shape[1], bits, rng)
                scale = _centre_scale(routing, v if sample is None else v[sample], threads)
                routing = _with_screen(routing, rotation, scale)
            # An index emptied by removals keeps its next id: a removed id is not reused.
            fresh = _empty_lists(self._nlist, self.code_size, bits)
            self._state = (routing, fresh._replace(next_id=self._state[1].next_id))
            self._panel = None  # the old snapshot's buffers need not outlive it

    def add(self, codes, vectors=None, *, ids=None, num_threads=None):
        """Appends codes as the items ``ids`` (int64, unique, non-negative, none present
        already) or, without ``ids``, as the next sequential ids (above every id added
        before); ``vectors`` (one per code) is required when the index was trained on
        vectors, and refused otherwise. Nothing is added when anything is refused."""
        c = check_codes(codes, "codes", self.code_size, one_d_ok=True)
        threads = check_num_threads(num_threads)
        with self._lock:
            routing, lists = self._state
            if routing is None:
                raise ValueError("the index is not trained: call train before add")
            m = c.shape[0]
            if lists.ntotal + m > MAX_ROWS:
                raise ValueError(
                    f"an index holds at most {MAX_ROWS} rows, adding would give {lists.ntotal + m}"
                )
            new = _sequential(lists.next_id, m) if ids is None else _new_ids(ids, m, lists)
            assign = _route(routing, c, vectors, "vectors", 1, threads)[0][:, 0]
            screened = ()
            if routing.rotation is not None:
                screened = _screen_codes(routing, check_floats(vectors, "vectors", None, one_d_ok=True),
                                         assign)
            self._state = (routing, _append(lists, c, assign, new, screened))
            self._panel = None  # the old snapshot's buffers need not outlive it

    def remove(self, ids):
        """Removes the items with these ids; returns how many were present (absent ids are
        ignored). The lists that held them are rewritten without them (into the buffers'
        free room, or all lists into new buffers when it is short); searches in progress
        keep reading the lists as they were."""
        wanted = check_ids(ids, "ids")
        with self._lock:
            routing, lists = self._state
            if lists.ntotal == 0 or wanted.size == 0:
                return 0
            rows = lists.list_rows()
            hit = np.isin(lists.ids[rows], wanted)
            count = int(np.count_nonzero(hit))
            if count:
                self._state = (routing, _without(lists, rows, hit))
                self._panel = None  # the old snapshot's buffers need not outlive it
            return count

    def compact(self):
        """Copies the lists into new buffers without the room that removals and moved
        lists left behind (searches in progress keep reading the old ones)."""
        with self._lock:
            routing, lists = self._state
            codes, ids, *screened = (a[lists.list_rows()] for a in lists.rows())
            self._state = (routing, _lists_from(lists.size.copy(), ids, codes, *screened,
                                                next_id=lists.next_id))
            self._panel = None

    # ---- searching -----------------------------------------------------------------

    def probe(self, queries, nprobe=None, *, vectors=None, num_threads=None):
        """The lists each query scans: an int64 ``(nq, min(nprobe, nlist))`` array of
        list numbers, nearest first (ties by the smaller list number)."""
        q = check_codes(queries, "queries", self.code_size, one_d_ok=True)
        nprobe = self._nprobe if nprobe is None else check_positive_int(nprobe, "nprobe")
        threads = check_num_threads(num_threads)
        routing = self._trained_routing()
        return _route(routing, q, vectors, "vectors", min(nprobe, self._nlist), threads)[0]

    def search(self, queries, k, *, nprobe=None, vectors=None, allowed=None, num_threads=None,
               screen=None):
        """Top-``k`` among the items of the ``nprobe`` lists nearest to each query; a 1-D
        query is a batch of one. ``vectors`` routes the queries when the index was
        trained on vectors (required then, refused otherwise).

        ``allowed``, a 1-D array of ids, restricts the results to those items of the probed
        lists: checked on the scan's hit path for a few queries, or, for a batch, by
        probing lists of the allowed items alone (a copy); a filter of a few thousand items
        (at most ``GATHER_ROWS``, or 1/64 of the index) is instead ranked over all of its
        items whatever their lists, so that a selective filter still fills ``k``
        results (for the Hamming screen, exactly ``BinaryIndex``'s answer).

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
        allow = None
        if allowed is not None:
            lists, allow, everywhere = _filtered(lists, check_ids(allowed, "allowed"), q.shape[0])
            if everywhere:
                nprobe = self._nlist  # a few items: rank them all, wherever they are
        if routing.kind == "vectors":
            # Checked once: a single query's search is mostly such fixed costs.
            vectors = _check_vectors(vectors, "vectors", routing.centroids.shape[1], q.shape[0]) \
                if vectors is not None else None
        nprobe = min(nprobe, self._nlist)
        check_result_size(q.shape[0], k, max(lists.ntotal, 1))
        if screen == "hamming":
            probes = _route(routing, q, vectors, "vectors", nprobe, threads, checked=True)[0]
            d, i = _core.ivf_search(lists.codes, lists.ids, lists.start, lists.size, q, probes, k,
                                    threads, allow)
            return SearchResult(d, i)
        _require_vectors(vectors, "vectors")
        stored = {}
        if allow is None and lists is self._state[1]:
            cached = self._panel
            if cached is None or cached[0] is not lists:
                # Built on the first asymmetric search of each snapshot (it doubles the
                # screen's codes in memory): packing every probed block for one query cost
                # more than scoring it (0.21 against 0.15 of a single query's time at 200k
                # items, 1024 lists, 64 probed).
                cached = self._panel = (lists, *code_panel(lists.acodes[lists.list_rows()],
                                                           lists.size))
            stored = {"panel": cached[1], "panel_start": cached[2]}
        # Routed, rotated, quantised and scanned in one call: apart, those steps' calls
        # were a fifth of a single query's time (60k items, 491 lists, 128 probed).
        d, i = _core.ivf_asym_query(lists.acodes, lists.factors, lists.ids, lists.start, lists.size,
                                    routing.centroids, routing.panel, routing.norm_bound,
                                    routing.scale, routing.rotation_panel, vectors, _QUERY_BITS,
                                    nprobe, k, threads, allow, **stored)
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
            lists.ntotal, _SCREENS.index(self._screen), self.screen_bits or 0, lists.next_id,
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


def _route(routing, codes, vectors, name, nprobe, threads, checked=False):
    """The ``nprobe`` lists nearest to each item or query (``(n, nprobe)`` int64) and
    their Hamming distances or inner products with it (``checked``: ``vectors`` already
    passed _check_vectors)."""
    if routing.kind == "codes":
        if vectors is not None:
            raise ValueError(
                f"{name} must not be given: this index was trained on codes and routes by "
                "them; train on vectors to route by vectors"
            )
        return _nearest(_core.hamming_search, routing.centroids, codes, nprobe, threads)
    _require_vectors(vectors, name)
    v = vectors if checked else _check_vectors(vectors, name, routing.centroids.shape[1], codes.shape[0])
    d, i = _core.dot_route(routing.centroids, routing.panel, routing.norm_bound, v, nprobe, threads)
    return i, d


def _require_vectors(vectors, name):
    if vectors is None:
        raise ValueError(
            f"{name} is required: this index was trained on vectors and routes each code by "
            "its vector"
        )


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
    return _vector_routing(centroids)


def _vector_routing(centroids, rotation=None, scale=None):
    routing = _Routing("vectors", centroids, _norm_bound(centroids), panel=_core.dot_pack(centroids))
    return routing if rotation is None else _with_screen(routing, rotation, scale)


def _with_screen(routing, rotation, scale):
    """``routing`` with the asymmetric screen's rotation (and its packed columns) and
    centre scales."""
    return routing._replace(rotation=rotation, scale=scale,
                            rotation_panel=_core.dot_pack(np.ascontiguousarray(rotation.T)))


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

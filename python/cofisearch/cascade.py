"""The coarse-to-fine cascade proposed by the FiCo-ITR study, built and timed.

Stage 1 screens the database with cheap Hamming distances on binary codes (all of it, or
with an :class:`~cofisearch.IVFBinaryIndex` only the inverted lists each query probes; an
IVF index built with ``screen="asymmetric"`` ranks by inner products of the float query
with the items' 1-bit codes instead, which holds recall on cross-modal data) and keeps
``n_candidates`` per query; stage 2 rescores only those candidates exactly with the float
embeddings (O(nq * n_candidates * dim), whatever the database size); an optional stage 3
hands the best ``n_rerank`` of them to a heavier reranker, such as a cross-attention model,
whose cost is then bounded by ``n_rerank`` instead of the database size.

The stages are written once here and shared with the sharded cascade
(:mod:`cofisearch.distributed`), which runs stages 1 and 2 on its shards. The names below
without a leading underscore and outside ``__all__`` are that package-internal API:
:func:`check_stages`, :func:`count_queries`, :func:`fine_depth`, :class:`FirstStages`,
:func:`run_first_stages` and :func:`run_last_stage`.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import NamedTuple

import numpy as np

from ._checks import (
    as_numpy,
    check_codes,
    check_floats,
    check_ids,
    check_k,
    check_num_threads,
    check_positive_int,
)
from ._index import BinaryIndex, FloatIndex, SearchResult
from ._reference import merge_topk
from .ivf import IVFBinaryIndex

__all__ = ["Cascade", "CascadeResult", "feature_reranker"]


class CascadeResult(SearchResult):
    """A cascade's top-k results and what the stages measured on the way.

    It is a :class:`SearchResult`, the two-item tuple ``(distances, ids)``, so it unpacks,
    indexes and iterates like any search result (``scores, ids = cascade.search(...)``,
    ``len(result) == 2``). Two more fields ride along outside the tuple, read-only like
    the others:

    timings: seconds spent per stage, keys ``"coarse"``, ``"fine"``, ``"rerank"`` (0 when
        there is no reranker) and ``"total"``.
    candidates: the stage-1 ids, ``(nq, n_candidates)``, ``-1`` where the database was
        smaller, for measuring how often the screen kept the right answer.

    The constructor, ``repr``, ``==`` (arrays compared by value), ``_asdict``,
    ``_replace``, ``_make`` (four values), pickling and :mod:`copy` all carry the four
    fields; ``_fields`` stays ``("distances", "ids")``, the tuple's items.
    """

    def __new__(cls, distances, ids, timings, candidates):
        return _new_result(cls, distances, ids, timings, candidates)

    @property
    def timings(self):
        return self._timings

    @property
    def candidates(self):
        return self._candidates

    @classmethod
    def _make(cls, iterable):
        return cls(*iterable)

    def _asdict(self):
        return {
            "distances": self.distances,
            "ids": self.ids,
            "timings": self._timings,
            "candidates": self._candidates,
        }

    def _replace(self, **changes):
        fields = self._asdict()
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"CascadeResult has no fields {unknown}; it has {list(fields)}")
        fields.update(changes)
        return type(self)(**fields)

    def __reduce__(self):
        return (type(self), tuple(self._asdict().values()))

    def __repr__(self):
        shown = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items())
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other):
        if not isinstance(other, CascadeResult):
            return NotImplemented
        return (
            np.array_equal(self.distances, other.distances)
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self._candidates, other._candidates)
            and self._timings == other._timings
        )

    # tuple defines its own !=, which would compare the arrays element by element.
    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None


def _new_result(cls, distances, ids, timings, candidates):
    # A tuple subclass cannot add slots, so the extras live in the instance dict behind
    # read-only properties, and the tuple itself stays the two result arrays. The cascade
    # calls this directly rather than the class: calling a class whose __new__ is written
    # in Python costs a third of a microsecond more, per search.
    self = tuple.__new__(cls, (distances, ids))
    self._timings = timings
    self._candidates = candidates
    return self


class Cascade:
    """Hamming screen, exact float rerank, optional heavier rerank.

    Parameters
    ----------
    coarse:
        A :class:`BinaryIndex` over the database items, or an :class:`IVFBinaryIndex`
        (a sub-linear screen of the lists each query probes, at the index's ``nprobe``).
        An IVF index trained on vectors routes each query by its ``query_vectors`` row,
        and :meth:`add` routes the items by their vectors; it must then have the fine
        index's dimension. One built with ``screen="asymmetric"`` also screens by the
        query vectors (estimated inner products). The ``"coarse"`` timing includes the
        probe.
    fine:
        A :class:`FloatIndex` over the same items: the same ids in both (checked here), id
        ``i`` the same item in both.
    n_candidates:
        Stage-1 depth: how many Hamming nearest neighbours each query keeps.
    reranker:
        Optional stage 3, a callable ``reranker(rerank_queries, candidate_ids) -> scores``
        taking the ``rerank_queries`` given to :meth:`search` (the query vectors by
        default) and an int64 ``(nq, n_rerank)`` array of database ids (``-1`` as padding),
        returning float scores of the same shape, higher is better. See
        :func:`feature_reranker` to wrap a model that scores feature pairs.
    n_rerank:
        Stage-3 depth: how many of the stage-2 results the reranker scores (default:
        ``n_candidates``).

    Thread safety: :meth:`search`, :meth:`add`, :meth:`remove` and :meth:`compact` may be
    called from any number of threads at once. :meth:`add` grows both indexes together
    (the fine one first) and :meth:`remove` shrinks them together (the coarse one first),
    so a concurrent search never screens an item that its rerank cannot score; changing
    ``coarse`` or ``fine`` directly while searches run is not covered by that promise.
    """

    def __init__(self, coarse, fine, n_candidates=100, reranker=None, n_rerank=None):
        if not isinstance(coarse, (BinaryIndex, IVFBinaryIndex)):
            raise TypeError(
                f"coarse must be a BinaryIndex or an IVFBinaryIndex, got {type(coarse).__name__}"
            )
        if not isinstance(fine, FloatIndex):
            raise TypeError(f"fine must be a FloatIndex, got {type(fine).__name__}")
        _check_routing_dim(coarse, fine)
        _check_same_items(coarse, fine)
        self.coarse = coarse
        self.fine = fine
        self.n_candidates, self.n_rerank = check_stages(n_candidates, reranker, n_rerank)
        self.reranker = reranker
        self._adding = threading.Lock()

    def __repr__(self):
        return (
            f"Cascade(coarse={self.coarse!r}, fine={self.fine!r}, n_candidates={self.n_candidates}, "
            f"reranker={self.reranker!r}, n_rerank={self.n_rerank})"
        )

    def __reduce__(self):
        # The lock is per process; a copy gets its own. The indexes' pickles carry their
        # own CRCs; the stage depths carry one here, so that a corrupted pickle cannot
        # restore a cascade of other depths. Both stages are reduced between two adds:
        # pickled one after the other, they could differ by the items of an add.
        n_rerank = self.n_rerank if self.reranker is not None else None
        with self._adding:
            coarse, fine = self.coarse.__reduce__(), self.fine.__reduce__()
        return (
            _restore_cascade,
            (coarse, fine, self.n_candidates, self.reranker, n_rerank,
             _depths_checksum(self.n_candidates, n_rerank)),
        )

    def add(self, codes, vectors, *, ids=None):
        """Adds items to both stages: ``codes[i]`` and ``vectors[i]`` describe one item,
        which gets the same id in ``coarse`` and ``fine``: ``ids[i]`` (int64, unique,
        non-negative, not present) or, without ``ids``, the next sequential id. Everything
        is checked before either index changes."""
        n = count_queries(codes, vectors)
        codes = check_codes(codes, "codes", self.coarse.code_size, one_d_ok=True)
        vectors = check_floats(vectors, "vectors", self.fine.dim, one_d_ok=True)
        if ids is not None:
            ids = check_ids(ids, "ids", count=n)
        with self._adding:
            if self.coarse.ntotal != self.fine.ntotal:
                raise ValueError(
                    f"coarse and fine must index the same items before adding {n}: coarse "
                    f"holds {self.coarse.ntotal}, fine holds {self.fine.ntotal}"
                )
            routed = _routed_by_vectors(self.coarse)
            if isinstance(self.coarse, IVFBinaryIndex):
                # What the IVF add could refuse, refused before fine changes.
                if not self.coarse.is_trained:
                    raise ValueError("coarse is an untrained IVFBinaryIndex: train it before adding")
                _check_routing_dim(self.coarse, self.fine)
            if ids is None:
                # Spelled out, so that both stages give the same ids whatever their pasts.
                first = max(self.fine._next_id(), self.coarse._next_id())
                ids = np.arange(first, first + n, dtype=np.int64)
            # Fine first (it refuses bad ids before anything changes): a search that sees
            # the new codes also sees their vectors.
            self.fine.add(vectors, ids=ids)
            if routed:
                self.coarse.add(codes, vectors, ids=ids)
            else:
                self.coarse.add(codes, ids=ids)

    def remove(self, ids):
        """Removes the items with these ids from both stages; returns how many were
        present (absent ids are ignored)."""
        ids = check_ids(ids, "ids")
        with self._adding:
            # Coarse first: a search never screens an item whose vector is gone.
            screened = self.coarse.remove(ids)
            scored = self.fine.remove(ids)
        if screened != scored:
            raise ValueError(
                f"coarse and fine held different items: removed {screened} from coarse and "
                f"{scored} from fine"
            )
        return scored

    def compact(self):
        """Reclaims the rows of removed items (see ``FloatIndex.compact``)."""
        with self._adding:
            self.fine.compact()
            self.coarse.compact()

    def search(self, query_codes, query_vectors, k, *, allowed=None, rerank_queries=None,
               num_threads=None):
        """Top-``k`` per query through the stages; query ``i`` is ``query_codes[i]`` for the
        screen and ``query_vectors[i]`` for the rerank. ``allowed``, a 1-D array of ids,
        restricts every stage to those items (the screen filters in its scan, see
        ``BinaryIndex.search`` / ``IVFBinaryIndex.search``). Returns a
        :class:`CascadeResult` holding float scores of the last stage that ran."""
        k = check_k(k)
        threads = check_num_threads(num_threads)
        with self._adding:  # both counts between adds, not in the middle of one
            n_coarse, n_fine = self.coarse.ntotal, self.fine.ntotal
        if n_coarse != n_fine:
            raise ValueError(
                f"coarse and fine must index the same items: coarse holds {n_coarse}, "
                f"fine holds {n_fine}"
            )
        count_queries(query_codes, query_vectors)
        started = time.perf_counter()
        first = run_first_stages(
            self.coarse, self.fine, query_codes, query_vectors,
            n_candidates=self.n_candidates,
            depth=fine_depth(k, reranker=self.reranker, n_rerank=self.n_rerank),
            num_threads=threads, allowed=allowed,
        )
        return run_last_stage(
            first, k=k, reranker=self.reranker, n_rerank=self.n_rerank,
            query_vectors=query_vectors, rerank_queries=rerank_queries, started=started,
        )


def _routed_by_vectors(coarse):
    return isinstance(coarse, IVFBinaryIndex) and coarse.routing == "vectors"


def _check_routing_dim(coarse, fine):
    if _routed_by_vectors(coarse) and coarse.dim != fine.dim:
        raise ValueError(
            f"coarse routes by vectors of dim {coarse.dim}, but fine holds vectors of dim "
            f"{fine.dim}: the cascade routes each query by its fine query vector"
        )


def _check_same_items(coarse, fine):
    if coarse.ntotal != fine.ntotal:
        raise ValueError(
            f"coarse and fine must index the same items: coarse holds {coarse.ntotal}, fine "
            f"holds {fine.ntotal}"
        )
    if coarse.ntotal and not np.array_equal(np.sort(coarse.ids), np.sort(fine.ids)):
        raise ValueError("coarse and fine must index the same items under the same ids")


def _depths_checksum(n_candidates, n_rerank):
    return zlib.crc32(repr((n_candidates, n_rerank)).encode())


def _restore_cascade(coarse, fine, n_candidates, reranker, n_rerank, checksum):
    if checksum != _depths_checksum(n_candidates, n_rerank):
        raise ValueError("cannot restore a Cascade: checksum mismatch (corrupted pickle)")
    # Each stage as its index's own reduction (restorer, arguments), or, in pickles
    # written before, as the index itself.
    coarse, fine = _rebuilt(coarse, "coarse"), _rebuilt(fine, "fine")
    return Cascade(coarse, fine, n_candidates, reranker, n_rerank)


def _rebuilt(stage, name):
    if not isinstance(stage, tuple):
        return stage
    if len(stage) != 2 or stage[0] not in _RESTORERS or not isinstance(stage[1], tuple):
        raise ValueError(f"cannot restore a Cascade: {name} is not an index's reduction")
    return stage[0](*stage[1])


# The functions the indexes' reductions name, read from empty indexes' reductions.
_RESTORERS = tuple({type(index).__reduce__(index)[0] for index in (BinaryIndex(8), IVFBinaryIndex(8, 1))})


# ---- the stages, shared with cofisearch.distributed -----------------------------------


def check_stages(n_candidates, reranker, n_rerank):
    """Validated ``(n_candidates, n_rerank)`` of a cascade; ``n_rerank`` defaults to
    ``n_candidates`` and is only accepted with a ``reranker``."""
    if reranker is not None and not callable(reranker):
        raise TypeError(f"reranker must be callable, got {type(reranker).__name__}")
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    if n_rerank is None:
        return n_candidates, n_candidates
    n_rerank = check_positive_int(n_rerank, "n_rerank")
    if reranker is None and n_rerank != n_candidates:
        raise ValueError("n_rerank only applies with a reranker; got a value but no reranker")
    return n_candidates, n_rerank


def count_queries(query_codes, query_vectors):
    """The number of queries, checking that the codes and the vectors hold as many (one
    query may be given as a 1-D row). Their dtypes and widths are the indexes' to check."""
    n_codes = _rows(query_codes, "query_codes")
    n_vectors = _rows(query_vectors, "query_vectors")
    if n_codes != n_vectors:
        raise ValueError(
            f"query_codes and query_vectors must hold the same queries: got {n_codes} "
            f"and {n_vectors} rows"
        )
    return n_codes


def _rows(x, name):
    a = as_numpy(x, name)
    if a.ndim == 1:
        return 1
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got shape {a.shape}")
    return a.shape[0]


def fine_depth(k, *, reranker, n_rerank):
    """How many results stage 2 keeps per query: ``k``, or enough to feed the reranker
    its ``n_rerank``."""
    return max(k, n_rerank) if reranker is not None else k


class FirstStages(NamedTuple):
    """What stages 1 and 2 produced for a batch of queries, before any reranker."""

    #: ``(nq, n_candidates)`` int32 Hamming distances of the candidates, ascending (or, for
    #: an asymmetric screen, float32 estimated inner products, descending).
    screened: np.ndarray
    #: ``(nq, n_candidates)`` int64 ids kept by the screen, ``-1`` as padding.
    candidates: np.ndarray
    #: ``(nq, depth)`` float32 scores of the candidates, descending.
    scores: np.ndarray
    #: ``(nq, depth)`` int64 ids of those scores, ``-1`` as padding.
    ids: np.ndarray
    coarse_seconds: float
    fine_seconds: float


def run_first_stages(coarse, fine, query_codes, query_vectors, *, n_candidates, depth,
                     num_threads, allowed=None):
    """Stage 1 then stage 2, each timed; ``allowed`` (ids, or None) filters stage 1, and
    so stage 2, which scores only its candidates.

    ``coarse`` and ``fine`` are a :class:`BinaryIndex` (or an :class:`IVFBinaryIndex`,
    routed by ``query_vectors`` when it was trained on vectors) and a :class:`FloatIndex`
    of the same items, or stand-ins with the same ``search`` signature and answers (best
    first, ties by the smaller id, ``-1`` as padding), such as the sharded cascade's
    screen merged over every shard.
    """
    t0 = time.perf_counter()
    # Passed only when given: stand-ins for the screen need not know the keyword.
    filtered = {} if allowed is None else {"allowed": allowed}
    if _routed_by_vectors(coarse):
        screened, candidates = coarse.search(
            query_codes, n_candidates, vectors=query_vectors, num_threads=num_threads, **filtered
        )
    else:
        screened, candidates = coarse.search(query_codes, n_candidates, num_threads=num_threads,
                                             **filtered)
    t1 = time.perf_counter()
    scores, ids = fine.search(query_vectors, depth, candidates=candidates, num_threads=num_threads)
    t2 = time.perf_counter()
    # tuple.__new__ directly: the NamedTuple's own __new__ is a Python call per search.
    return tuple.__new__(FirstStages, (screened, candidates, scores, ids, t1 - t0, t2 - t1))


def run_last_stage(first, *, k, reranker, n_rerank, query_vectors, rerank_queries, started):
    """Stage 3 when there is a ``reranker`` (scoring the best ``n_rerank`` of stage 2 with
    ``rerank_queries``, by default ``query_vectors``), then the :class:`CascadeResult`:
    the top ``k`` of the last stage that ran, the timings of every stage (``"total"``
    counted from ``started``, a ``time.perf_counter()`` reading) and the candidates."""
    _, candidates, scores, ids, coarse_seconds, fine_seconds = first
    t2 = time.perf_counter()
    if reranker is not None:
        queries = query_vectors if rerank_queries is None else rerank_queries
        scores, ids = _rerank(reranker, queries, ids[:, :n_rerank], k)
    t3 = time.perf_counter()
    timings = {
        "coarse": coarse_seconds,
        "fine": fine_seconds,
        "rerank": t3 - t2,
        "total": t3 - started,
    }
    return _new_result(CascadeResult, scores[:, :k], ids[:, :k], timings, candidates)


def _rerank(reranker, queries, candidate_ids, k):
    raw = reranker(queries, candidate_ids)
    scores = np.asarray(as_numpy(raw, "reranker output"), dtype=np.float64)
    if scores.shape != candidate_ids.shape:
        raise ValueError(
            f"reranker must return scores of shape {candidate_ids.shape}, got {scores.shape}"
        )
    if np.isnan(scores[candidate_ids >= 0]).any():
        # NaN has no place in an order: it would rank arbitrarily, silently.
        raise ValueError("reranker must return real scores for every candidate, got NaN")
    # Ordered as every other stage orders: ties by the smaller id, padding last.
    out_scores, out_ids = merge_topk([(scores, candidate_ids)], k, largest=True)
    return out_scores.astype(np.float32), out_ids


def feature_reranker(scorer, candidate_features):
    """Adapts a pairwise model to the cascade's reranker contract.

    ``scorer(query_features, candidate_features)`` takes ``(nq, dq)`` query features and
    ``(nq, c, dc)`` candidate features and returns ``(nq, c)`` scores (for example
    :class:`cofisearch.encoders.CrossAttentionReranker`); ``candidate_features`` is the
    ``(n, dc)`` feature array of the database items, in index order. Padding ids (-1)
    are scored on a dummy row and then ignored by the cascade.
    """
    feats = as_numpy(candidate_features, "candidate_features")
    if feats.ndim != 2:
        raise ValueError(f"candidate_features must be 2-D (n, dim), got shape {feats.shape}")

    def rerank(queries, candidate_ids):
        gathered = feats[np.maximum(candidate_ids, 0)]
        return scorer(queries, gathered)

    return rerank

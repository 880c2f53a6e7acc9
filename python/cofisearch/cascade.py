"""The coarse-to-fine cascade proposed by the FiCo-ITR study, built and timed.

Stage 1 screens the whole database with cheap Hamming distances on binary codes and keeps
``n_candidates`` per query; stage 2 rescores only those candidates exactly with the float
embeddings (O(nq * n_candidates * dim), whatever the database size); an optional stage 3
hands the best ``n_rerank`` of them to a heavier reranker, such as a cross-attention model,
whose cost is then bounded by ``n_rerank`` instead of the database size.
"""

from __future__ import annotations

import time

import numpy as np

from ._checks import as_numpy, check_k, check_num_threads, check_positive_int
from ._index import SCORE_SENTINEL, BinaryIndex, FloatIndex, SearchResult

__all__ = ["Cascade", "CascadeResult", "feature_reranker"]


class CascadeResult(SearchResult):
    """A :class:`SearchResult` (unpacks as ``(distances, ids)``) with two extras:

    timings: seconds spent per stage, keys ``"coarse"``, ``"fine"``, ``"rerank"`` (0 when
        there is no reranker) and ``"total"``.
    candidates: the stage-1 ids, ``(nq, n_candidates)``, ``-1`` where the database was
        smaller, for measuring how often the screen kept the right answer.
    """


class Cascade:
    """Hamming screen, exact float rerank, optional heavier rerank.

    Parameters
    ----------
    coarse:
        A :class:`BinaryIndex` over the database items.
    fine:
        A :class:`FloatIndex` over the same items in the same order (id ``i`` is the same
        item in both).
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
    """

    def __init__(self, coarse, fine, n_candidates=100, reranker=None, n_rerank=None):
        if not isinstance(coarse, BinaryIndex):
            raise TypeError(f"coarse must be a BinaryIndex, got {type(coarse).__name__}")
        if not isinstance(fine, FloatIndex):
            raise TypeError(f"fine must be a FloatIndex, got {type(fine).__name__}")
        self.coarse = coarse
        self.fine = fine
        self.n_candidates, self.n_rerank = _check_stages(n_candidates, reranker, n_rerank)
        self.reranker = reranker

    def __repr__(self):
        return (
            f"Cascade(coarse={self.coarse!r}, fine={self.fine!r}, n_candidates={self.n_candidates}, "
            f"reranker={self.reranker!r}, n_rerank={self.n_rerank})"
        )

    def search(self, query_codes, query_vectors, k, *, rerank_queries=None, num_threads=None):
        """Top-``k`` per query through the stages; query ``i`` is ``query_codes[i]`` for the
        screen and ``query_vectors[i]`` for the rerank. Returns a :class:`CascadeResult`
        holding float scores of the last stage that ran."""
        k = check_k(k)
        threads = check_num_threads(num_threads)
        if self.coarse.ntotal != self.fine.ntotal:
            raise ValueError(
                "coarse and fine must index the same items: coarse holds "
                f"{self.coarse.ntotal}, fine holds {self.fine.ntotal}"
            )
        n_codes = _rows(query_codes, "query_codes")
        n_vectors = _rows(query_vectors, "query_vectors")
        if n_codes != n_vectors:
            raise ValueError(
                f"query_codes and query_vectors must hold the same queries: got {n_codes} "
                f"and {n_vectors} rows"
            )
        t0 = time.perf_counter()
        _, candidates = self.coarse.search(query_codes, self.n_candidates, num_threads=threads)
        t1 = time.perf_counter()
        depth = max(k, self.n_rerank) if self.reranker is not None else k
        scores, ids = self.fine.search(
            query_vectors, depth, candidates=candidates, num_threads=threads
        )
        t2 = time.perf_counter()
        return _last_stage(self.reranker, self.n_rerank, query_vectors, rerank_queries,
                           scores, ids, k, candidates, t1 - t0, t2 - t1, t0)


def _last_stage(reranker, n_rerank, query_vectors, rerank_queries, scores, ids, k,
                candidates, coarse_seconds, fine_seconds, started):
    """Applies the optional reranker and assembles the :class:`CascadeResult` (shared by
    the sharded cascade)."""
    t2 = time.perf_counter()
    if reranker is not None:
        queries = query_vectors if rerank_queries is None else rerank_queries
        scores, ids = _apply_reranker(reranker, queries, ids[:, :n_rerank], k)
    t3 = time.perf_counter()
    result = CascadeResult(scores[:, :k], ids[:, :k])
    result.timings = {"coarse": coarse_seconds, "fine": fine_seconds, "rerank": t3 - t2,
                      "total": t3 - started}
    result.candidates = candidates
    return result


def _check_stages(n_candidates, reranker, n_rerank):
    """Validated (n_candidates, n_rerank) for a cascade; shared by the sharded cascade."""
    if reranker is not None and not callable(reranker):
        raise TypeError(f"reranker must be callable, got {type(reranker).__name__}")
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    if n_rerank is None:
        return n_candidates, n_candidates
    n_rerank = check_positive_int(n_rerank, "n_rerank")
    if reranker is None and n_rerank != n_candidates:
        raise ValueError("n_rerank only applies with a reranker; got a value but no reranker")
    return n_candidates, n_rerank


def _rows(x, name):
    a = as_numpy(x, name)
    if a.ndim == 1:
        return 1
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got shape {a.shape}")
    return a.shape[0]


def _apply_reranker(reranker, queries, candidate_ids, k):
    raw = reranker(queries, candidate_ids)
    scores = np.asarray(as_numpy(raw, "reranker output"), dtype=np.float64)
    if scores.shape != candidate_ids.shape:
        raise ValueError(
            f"reranker must return scores of shape {candidate_ids.shape}, got {scores.shape}"
        )
    valid = candidate_ids >= 0
    # Padding sorts last; ties keep the smaller id first, as in every other stage.
    keyed = np.where(valid, scores, -np.inf)
    ids_key = np.where(valid, candidate_ids, np.iinfo(np.int64).max)
    order = np.lexsort((ids_key, -keyed), axis=1)[:, :k]
    out_ids = np.take_along_axis(candidate_ids, order, axis=1)
    out_scores = np.take_along_axis(keyed, order, axis=1).astype(np.float32)
    pad = k - out_ids.shape[1]
    if pad > 0:
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=SCORE_SENTINEL)
    out_scores[out_ids < 0] = SCORE_SENTINEL
    return out_scores, out_ids


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

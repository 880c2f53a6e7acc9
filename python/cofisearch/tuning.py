"""A recall target instead of knobs: the cheapest cascade settings that reach it.

:func:`tune` takes a :class:`~cofisearch.Cascade`, a sample of held-out queries (codes and
float vectors) and a target recall@k, and returns the fastest ``(nprobe, n_candidates)``
that reaches the target on that sample, with the recall and latency of every operating
point it timed: what faiss's ``ParameterSpace.explore`` / ``OperatingPoints`` give for
one index, for the two knobs of a cascade. The result applies itself
(:meth:`TuningResult.apply`); the cascade is not changed until then.

Recall@k is the share of each query's exact float top-``k`` (the cascade's own fine
index searched exhaustively, or the ``truth`` given) that the cascade's top-``k``
returns, averaged over the queries. It is measured, never estimated, and the search
for settings is deterministic:

1. For each ``nprobe`` of the grid, ascending (an :class:`~cofisearch.BinaryIndex`
   screen has no ``nprobe``: one step), the screen runs once at the deepest
   ``n_candidates``. The exact rerank keeps a true top-``k`` item exactly when the screen
   kept it (rerank scores equal the exhaustive scores bit for bit, and fewer than ``k``
   items beat a true top-``k`` item), so the recall of every shallower depth follows from
   where the screen ranked each true item, and the smallest depth reaching the target is
   exact, not a grid point. A larger ``nprobe`` is only worth exploring while it can
   still lower that depth: the walk stops once the depth is ``k``.
2. The settings left (each ``nprobe`` with its smallest depth, less those another
   setting beats on both knobs) run as the cascade runs them, in interleaved rounds;
   the fastest median wins. Their recall is measured again on those runs.

Only stages 1 and 2 are tuned: a reranker, if the cascade has one, is not run (its
scores are not the float scores the recall is defined on).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from ._checks import (
    as_numpy,
    check_codes,
    check_float,
    check_floats,
    check_int_sequence,
    check_k,
    check_num_threads,
    check_positive_int,
)
from .cascade import Cascade, count_queries
from .ivf import IVFBinaryIndex

__all__ = ["OperatingPoint", "TuningResult", "tune"]

# The deepest screen tried by default: a few thousand candidates is where an exact rerank
# stops being cheap next to a scan of the lists (and where issue 13 puts the limit).
DEFAULT_MAX_CANDIDATES = 4096


class OperatingPoint(NamedTuple):
    """One setting of the cascade and what it measured on the sample.

    ``nprobe`` is ``None`` for a :class:`~cofisearch.BinaryIndex` screen;
    ``n_candidates`` is ``None`` where no depth up to the limit reached the target (then
    ``recall`` is the recall at the limit); ``seconds_per_query`` is ``None`` for a point
    that was not timed.
    """

    nprobe: int | None
    n_candidates: int | None
    recall: float
    seconds_per_query: float | None = None


class TuningResult(NamedTuple):
    """What :func:`tune` found.

    ``nprobe``, ``n_candidates``, ``recall`` and ``seconds_per_query`` describe the chosen
    setting (all ``None`` when no setting reached the target; ``best_recall`` then says
    how close the grid came). ``frontier`` holds the timed settings, fastest first: each
    reaches the target, none is beaten on both knobs by another. ``explored`` holds one
    point per ``nprobe`` tried, ascending, with its smallest depth reaching the target
    (or ``None`` and the recall at ``max_candidates``).
    """

    target_recall: float
    k: int
    nprobe: int | None
    n_candidates: int | None
    recall: float | None
    seconds_per_query: float | None
    frontier: tuple
    explored: tuple
    best_recall: float
    max_candidates: int
    num_queries: int

    @property
    def reached(self):
        """Whether some setting reached the target on the sample."""
        return self.n_candidates is not None

    @property
    def settings(self):
        """The chosen setting as a dict (``{}`` when none reached the target)."""
        if not self.reached:
            return {}
        out = {"n_candidates": self.n_candidates}
        if self.nprobe is not None:
            out["nprobe"] = self.nprobe
        return out

    def apply(self, cascade):
        """Sets the chosen ``n_candidates`` on ``cascade`` and, for an IVF screen, its
        coarse index's ``nprobe``. Raises ``ValueError`` when no setting reached the
        target, or when the cascade's screen is not of the kind that was tuned."""
        if not isinstance(cascade, Cascade):
            raise TypeError(f"cascade must be a Cascade, got {type(cascade).__name__}")
        if not self.reached:
            raise ValueError(
                f"no setting reached recall@{self.k} >= {self.target_recall} (best "
                f"{self.best_recall:.4f}): nothing to apply; raise max_candidates or the "
                "nprobe grid, or lower the target"
            )
        ivf = isinstance(cascade.coarse, IVFBinaryIndex)
        if ivf != (self.nprobe is not None):
            tuned = "an IVFBinaryIndex" if self.nprobe is not None else "a BinaryIndex"
            raise ValueError(
                f"these settings were tuned for a cascade over {tuned}, got one over "
                f"{type(cascade.coarse).__name__}"
            )
        if ivf:
            cascade.coarse.nprobe = self.nprobe
        cascade.n_candidates = self.n_candidates
        return cascade


def tune(cascade, query_codes, query_vectors, *, target_recall=0.95, k=10, truth=None,
         nprobe=None, max_candidates=DEFAULT_MAX_CANDIDATES, repeat=3, num_threads=None):
    """The fastest ``(nprobe, n_candidates)`` of ``cascade`` whose recall@``k`` on the
    sample reaches ``target_recall``; see the module's documentation for how.

    Parameters
    ----------
    cascade:
        The :class:`~cofisearch.Cascade` to tune (not changed; see
        :meth:`TuningResult.apply`).
    query_codes, query_vectors:
        The sample: held-out queries, as the cascade's ``search`` takes them. A few
        hundred to a few thousand; the settings are as good as the sample is typical.
    target_recall:
        In ``(0, 1]``.
    k:
        The final depth the recall is measured at.
    truth:
        Optional ``(nq, k)`` int64 ids of each query's exact top-``k`` (``-1`` padding
        ignored); by default the fine index's exhaustive search.
    nprobe:
        The ``nprobe`` values to try for an IVF screen (default: 1, 2, 4, ... up to
        ``nlist``); refused for a :class:`~cofisearch.BinaryIndex` screen.
    max_candidates:
        The deepest screen tried (capped at the database size).
    repeat:
        Timed runs of each finalist (medians, interleaved rounds).
    num_threads:
        Threads of every search, as the cascade will run.
    """
    if not isinstance(cascade, Cascade):
        raise TypeError(f"cascade must be a Cascade, got {type(cascade).__name__}")
    nq = count_queries(query_codes, query_vectors)
    qc = check_codes(query_codes, "query_codes", cascade.coarse.code_size, one_d_ok=True)
    qv = check_floats(query_vectors, "query_vectors", cascade.fine.dim, one_d_ok=True)
    target = check_float(target_recall, "target_recall", above=0.0, maximum=1.0)
    k = check_k(k)
    max_candidates = check_positive_int(max_candidates, "max_candidates")
    repeat = check_positive_int(repeat, "repeat")
    threads = check_num_threads(num_threads)
    coarse, fine = cascade.coarse, cascade.fine
    if coarse.ntotal != fine.ntotal:
        raise ValueError(
            f"coarse and fine must index the same items: coarse holds {coarse.ntotal}, "
            f"fine holds {fine.ntotal}"
        )
    if fine.ntotal == 0:
        raise ValueError("the cascade is empty: add items before tuning")
    ivf = isinstance(coarse, IVFBinaryIndex)
    if ivf:
        nprobes = _nprobe_grid(coarse.nlist) if nprobe is None else tuple(
            sorted(check_int_sequence(nprobe, "nprobe")))
    elif nprobe is not None:
        raise ValueError("nprobe applies to an IVFBinaryIndex screen; this cascade's is a "
                         f"{type(coarse).__name__}")
    else:
        nprobes = (None,)
    depth = max(k, min(max_candidates, fine.ntotal))
    truth = _truth(fine, qv, k, truth, nq, threads)

    explored = []
    for p in nprobes:
        _, candidates = _screen(coarse, qc, qv, depth, p, threads)
        curve = _recall_by_depth(candidates, truth, k)
        n_c = _smallest_depth(curve, target)
        if n_c is None:
            explored.append(OperatingPoint(p, None, float(curve[-1])))
            continue
        # A cascade keeps at least k candidates, so that it returns k results.
        n_c = max(k, n_c)
        explored.append(OperatingPoint(p, n_c, float(curve[min(n_c, depth) - 1])))
        if n_c == k:
            break  # no larger nprobe can need fewer candidates
    best_recall = max(pt.recall for pt in explored)

    finalists, best_depth = [], None
    for pt in explored:  # nprobe ascending: keep a point only if it needs fewer candidates
        if pt.n_candidates is not None and (best_depth is None or pt.n_candidates < best_depth):
            finalists.append(pt)
            best_depth = pt.n_candidates
    if not finalists:
        return TuningResult(target, k, None, None, None, None, (), tuple(explored),
                            best_recall, depth, nq)

    frontier = _time_points(cascade, finalists, qc, qv, k, truth, repeat, threads)
    best = frontier[0]
    return TuningResult(target, k, best.nprobe, best.n_candidates, best.recall,
                        best.seconds_per_query, frontier, tuple(explored), best_recall, depth, nq)


def _nprobe_grid(nlist):
    grid, p = [], 1
    while p < nlist:
        grid.append(p)
        p *= 2
    return tuple(grid + [nlist])


def _truth(fine, qv, k, truth, nq, threads):
    if truth is None:
        return fine.search(qv, k, num_threads=threads).ids
    t = as_numpy(truth, "truth")
    if t.dtype.kind not in "iu":
        raise TypeError(f"truth must hold integer ids, got dtype {t.dtype}")
    if t.ndim == 1 and nq == 1:
        t = t[None, :]
    if t.shape != (nq, k):
        raise ValueError(f"truth must have shape (nq, k) = {(nq, k)}, got {t.shape}")
    return t.astype(np.int64, copy=False)


def _screen(coarse, qc, qv, depth, nprobe, threads):
    if nprobe is None:
        return coarse.search(qc, depth, num_threads=threads)
    vectors = qv if coarse.routing == "vectors" else None
    return coarse.search(qc, depth, nprobe=nprobe, vectors=vectors, num_threads=threads)


def _recall_by_depth(candidates, truth, k):
    """``curve[d - 1]``: the recall@k an exact rerank of the screen's first ``d``
    candidates reaches, for every ``d`` up to the screen's depth."""
    nq, depth = candidates.shape
    first_rank = np.full(nq * k, depth, dtype=np.int64)  # depth: never screened
    for q in range(nq):
        t = truth[q]
        hit = np.flatnonzero(np.isin(candidates[q], t[t >= 0]))
        # Position in the screen of each true id found (ids are unique per row).
        pos = dict(zip(candidates[q, hit].tolist(), hit.tolist()))
        first_rank[q * k:(q + 1) * k] = [pos.get(i, depth) if i >= 0 else -1 for i in t]
    counts = np.maximum(np.sum(truth >= 0, axis=1), 1)
    # Each true item weighs 1 / (true items of its query) / nq.
    weight = np.repeat(1.0 / (counts * nq), k)
    found = first_rank[(first_rank >= 0) & (first_rank < depth)]
    w = weight[(first_rank >= 0) & (first_rank < depth)]
    curve = np.zeros(depth + 1)
    np.add.at(curve, found + 1, w)
    return np.cumsum(curve)[1:]


def _smallest_depth(curve, target):
    """The smallest ``d`` with ``curve[d - 1] >= target`` (a tiny tolerance for the sum's
    rounding), or ``None``."""
    ok = np.flatnonzero(curve >= target - 1e-9)
    return None if ok.size == 0 else int(ok[0]) + 1


def _recall(ids, truth):
    hits = [np.intersect1d(a[a >= 0], t[t >= 0]).size / max(1, int((t >= 0).sum()))
            for a, t in zip(ids, truth)]
    return float(np.mean(hits))


def _time_points(cascade, points, qc, qv, k, truth, repeat, threads):
    """Runs every point as the cascade's stages 1 and 2 run it, in ``repeat`` interleaved
    rounds after a warm-up; returns them fastest first (ties by the order given) with
    the median seconds per query and the recall of the runs."""
    coarse, fine = cascade.coarse, cascade.fine
    nq = qc.shape[0]

    def run(pt):
        _, candidates = _screen(coarse, qc, qv, pt.n_candidates, pt.nprobe, threads)
        return fine.search(qv, k, candidates=candidates, num_threads=threads).ids

    recalls = [_recall(run(pt), truth) for pt in points]  # also the warm-up
    samples = [[] for _ in points]
    for r in range(repeat):
        for j in range(len(points)):
            i = (r + j) % len(points)
            t0 = time.perf_counter()
            run(points[i])
            samples[i].append(time.perf_counter() - t0)
    timed = [pt._replace(recall=rec, seconds_per_query=float(np.median(s)) / nq)
             for pt, rec, s in zip(points, recalls, samples)]
    order = sorted(range(len(timed)), key=lambda i: (timed[i].seconds_per_query, i))
    return tuple(timed[i] for i in order)

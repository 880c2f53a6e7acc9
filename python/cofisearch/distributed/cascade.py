"""ShardedCascade: the coarse-to-fine cascade over Ray actors, each holding a
BinaryIndex and a FloatIndex over its rows; the stages are :mod:`cofisearch.cascade`'s."""

from __future__ import annotations

import os
import time

from .._checks import check_choice, check_codes, check_floats, check_k
from .._index import BinaryIndex, FloatIndex
from .._reference import merge_topk
from ..cascade import (
    FirstStages,
    check_stages,
    count_queries,
    fine_depth,
    run_first_stages,
    run_last_stage,
)
from ._manifest import layout_fields, read_manifest, template_from_manifest
from ._sharded import Sharded, check_template, check_threads, layout_repr

_SCREENS = ("per_shard", "global")


class ShardedCascade(Sharded):
    """The coarse-to-fine :class:`~cofisearch.Cascade` over ``n_shards`` Ray actors, each
    holding a ``BinaryIndex`` and a ``FloatIndex`` over its rows.

    Parameters
    ----------
    coarse, fine:
        An empty ``BinaryIndex`` and an empty ``FloatIndex`` giving the layout.
    n_shards:
        Number of shard actors.
    n_candidates:
        Stage-1 depth, as in ``Cascade``.
    screen:
        Where stage 1 keeps its ``n_candidates``:

        - ``"per_shard"`` (default): each shard runs the whole cascade on its own rows,
          keeping its own top ``n_candidates`` by Hamming distance, and only the final
          top-k travels: one round trip. The candidate set is the union of the per-shard
          screens, a superset of the single cascade's global screen (every global
          top-``n_candidates`` item is in its shard's top ``n_candidates``), so each rank
          of the result scores at least as well as the single cascade's; the results are
          identical when ``n_candidates`` covers the largest shard, and whenever the extra
          candidates do not outscore the kept ones.
        - ``"global"``: stage 1 is merged across shards into the exact global top
          ``n_candidates`` before the shards rerank them: results identical to
          ``Cascade`` at every depth, for two round trips.
    reranker, n_rerank:
        Optional stage 3, as in ``Cascade``; it runs on the driver, on global ids.
    address, actor_options, start_timeout_s:
        As for :class:`ShardedIndex`.
    """

    kind = "cascade"

    def __init__(self, coarse, fine, n_shards, *, n_candidates=100, screen="per_shard",
                 reranker=None, n_rerank=None, address=None, actor_options=None,
                 start_timeout_s=120.0):
        check_template(coarse, "coarse", (BinaryIndex,))
        check_template(fine, "fine", (FloatIndex,))
        self._set_stages(n_candidates, screen, reranker, n_rerank)
        self._start((coarse, fine), n_shards, address, actor_options, start_timeout_s)

    def _set_stages(self, n_candidates, screen, reranker, n_rerank):
        self.n_candidates, self.n_rerank = check_stages(n_candidates, reranker, n_rerank)
        self.screen = check_choice(screen, "screen", _SCREENS)
        self.reranker = reranker

    @property
    def nbits(self):
        return self._templates[0].nbits

    @property
    def code_size(self):
        return self._templates[0].code_size

    @property
    def dim(self):
        return self._templates[1].dim

    @property
    def metric(self):
        return self._templates[1].metric

    def add(self, codes, vectors, *, ids=None):
        """Adds items: ``codes[i]`` and ``vectors[i]`` are one item, named ``ids[i]`` or,
        without ``ids``, by the next sequential id; as ``ShardedIndex.add``. A shard's two
        indexes always hold the same items under the same ids."""
        self._check_usable()
        c = check_codes(codes, "codes", self.code_size, one_d_ok=True)
        v = check_floats(vectors, "vectors", self.dim, one_d_ok=True)
        if c.shape[0] != v.shape[0]:
            raise ValueError(
                f"codes and vectors must hold the same items: got {c.shape[0]} and "
                f"{v.shape[0]} rows"
            )
        self._add_items((c, v), ids)

    def search(self, query_codes, query_vectors, k, *, rerank_queries=None, allowed=None,
               num_threads=None):
        """Top-``k`` per query through the stages, as ``Cascade.search``; returns a
        :class:`~cofisearch.CascadeResult` with global ids. With ``allowed``, a 1-D array
        of ids, stage 1 screens only those items (each shard the ones it holds), so every
        candidate and result is one of them.

        ``timings`` has the keys of ``Cascade``: with ``screen="global"``, ``"coarse"`` and
        ``"fine"`` are the driver's wall time of each round trip; with ``"per_shard"``,
        they are the slowest shard's own stage times. ``"total"`` is the driver's wall
        time, Ray's overhead included. ``candidates`` is the global screen
        ``(nq, n_candidates)`` with ``"global"``; with ``"per_shard"`` it is the union of
        the shards' screens, ``(nq, s * n_candidates)`` for the ``s`` shards holding items,
        sorted by (Hamming distance, id), so its first ``n_candidates`` columns are the
        global screen.
        """
        self._check_usable()
        k = check_k(k)
        threads = check_threads(num_threads)
        count_queries(query_codes, query_vectors)
        qc = check_codes(query_codes, "query_codes", self.code_size, one_d_ok=True)
        qv = check_floats(query_vectors, "query_vectors", self.dim, one_d_ok=True)
        allowed = self._allowed_per_shard(allowed)
        if self.ntotal == 0:
            raise ValueError("the index is empty: add items before searching")
        depth = fine_depth(k, reranker=self.reranker, n_rerank=self.n_rerank)
        shards = self._live_shards()
        qc_arg = self._put(qc, len(shards))
        qv_arg = self._put(qv, len(shards))
        started = time.perf_counter()
        if self.screen == "global":
            first = self._global_stages(shards, qc_arg, qv_arg, depth, threads, allowed)
        else:
            first = self._per_shard_stages(shards, qc_arg, qv_arg, depth, threads, allowed)
        return run_last_stage(
            first, k=k, reranker=self.reranker, n_rerank=self.n_rerank,
            query_vectors=query_vectors, rerank_queries=rerank_queries, started=started,
        )

    def _global_stages(self, shards, query_codes, query_vectors, depth, threads, allowed):
        """Stages 1 and 2 in two round trips: the shards' screens (among the ``allowed``
        shard ids, per shard) merged into the global one, then each shard reranks its
        share of it."""
        return run_first_stages(
            _Merged(self, shards, "screen", largest=False, allowed=allowed),
            _Merged(self, shards, "rerank", largest=True),
            query_codes, query_vectors,
            n_candidates=self.n_candidates, depth=depth, num_threads=threads,
        )

    def _per_shard_stages(self, shards, query_codes, query_vectors, depth, threads, allowed):
        """Stages 1 and 2 in one round trip, each shard running both on its own items
        (among its ``allowed`` shard ids); the timings are the slowest shard's."""
        n_candidates = self.n_candidates
        got = self._call(
            "cascade", shards,
            lambda s: (query_codes, query_vectors, n_candidates, depth, threads,
                       None if allowed is None else allowed[s]),
        )
        parts = [got[s] for s in shards]
        scores, ids = merge_topk([(p.scores, p.ids) for p in parts], depth, largest=True)
        screened, candidates = merge_topk(
            [(p.screened, p.candidates) for p in parts], len(parts) * n_candidates, largest=False
        )
        return FirstStages(
            screened, candidates, scores, ids,
            max(p.coarse_seconds for p in parts), max(p.fine_seconds for p in parts),
        )

    @classmethod
    def load(cls, directory, *, n_candidates=None, screen=None, reranker=None, n_rerank=None,
             mmap=False, address=None, actor_options=None, start_timeout_s=120.0):
        """Restores a sharded cascade saved with :meth:`save`. ``n_candidates`` and
        ``screen`` default to the saved ones; a reranker, being code, is never saved."""
        directory = os.path.abspath(os.fspath(directory))
        manifest = read_manifest(directory)
        if manifest["kind"] != "cascade":
            raise ValueError(
                f"{directory!r} holds a sharded {manifest['kind']} index; load it with "
                "ShardedIndex.load or load_sharded"
            )
        templates = (
            template_from_manifest(manifest, "binary"),
            template_from_manifest(manifest, "float"),
        )
        stages = {
            "n_candidates": manifest.get("n_candidates") if n_candidates is None else n_candidates,
            "screen": manifest.get("screen") if screen is None else screen,
            "reranker": reranker,
            "n_rerank": n_rerank,
        }
        probe = cls.__new__(cls)
        probe._set_stages(**stages)  # fail before starting actors
        self = cls._from_manifest(
            directory, manifest, templates, mmap,
            address=address, actor_options=actor_options, start_timeout_s=start_timeout_s,
        )
        self._set_stages(**stages)
        return self

    def _manifest_extra(self):
        return {
            **layout_fields(self._templates),
            "n_candidates": self.n_candidates,
            "screen": self.screen,
        }

    def __repr__(self):
        return (
            f"ShardedCascade(coarse={layout_repr(self._templates[0])}, "
            f"fine={layout_repr(self._templates[1])}, "
            f"n_shards={self._n_shards}, ntotal={self.ntotal}, n_candidates={self.n_candidates}, "
            f"screen={self.screen!r}, reranker={self.reranker!r}, n_rerank={self.n_rerank})"
        )


class _Merged:
    """One cascade stage run by every shard and merged: a stand-in for the single index's
    ``search`` in :func:`~cofisearch.cascade.run_first_stages`, in global ids. The screen
    takes its filter here, per shard (``allowed[s]``, shard ids), not from the call."""

    def __init__(self, sharded, shards, method, *, largest, allowed=None):
        self._sharded = sharded
        self._shards = shards
        self._method = method
        self._largest = largest
        self._allowed = allowed

    def search(self, queries, k, *, candidates=None, num_threads=None, allowed=None):
        if candidates is None:
            mine = self._allowed

            def args(s):
                return (queries, k, num_threads, None if mine is None else mine[s])
        else:
            shared = (queries, self._sharded._put(candidates, len(self._shards)), k, num_threads)

            def args(s):
                return shared
        got = self._sharded._call(self._method, self._shards, args)
        return merge_topk([got[s] for s in self._shards], k, largest=self._largest)

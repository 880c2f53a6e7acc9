"""One shard: the Ray actor that holds a slice of the rows and answers for it.

Shard ``s`` of ``n`` holds the rows with global id ``s + n * i`` as local id ``i``, in one
index (a sharded index) or a ``BinaryIndex`` and a ``FloatIndex`` over the same rows (a
sharded cascade). Local order equals global order, so each shard's own top-k, tie-break
included, is already the top-k of its rows in global terms; the shard only translates
ids. Every method returns ``(count, payload)`` so that the driver can tell a shard that
lost its rows (restarted empty by Ray) from one that has them.
"""

from __future__ import annotations

import os

import numpy as np
import ray

from .._index import (
    HAMMING_SENTINEL,
    SCORE_SENTINEL,
    BinaryIndex,
    FloatIndex,
    index_file_checksum,
    load_index,
)
from ..cascade import FirstStages, run_first_stages


def empty_like(index):
    """An empty index of the same layout as ``index``."""
    if isinstance(index, BinaryIndex):
        return BinaryIndex(index.nbits)
    return FloatIndex(index.dim, metric=index.metric)


def _padding(nq, k, kind):
    ids = np.full((nq, k), -1, dtype=np.int64)
    if kind == "binary":
        return np.full((nq, k), HAMMING_SENTINEL, dtype=np.int32), ids
    return np.full((nq, k), SCORE_SENTINEL, dtype=np.float32), ids


class Shard:
    """Shard ``shard`` of ``n_shards``, holding an empty index per template."""

    def __init__(self, shard, n_shards, templates):
        self._shard = shard
        self._n = n_shards
        self._indexes = [empty_like(t) for t in templates]

    def _count(self):
        return self._indexes[0].ntotal

    def _to_global(self, ids):
        return np.where(ids >= 0, ids * self._n + self._shard, -1)

    def _to_local(self, ids):
        mine = (ids >= 0) & (ids % self._n == self._shard)
        return np.where(mine, ids // self._n, -1)

    def count(self):
        return self._count(), None

    def add(self, *parts):
        for index, rows in zip(self._indexes, parts):
            index.add(rows)
        return self._count(), None

    def search(self, queries, k, threads, candidates):
        """The index's own search; ``candidates`` are global ids, of which the shard
        scores its own."""
        index = self._indexes[0]
        if index.ntotal == 0:
            return 0, _padding(queries.shape[0], k, index.kind)
        local = None if candidates is None else self._to_local(candidates)
        if local is None:
            d, i = index.search(queries, k, num_threads=threads)
        else:
            d, i = index.search(queries, k, candidates=local, num_threads=threads)
        return self._count(), (d, self._to_global(i))

    def screen(self, query_codes, n_candidates, threads):
        """Cascade stage 1 alone (the global screen merges these across shards)."""
        coarse = self._indexes[0]
        if coarse.ntotal == 0:
            return 0, _padding(query_codes.shape[0], n_candidates, "binary")
        d, i = coarse.search(query_codes, n_candidates, num_threads=threads)
        return self._count(), (d, self._to_global(i))

    def rerank(self, query_vectors, candidates, depth, threads):
        """Cascade stage 2 alone, on the shard's share of global ``candidates``."""
        fine = self._indexes[1]
        if fine.ntotal == 0:
            return 0, _padding(query_vectors.shape[0], depth, "float")
        s, i = fine.search(
            query_vectors, depth, candidates=self._to_local(candidates), num_threads=threads
        )
        return self._count(), (s, self._to_global(i))

    def cascade(self, query_codes, query_vectors, n_candidates, depth, threads):
        """Cascade stages 1 and 2 on the shard's rows, as :class:`FirstStages` in global
        ids."""
        coarse, fine = self._indexes
        nq = query_codes.shape[0]
        if coarse.ntotal == 0:
            return 0, FirstStages(
                *_padding(nq, n_candidates, "binary"), *_padding(nq, depth, "float"), 0.0, 0.0
            )
        first = run_first_stages(
            coarse, fine, query_codes, query_vectors,
            n_candidates=n_candidates, depth=depth, num_threads=threads,
        )
        return self._count(), first._replace(
            candidates=self._to_global(first.candidates), ids=self._to_global(first.ids)
        )

    def save(self, paths):
        """Saves each index and returns the files' checksums, for the manifest."""
        checksums = []
        for index, path in zip(self._indexes, paths):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            index.save(path)
            checksums.append(index_file_checksum(path))
        return self._count(), checksums

    def load(self, paths, mmap, checksums=None):
        """Loads the files a save wrote; with ``checksums`` (from the manifest), a file
        that is not the one the manifest names for this shard (swapped, or an entry
        moved) is refused rather than served."""
        # Reported as text rather than raised, so that the driver's error names the shard
        # and the file instead of carrying a remote traceback.
        try:
            if checksums is not None:
                for path, expected in zip(paths, checksums):
                    found = index_file_checksum(path)
                    if found != expected:
                        return -1, (
                            f"{path!r} is not the file this shard saved (checksum "
                            f"{found:08x}, the manifest says {expected:08x})"
                        )
            loaded = [load_index(path, mmap=mmap) for path in paths]
        except (OSError, ValueError) as exc:
            return -1, str(exc)
        for template, index, path in zip(self._indexes, loaded, paths):
            if repr(empty_like(index)) != repr(template):
                return -1, f"{path!r} holds {index!r}, expected the layout of {template!r}"
        if len({index.ntotal for index in loaded}) != 1:
            return -1, f"the files {paths} hold different numbers of rows"
        self._indexes = loaded
        return self._count(), None

    def remove(self, paths):
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return self._count(), None


ShardActor = ray.remote(Shard)

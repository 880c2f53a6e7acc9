"""One shard: the Ray actor that holds a part of the items and answers for it.

Item ``g`` lives on shard ``g % n`` of ``n`` under the shard id ``g // n``, in one index
(a sharded index) or a ``BinaryIndex`` and a ``FloatIndex`` holding the same items under
the same ids (a sharded cascade). On one shard, ``g -> g // n`` keeps the order of the
ids, so each shard's own top-k, tie-break by id included, is already the top-k of its
items in global terms; the shard only translates ids. Items added without ids get
consecutive shard ids ``0, 1, 2, ...``, for which the indexes keep no id map at all.
Every method returns ``(count, payload)`` so that the driver can tell a shard that lost
its items (restarted empty by Ray) from one that has them.
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
    """Shard ``shard`` of ``n_shards``, holding an empty index per template.

    Ids travel in both directions as the driver's (global) ids, except the ``local``
    arguments of :meth:`add`, :meth:`present` and :meth:`remove` and the ``allowed`` ones
    of the searches, which the driver has routed and translated to this shard's ids.
    """

    def __init__(self, shard, n_shards, templates):
        self._shard = shard
        self._n = n_shards
        self._indexes = [empty_like(t) for t in templates]
        # True while the indexes hold exactly the shard ids 0 .. count - 1 and were never
        # given ids or a removal: then they keep no id map, an id is present when it is
        # below count, and an add of the next ids needs no ids (see BinaryIndex.add).
        self._sequential = True
        # Otherwise, the present shard ids, sorted, computed when first needed after a change.
        self._sorted_ids = None

    def _count(self):
        return self._indexes[0].ntotal

    def _to_global(self, ids):
        return np.where(ids >= 0, ids * self._n + self._shard, -1)

    def _to_local(self, ids):
        mine = (ids >= 0) & (ids % self._n == self._shard)
        return np.where(mine, ids // self._n, -1)

    def _changed(self):
        self._sequential = False
        self._sorted_ids = None

    def _is_present(self, local):
        """Whether each of the shard ids ``local`` (any shape) is present."""
        if self._sequential:
            return (local >= 0) & (local < self._count())
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._indexes[0].ids)
        held = self._sorted_ids
        if held.size == 0:
            return np.zeros(local.shape, dtype=bool)
        at = np.minimum(np.searchsorted(held, local), held.size - 1)
        return held[at] == local

    def _present_only(self, candidates):
        """Global candidate ids as this shard's ids, ``-1`` for every id that is not one
        of its present items (another shard's, removed, or never added)."""
        local = self._to_local(candidates)
        return np.where(self._is_present(local), local, -1)

    def count(self):
        return self._count(), None

    def add(self, local, *parts):
        """Adds the items ``local`` (a ``range`` or an int64 array of shard ids, absent
        here, as the driver checked) with their rows, one array per index."""
        count = self._count()
        if isinstance(local, range):
            follows = local.start == count
        else:
            follows = bool(local.size == 0 or (
                local[0] == count and local[-1] == count + local.size - 1
                and (local.size < 3 or (np.diff(local) == 1).all())
            ))
        if self._sequential and follows:
            for index, rows in zip(self._indexes, parts):
                index.add(rows)
        else:
            ids = np.arange(local.start, local.stop) if isinstance(local, range) else local
            for index, rows in zip(self._indexes, parts):
                index.add(rows, ids=ids)
            self._changed()
        return self._count(), None

    def present(self, local):
        """Which of the shard ids ``local`` are present, as global ids."""
        return self._count(), self._to_global(local[self._is_present(local)])

    def remove(self, local):
        """Removes the items ``local`` (shard ids) from every index; the payload is how
        many were present."""
        removed = [index.remove(local) for index in self._indexes]
        if removed[0]:
            self._changed()
        return self._count(), removed[0]

    def compact(self):
        for index in self._indexes:
            index.compact()
        return self._count(), None

    def ids(self):
        """The present items' global ids."""
        return self._count(), self._to_global(self._indexes[0].ids)

    def search(self, queries, k, threads, candidates, allowed=None):
        """The index's own search; ``candidates`` are global ids, of which the shard
        scores its own present ones, ``allowed`` shard ids."""
        index = self._indexes[0]
        if index.ntotal == 0:
            return 0, _padding(queries.shape[0], k, index.kind)
        options = {"num_threads": threads}
        if allowed is not None:
            options["allowed"] = allowed
        if candidates is not None:
            options["candidates"] = self._present_only(candidates)
        d, i = index.search(queries, k, **options)
        return self._count(), (d, self._to_global(i))

    def screen(self, query_codes, n_candidates, threads, allowed=None):
        """Cascade stage 1 alone (the global screen merges these across shards), among
        the shard ids ``allowed`` when given."""
        coarse = self._indexes[0]
        if coarse.ntotal == 0:
            return 0, _padding(query_codes.shape[0], n_candidates, "binary")
        d, i = coarse.search(query_codes, n_candidates, allowed=allowed, num_threads=threads)
        return self._count(), (d, self._to_global(i))

    def rerank(self, query_vectors, candidates, depth, threads):
        """Cascade stage 2 alone, on the shard's share of global ``candidates``."""
        fine = self._indexes[1]
        if fine.ntotal == 0:
            return 0, _padding(query_vectors.shape[0], depth, "float")
        s, i = fine.search(
            query_vectors, depth, candidates=self._present_only(candidates), num_threads=threads
        )
        return self._count(), (s, self._to_global(i))

    def cascade(self, query_codes, query_vectors, n_candidates, depth, threads, allowed=None):
        """Cascade stages 1 and 2 on the shard's items (among the shard ids ``allowed``
        when given), as :class:`FirstStages` in global ids."""
        coarse, fine = self._indexes
        nq = query_codes.shape[0]
        if coarse.ntotal == 0:
            return 0, FirstStages(
                *_padding(nq, n_candidates, "binary"), *_padding(nq, depth, "float"), 0.0, 0.0
            )
        first = run_first_stages(
            coarse, fine, query_codes, query_vectors,
            n_candidates=n_candidates, depth=depth, num_threads=threads, allowed=allowed,
        )
        return self._count(), first._replace(
            candidates=self._to_global(first.candidates), ids=self._to_global(first.ids)
        )

    def save(self, paths):
        """Saves each index; the payload is the files' checksums and whether the shard is
        sequential, for the manifest."""
        checksums = []
        for index, path in zip(self._indexes, paths):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            index.save(path)
            checksums.append(index_file_checksum(path))
        return self._count(), (checksums, self._sequential)

    def load(self, paths, mmap, checksums=None, sequential=False):
        """Loads the files a save wrote; with ``checksums`` (from the manifest), a file
        that is not the one the manifest names for this shard (swapped, or an entry
        moved) is refused rather than served. ``sequential`` is what the save recorded.
        The payload is ``(problem, largest)``: why the files were refused (None when
        they were not) and the largest global id they hold (-1 when none)."""
        # Reported as text rather than raised, so that the driver's error names the shard
        # and the file instead of carrying a remote traceback.
        try:
            if checksums is not None:
                for path, expected in zip(paths, checksums):
                    found = index_file_checksum(path)
                    if found != expected:
                        problem = (
                            f"{path!r} is not the file this shard saved (checksum "
                            f"{found:08x}, the manifest says {expected:08x})"
                        )
                        return -1, (problem, -1)
            loaded = [load_index(path, mmap=mmap) for path in paths]
        except (OSError, ValueError) as exc:
            return -1, (str(exc), -1)
        for template, index, path in zip(self._indexes, loaded, paths):
            if repr(empty_like(index)) != repr(template):
                return -1, (f"{path!r} holds {index!r}, expected the layout of {template!r}", -1)
        held = [index.ids for index in loaded]
        if any(not np.array_equal(ids, held[0]) for ids in held[1:]):
            return -1, (f"the files {paths} do not hold the same items", -1)
        self._indexes = loaded
        # Trusted only as far as the files bear it out: a sequential shard's ids are
        # 0 .. count - 1 in order.
        self._sequential = bool(sequential) and np.array_equal(held[0], np.arange(held[0].size))
        self._sorted_ids = None
        largest = int(held[0].max()) if held[0].size else -1
        return self._count(), (None, int(self._to_global(np.int64(largest))))

    def unlink(self, paths):
        """Deletes files of an older save (on this shard's node)."""
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return self._count(), None


ShardActor = ray.remote(Shard)

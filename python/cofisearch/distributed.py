"""Sharded exact search on Ray: one database spread over many processes or machines.

A :class:`ShardedIndex` splits a binary or float database over ``n_shards`` Ray actors,
each holding an ordinary :class:`~cofisearch.BinaryIndex` or
:class:`~cofisearch.FloatIndex`; :class:`ShardedCascade` does the same for the
coarse-to-fine cascade. Both answer exactly what one index holding all the data answers:
the same ids, the same distances, the same order and the same tie-break (smaller id
first), with the same padding (id ``-1``) when fewer than ``k`` results exist.

Install with ``pip install "cofisearch[ray]"``. Ray is optional for the rest of the
package: ``import cofisearch`` never imports it, and importing this module without Ray
raises ``ImportError`` at once (at import, not later at construction, so that a missing
dependency shows up where the module is named).

How it works
------------
- **Id routing.** Rows are dealt round-robin by global id: global id ``g`` lives on shard
  ``g % n_shards`` as local id ``g // n_shards``. No id map is stored (nothing per row
  beyond the data), shards stay balanced within one row whatever the batch sizes, and
  local order equals global order on every shard, so each shard's own top-k, tie-break
  included, is already the top-k of its part of the database in global terms.
- **Search.** One remote call per shard per query batch, all shards at once; a large
  query batch is put in Ray's object store once and read there by every shard. Shards
  search with the engine's own threads (``num_threads`` is passed through; by default
  each shard uses every CPU of its node, whatever ``cofisearch.set_num_threads`` says
  in the driver, so with several shards per node pass ``num_threads`` = cores per node
  // shards per node). The driver merges the per-shard
  top-k with one vectorised ``numpy.lexsort`` per batch on (distance, id).
- **Faults.** Every answer carries the shard's row count, checked against what the driver
  expects. When a shard's actor has died (or came back empty, restarted by Ray), the call
  is retried once on a fresh actor restored from the shard's last save, if the shard was
  saved and nothing was added to it since; otherwise :class:`ShardLostError` names the
  lost shards, and the index refuses every later call. Results are never assembled from
  the surviving shards alone.
- **Persistence.** ``save(directory)`` has each shard write its own file(s) in the
  engine's format (see :func:`cofisearch.load_index`), then writes ``manifest.json``
  atomically; files of the previous save in that directory are removed only after the new
  manifest is in place, so a crash mid-save leaves the previous save whole.
  :func:`load_sharded` (or ``ShardedIndex.load``) restores from the directory. The
  directory must be the same path on every node: a shared file system, or a local
  directory per node when shards are pinned to nodes (then the manifest is on the
  driver's node).

Running it
----------
On one machine nothing is needed: the first index starts a local Ray (``ray.init`` with
the dashboard off, every CPU of the machine) unless Ray is already initialised. To use
your own settings, call ``ray.init(...)`` before building an index.

On a cluster, install ``cofisearch[ray]`` (same versions of Python, Ray and cofisearch)
on every node, then::

    # on the head node
    ray start --head --port=6379
    # on every other node, with the address the head printed
    ray start --address=HEAD_IP:6379

and run the driver on any node of the cluster::

    import cofisearch
    from cofisearch.distributed import ShardedIndex

    index = ShardedIndex(cofisearch.BinaryIndex(256), n_shards=8, address="auto")
    index.add(codes)
    distances, ids = index.search(queries, k=10)
    index.save("/shared/indexes/codes")  # later: load_sharded("/shared/indexes/codes")

``address="auto"`` joins the cluster this node belongs to; ``address="HEAD_IP:6379"``
names one. ``ray stop`` on each node shuts the cluster down. By default shards are
spread over the nodes (Ray's ``"SPREAD"`` strategy); ``actor_options`` changes that,
either one dict for every shard (e.g. ``{"num_cpus": 4}`` to reserve cores, or
``{"resources": {"big_memory": 1}}``) or a list with one dict per shard (e.g. a
``NodeAffinitySchedulingStrategy`` each, to pin shard ``s`` to a node and its per-node
save directory). Several shards per node are fine.

Threads: one driver may search a sharded index from several threads; each shard answers
one call at a time, in the order they were sent. ``add`` and ``save`` must not overlap
other calls on the same index.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import numpy as np

try:
    import ray
    import ray.exceptions
except ImportError as exc:
    raise ImportError(
        'cofisearch.distributed needs Ray, which is not installed: pip install "cofisearch[ray]"'
    ) from exc

from ._files import atomic_write
from ._checks import (
    check_codes,
    check_floats,
    check_k,
    check_num_threads,
    check_positive_int,
)
from ._index import (
    HAMMING_SENTINEL,
    SCORE_SENTINEL,
    BinaryIndex,
    FloatIndex,
    SearchResult,
    check_candidates,
    load_index,
)
from .cascade import _check_stages, _last_stage, _rows

__all__ = ["ShardLostError", "ShardedCascade", "ShardedIndex", "load_sharded"]

MANIFEST = "manifest.json"
_FORMAT = "cofisearch-sharded"
_FORMAT_VERSION = 1
# Below this size a query batch travels inline with each call; above it, one copy in the
# object store is cheaper than one serialised copy per shard.
_PUT_BYTES = 64 << 10
_DEFAULT_ACTOR_OPTIONS = {"scheduling_strategy": "SPREAD"}
_NO_ID = np.iinfo(np.int64).max


class ShardLostError(RuntimeError):
    """A shard's actor died and could not be restored, so no exact answer is possible.

    ``shards`` holds the lost shard numbers and ``reasons`` maps each to what happened.
    The index stays unusable: load its last save with :func:`load_sharded`, or rebuild it.
    """

    def __init__(self, shards, n_shards, reasons):
        self.shards = tuple(sorted(shards))
        self.n_shards = n_shards
        self.reasons = dict(reasons)
        if len(self.shards) == 1:
            (s,) = self.shards
            what = f"shard {s} of {n_shards} is lost: {self.reasons[s]}"
        else:
            names = ", ".join(str(s) for s in self.shards)
            detail = "; ".join(f"shard {s}: {self.reasons[s]}" for s in self.shards)
            what = f"shards {names} of {n_shards} are lost: {detail}"
        super().__init__(
            f"{what}. Without every shard the results would not be exact, so this index "
            "refuses further calls; load its last save with "
            "cofisearch.distributed.load_sharded(directory), or rebuild it"
        )

    def __reduce__(self):
        return (type(self), (self.shards, self.n_shards, self.reasons))


# ---- shard side ----------------------------------------------------------------------


def _empty_like(index):
    if isinstance(index, BinaryIndex):
        return BinaryIndex(index.nbits)
    return FloatIndex(index.dim, metric=index.metric)


def _padding(nq, k, kind):
    ids = np.full((nq, k), -1, dtype=np.int64)
    if kind == "binary":
        return np.full((nq, k), HAMMING_SENTINEL, dtype=np.int32), ids
    return np.full((nq, k), SCORE_SENTINEL, dtype=np.float32), ids


class _Shard:
    """Shard ``shard`` of ``n_shards``: the rows with global id ``shard + n_shards * i``.

    Holds one index (a sharded index) or a BinaryIndex and a FloatIndex over the same rows
    (a sharded cascade). Every method returns ``(count, payload)`` so that the driver can
    tell a shard that lost its rows from one that has them.
    """

    def __init__(self, shard, n_shards, templates):
        self._shard = shard
        self._n = n_shards
        self._indexes = [_empty_like(t) for t in templates]

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
        coarse = self._indexes[0]
        if coarse.ntotal == 0:
            return 0, _padding(query_codes.shape[0], n_candidates, "binary")
        d, i = coarse.search(query_codes, n_candidates, num_threads=threads)
        return self._count(), (d, self._to_global(i))

    def rerank(self, query_vectors, candidates, depth, threads):
        fine = self._indexes[1]
        if fine.ntotal == 0:
            return 0, _padding(query_vectors.shape[0], depth, "float")
        s, i = fine.search(
            query_vectors, depth, candidates=self._to_local(candidates), num_threads=threads
        )
        return self._count(), (s, self._to_global(i))

    def cascade(self, query_codes, query_vectors, n_candidates, depth, threads):
        coarse, fine = self._indexes
        nq = query_codes.shape[0]
        if coarse.ntotal == 0:
            cd, ci = _padding(nq, n_candidates, "binary")
            s, i = _padding(nq, depth, "float")
            return 0, (s, i, cd, ci, 0.0, 0.0)
        t0 = time.perf_counter()
        cd, ci = coarse.search(query_codes, n_candidates, num_threads=threads)
        t1 = time.perf_counter()
        s, i = fine.search(query_vectors, depth, candidates=ci, num_threads=threads)
        t2 = time.perf_counter()
        return self._count(), (s, self._to_global(i), cd, self._to_global(ci), t1 - t0, t2 - t1)

    def save(self, paths):
        for index, path in zip(self._indexes, paths):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            index.save(path)
        return self._count(), None

    def load(self, paths, mmap):
        # Reported as text rather than raised, so that the driver's error names the shard
        # and the file instead of carrying a remote traceback.
        try:
            loaded = [load_index(path, mmap=mmap) for path in paths]
        except (OSError, ValueError) as exc:
            return -1, str(exc)
        for template, index, path in zip(self._indexes, loaded, paths):
            if repr(_empty_like(index)) != repr(template):
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


_ShardActor = ray.remote(_Shard)


# ---- driver side ---------------------------------------------------------------------


def _ensure_ray(address):
    if ray.is_initialized():
        return
    if address is None:
        # The dashboard needs extra packages and a port; a library has no use for it.
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)


def _actor_options(actor_options, n_shards):
    if actor_options is None:
        return [dict(_DEFAULT_ACTOR_OPTIONS) for _ in range(n_shards)]
    if isinstance(actor_options, dict):
        return [{**_DEFAULT_ACTOR_OPTIONS, **actor_options} for _ in range(n_shards)]
    if isinstance(actor_options, (list, tuple)):
        if len(actor_options) != n_shards:
            raise ValueError(
                f"actor_options must be one dict or a list of {n_shards} dicts (one per "
                f"shard), got a list of {len(actor_options)}"
            )
        out = []
        for s, options in enumerate(actor_options):
            if not isinstance(options, dict):
                raise TypeError(f"actor_options[{s}] must be a dict, got {type(options).__name__}")
            out.append({**_DEFAULT_ACTOR_OPTIONS, **options})
        return out
    raise TypeError(
        f"actor_options must be a dict or a list of dicts, got {type(actor_options).__name__}"
    )


def _merge(parts, k, descending):
    """Global top-``k`` from per-shard top-k lists ``[(distances, global_ids), ...]``.

    Each shard's list is the exact top-k of its rows under (distance, id), so the global
    top-k is among their union; one lexsort per batch orders it the way the engine does.
    """
    if len(parts) == 1:
        d, i = parts[0]
        return d[:, :k], i[:, :k]
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    # Padding (-1) must sort after a real result at the same distance.
    id_key = np.where(i < 0, _NO_ID, i)
    primary = -d if descending else d
    order = np.lexsort((id_key, primary), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def _check_threads(num_threads):
    # None travels as None: each shard then uses its own node's default, not the driver's.
    return None if num_threads is None else check_num_threads(num_threads)


def _shard_counts(ntotal, n_shards):
    return [len(range(s, ntotal, n_shards)) for s in range(n_shards)]


def _write_json_atomically(path, payload):
    def write(f):
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")

    atomic_write(path, write, mode="w", prefix=".manifest-")


def _read_manifest(directory):
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except OSError as exc:
        raise ValueError(
            f"cannot read sharded index manifest {path!r}: {exc.strerror or exc}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path!r} is not a valid sharded index manifest: {exc}") from exc

    def bad(problem):
        return ValueError(f"{path!r} is not a valid sharded index manifest: {problem}")

    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise bad(f"expected format {_FORMAT!r}")
    if manifest.get("version") != _FORMAT_VERSION:
        raise bad(
            f"format version {manifest.get('version')!r} is not supported (this build reads "
            f"{_FORMAT_VERSION})"
        )
    kind = manifest.get("kind")
    if kind not in _SUFFIXES:
        raise bad(f"kind must be one of {sorted(_SUFFIXES)}, got {kind!r}")
    n_shards, ntotal = manifest.get("n_shards"), manifest.get("ntotal")
    if not isinstance(n_shards, int) or n_shards < 1 or not isinstance(ntotal, int) or ntotal < 0:
        raise bad(f"corrupt shard count {n_shards!r} or row count {ntotal!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != n_shards:
        raise bad(f"expected {n_shards} shard entries")
    for s, (entry, count) in enumerate(zip(shards, _shard_counts(ntotal, n_shards))):
        if not isinstance(entry, dict):
            raise bad(f"shard {s} entry must be an object, got {entry!r}")
        files = entry.get("files")
        if entry.get("count") != count or not isinstance(files, dict):
            raise bad(f"shard {s} entry is corrupt (round-robin routing gives it {count} rows)")
        if sorted(files) != sorted(_SUFFIXES[kind]) or not all(
            isinstance(n, str) and n and os.path.basename(n) == n for n in files.values()
        ):
            raise bad(f"shard {s} must name files {list(_SUFFIXES[kind])} inside the directory")
    return manifest


# Which files a shard writes, per kind, in the order of the shard's indexes.
_SUFFIXES = {"binary": ("codes",), "float": ("vectors",), "cascade": ("codes", "vectors")}


class _Sharded:
    """Actors, routing, fault handling and persistence shared by the sharded classes."""

    kind = None

    def _start(self, templates, n_shards, address, actor_options, start_timeout_s):
        self._n_shards = check_positive_int(n_shards, "n_shards")
        if isinstance(start_timeout_s, bool) or not isinstance(start_timeout_s, (int, float)):
            raise TypeError(
                f"start_timeout_s must be a number, got {type(start_timeout_s).__name__}"
            )
        if not start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s}")
        self._templates = tuple(_empty_like(t) for t in templates)
        self._options = _actor_options(actor_options, self._n_shards)
        self._start_timeout_s = float(start_timeout_s)
        self._counts = [0] * self._n_shards
        # Per shard: (paths, mmap) of a save that matches its rows, or None.
        self._saved = [None] * self._n_shards
        self._ever_saved = [False] * self._n_shards
        self._mmap = False
        self._lost = {}
        self._closed = False
        self._recovery = threading.Lock()
        _ensure_ray(address)
        self._actors = [self._new_actor(s) for s in range(self._n_shards)]
        self._wait_started(range(self._n_shards))

    def _new_actor(self, s):
        return _ShardActor.options(**self._options[s]).remote(s, self._n_shards, self._templates)

    def _wait_started(self, shards):
        refs = [self._actors[s].count.remote() for s in shards]
        try:
            ray.get(refs, timeout=self._start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise TimeoutError(
                f"the {self._n_shards} shard actors were not all running after "
                f"{self._start_timeout_s:g} s: the cluster may lack the resources that "
                f"actor_options asks for ({self._options[0]}); see ray.cluster_resources()"
            ) from None

    # -- public bits shared by every sharded class

    @property
    def n_shards(self):
        return self._n_shards

    @property
    def ntotal(self):
        return sum(self._counts)

    def __len__(self):
        return self.ntotal

    @property
    def shard_sizes(self):
        """Rows per shard (shard ``s`` holds the global ids ``s, s + n_shards, ...``)."""
        return tuple(self._counts)

    @property
    def actors(self):
        """The shards' Ray actor handles, for monitoring; call the index, not them."""
        return tuple(self._actors)

    def close(self):
        """Stops the shard actors now (dropping the index does it too, eventually)."""
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone: nothing left to stop
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __reduce__(self):
        raise TypeError(
            f"a {type(self).__name__} holds live Ray actors and cannot be pickled; save it "
            "with .save(directory) and load it where needed"
        )

    # -- calling the shards

    def _check_usable(self):
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        if self._lost:
            raise ShardLostError(self._lost, self._n_shards, self._lost)

    def _call(self, method, shards, args_for, expected=None):
        """Calls ``method`` on ``shards`` at once and returns ``{shard: payload}``.

        ``expected(s)`` is the row count shard ``s`` must report afterwards (by default, its
        current count). A shard that died or reports another count is restored from its
        save and asked again, once; if that is impossible, :class:`ShardLostError`.
        """
        self._check_usable()
        if expected is None:
            expected = self._counts.__getitem__
        used = {s: self._actors[s] for s in shards}
        refs = {s: getattr(actor, method).remote(*args_for(s)) for s, actor in used.items()}
        payloads, failures = self._collect(refs, expected)
        if failures:
            with self._recovery:
                retry = {}
                for s, reason in failures.items():
                    # Another thread may have restored this shard (or given up on it)
                    # while this one waited for the lock.
                    if s in self._lost:
                        continue
                    if self._actors[s] is used[s]:
                        problem = self._restore(s, reason)
                        if problem is not None:
                            self._lost[s] = problem
                            continue
                    retry[s] = getattr(self._actors[s], method).remote(*args_for(s))
                again, failures = self._collect(retry, expected)
                payloads.update(again)
                for s, reason in failures.items():
                    self._lost[s] = f"{reason}, again right after being restored from its save"
                if self._lost:
                    raise ShardLostError(self._lost, self._n_shards, self._lost)
        return payloads

    def _collect(self, refs, expected):
        payloads, failures = {}, {}
        try:
            # One wait for every shard; one per shard only when a failure must be pinned
            # on the shard that caused it.
            answers = dict(zip(refs, ray.get(list(refs.values()))))
        except ray.exceptions.RayActorError:
            answers = {}
        for s, ref in refs.items():
            try:
                count, payload = answers[s] if s in answers else ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                failures[s] = f"its Ray actor died ({type(exc).__name__})"
                continue
            if count != expected(s):
                failures[s] = (
                    f"its actor reported {count} rows where {expected(s)} were expected "
                    "(restarted by Ray without its data?)"
                )
                continue
            payloads[s] = payload
        return payloads, failures

    def _restore(self, s, reason):
        """Replaces shard ``s``'s actor by one loaded from its save; returns why not, or None."""
        saved = self._saved[s]
        if saved is None:
            if self._ever_saved[s]:
                why = "rows were added since its last save"
            else:
                why = "it was never saved"
            return f"{reason}, and it cannot be restored: {why}"
        paths, mmap = saved
        try:
            ray.kill(self._actors[s], no_restart=True)
        except Exception:  # already dead, which is the usual case here
            pass
        self._actors[s] = self._new_actor(s)
        try:
            count, problem = ray.get(
                self._actors[s].load.remote(paths, mmap), timeout=self._start_timeout_s
            )
        except ray.exceptions.GetTimeoutError:
            return (
                f"{reason}, and no replacement actor was running after "
                f"{self._start_timeout_s:g} s"
            )
        except ray.exceptions.RayActorError as exc:
            return f"{reason}, and its replacement actor died too ({type(exc).__name__})"
        if problem is not None:
            return f"{reason}, and restoring it from its save failed: {problem}"
        if count != self._counts[s]:
            return (
                f"{reason}, and its save at {paths[0]!r} holds {count} rows where "
                f"{self._counts[s]} are expected (the file was overwritten?)"
            )
        return None

    def _put(self, array, n_calls):
        return ray.put(array) if n_calls > 1 and array.nbytes >= _PUT_BYTES else array

    def _add_parts(self, parts):
        """Deals the rows of ``parts`` (arrays with equal row counts) round-robin."""
        n = parts[0].shape[0]
        if n == 0:
            return
        start = self.ntotal
        slices = {}
        for s in range(self._n_shards):
            first = (s - start) % self._n_shards
            if first < n:
                slices[s] = tuple(np.ascontiguousarray(p[first :: self._n_shards]) for p in parts)
        sizes = {s: rows[0].shape[0] for s, rows in slices.items()}
        self._call(
            "add", slices, lambda s: slices[s], expected=lambda s: self._counts[s] + sizes[s]
        )
        for s, size in sizes.items():
            self._counts[s] += size
            self._saved[s] = None

    def _live_shards(self):
        return [s for s in range(self._n_shards) if self._counts[s] > 0]

    # -- persistence

    def _manifest_extra(self):
        return {}

    def save(self, directory):
        """Saves every shard and then, atomically, ``directory/manifest.json``.

        ``directory`` must be the same path on every node (shared file system, or a local
        directory per node for shards pinned to nodes); it is created where missing.
        """
        self._check_usable()
        directory = os.path.abspath(os.fspath(directory))
        os.makedirs(directory, exist_ok=True)
        try:
            old = _read_manifest(directory)
        except ValueError:
            old = None
        token = uuid.uuid4().hex[:12]
        suffixes = _SUFFIXES[self.kind]
        names = [
            {suffix: f"shard-{s:05d}-{token}.{suffix}.cfs" for suffix in suffixes}
            for s in range(self._n_shards)
        ]

        def paths_for(s):
            return tuple(os.path.join(directory, names[s][suffix]) for suffix in suffixes)

        try:
            self._call("save", range(self._n_shards), lambda s: (paths_for(s),))
        except BaseException:
            # The previous save stays whole; only this attempt's files are litter.
            for s in range(self._n_shards):
                for path in paths_for(s):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            raise
        manifest = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "kind": self.kind,
            "n_shards": self._n_shards,
            "ntotal": self.ntotal,
            "routing": "round-robin: global id = shard + n_shards * local id",
            "shards": [
                {
                    "count": self._counts[s],
                    "ids": {"start": s, "step": self._n_shards, "stop": self.ntotal},
                    "files": names[s],
                }
                for s in range(self._n_shards)
            ],
            **self._manifest_extra(),
        }
        _write_json_atomically(os.path.join(directory, MANIFEST), manifest)
        for s in range(self._n_shards):
            self._saved[s] = (paths_for(s), self._mmap)
            self._ever_saved[s] = True
        if old is not None:
            self._remove_old_files(directory, old, {n for d in names for n in d.values()})

    def _remove_old_files(self, directory, old, keep):
        stale = [
            os.path.join(directory, name)
            for entry in old["shards"]
            for name in entry["files"].values()
            if name not in keep
        ]
        if not stale:
            return
        # Per-node directories: each node removes its own copies; missing files are fine.
        refs = [actor.remove.remote(stale) for actor in self._actors]
        for ref in refs:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass  # a stale file left behind wastes space but breaks nothing
        for path in stale:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @classmethod
    def _from_manifest(cls, directory, manifest, templates, mmap, **kwargs):
        self = cls.__new__(cls)
        self._init_from_manifest(manifest)
        self._start(templates, manifest["n_shards"], **kwargs)
        self._mmap = bool(mmap)
        suffixes = _SUFFIXES[manifest["kind"]]
        paths = [
            tuple(os.path.join(directory, entry["files"][x]) for x in suffixes)
            for entry in manifest["shards"]
        ]
        refs = [self._actors[s].load.remote(paths[s], mmap) for s in range(self._n_shards)]
        for s, ref in enumerate(refs):
            count, problem = ray.get(ref)
            expected = manifest["shards"][s]["count"]
            if problem is None and count != expected:
                problem = f"it holds {count} rows, the manifest says {expected}"
            if problem is not None:
                self.close()
                raise ValueError(f"cannot load shard {s} of the index in {directory!r}: {problem}")
            self._counts[s] = count
            self._saved[s] = (paths[s], bool(mmap))
            self._ever_saved[s] = True
        return self

    def _init_from_manifest(self, manifest):
        pass


def _check_template(template, name, allowed):
    if not isinstance(template, allowed):
        expected = " or ".join(t.__name__ for t in allowed)
        raise TypeError(f"{name} must be a {expected}, got {type(template).__name__}")
    if template.ntotal:
        raise ValueError(
            f"{name} must be an empty {type(template).__name__} (it gives the layout only), "
            f"got one holding {template.ntotal} rows; add them to the sharded index instead"
        )


class ShardedIndex(_Sharded):
    """A :class:`~cofisearch.BinaryIndex` or :class:`~cofisearch.FloatIndex` split over
    ``n_shards`` Ray actors, answering exactly what the single index would.

    Parameters
    ----------
    template:
        An empty ``BinaryIndex`` or ``FloatIndex`` giving the layout (``nbits``, or ``dim``
        and ``metric``).
    n_shards:
        Number of shard actors.
    address:
        Ray cluster to join when Ray is not initialised yet: ``None`` starts a local Ray,
        ``"auto"`` joins the cluster of this node, ``"HOST:PORT"`` names one. Ignored when
        Ray is already initialised.
    actor_options:
        Ray actor options (``num_cpus``, ``resources``, ``scheduling_strategy`` ...): one
        dict for every shard or a list of one dict per shard. Default: spread the shards
        over the nodes.
    start_timeout_s:
        How long to wait for every shard actor to be placed and running before raising
        ``TimeoutError`` (a cluster without the resources asked for never places them).
    """

    def __init__(self, template, n_shards, *, address=None, actor_options=None,
                 start_timeout_s=120.0):
        _check_template(template, "template", (BinaryIndex, FloatIndex))
        self.kind = template.kind
        self._start((template,), n_shards, address, actor_options, start_timeout_s)

    def _init_from_manifest(self, manifest):
        self.kind = manifest["kind"]

    @property
    def template(self):
        """An empty index of the shards' layout."""
        return _empty_like(self._templates[0])

    def _layout(self, name):
        # As on the single-machine indexes: nbits/code_size for binary data only,
        # dim/metric for float data only.
        template = self._templates[0]
        if not hasattr(template, name):
            raise AttributeError(f"a sharded {self.kind} index has no attribute {name!r}")
        return getattr(template, name)

    @property
    def nbits(self):
        return self._layout("nbits")

    @property
    def code_size(self):
        """Bytes per code."""
        return self._layout("code_size")

    @property
    def dim(self):
        return self._layout("dim")

    @property
    def metric(self):
        return self._layout("metric")

    def _check_rows(self, rows, name):
        if self.kind == "binary":
            return check_codes(rows, name, self.code_size, one_d_ok=True)
        return check_floats(rows, name, self.dim, one_d_ok=True)

    def add(self, rows):
        """Appends codes (binary) or vectors (float); they get the ids
        ``ntotal .. ntotal + n - 1``, dealt round-robin over the shards."""
        self._check_usable()
        self._add_parts((self._check_rows(rows, "codes" if self.kind == "binary" else "vectors"),))

    def search(self, queries, k, *, candidates=None, num_threads=None):
        """Exact top-``k`` over every shard; see ``BinaryIndex.search`` and
        ``FloatIndex.search``. ``candidates`` (float only) are global ids."""
        self._check_usable()
        q = self._check_rows(queries, "queries")
        k = check_k(k)
        threads = _check_threads(num_threads)
        if self.ntotal == 0:
            raise ValueError("the index is empty: add rows before searching")
        if candidates is not None:
            if self.kind == "binary":
                raise TypeError("candidates applies to a float index only; this one is binary")
            candidates = check_candidates(candidates, q.shape[0], self.ntotal)
        shards = self._live_shards()
        q_arg = self._put(q, len(shards))
        c_arg = None if candidates is None else self._put(candidates, len(shards))
        payloads = self._call("search", shards, lambda s: (q_arg, k, threads, c_arg))
        d, i = _merge([payloads[s] for s in shards], k, descending=self.kind == "float")
        return SearchResult(d, i)

    @classmethod
    def load(cls, directory, *, mmap=False, address=None, actor_options=None,
             start_timeout_s=120.0):
        """Restores a sharded index saved with :meth:`save`; each shard loads its own file
        (memory-mapped with ``mmap=True``). The shard count is the saved one."""
        directory = os.path.abspath(os.fspath(directory))
        manifest = _read_manifest(directory)
        if manifest["kind"] == "cascade":
            raise ValueError(
                f"{directory!r} holds a sharded cascade; load it with ShardedCascade.load "
                "or load_sharded"
            )
        return cls._from_manifest(
            directory, manifest, (_template_from_manifest(manifest),), mmap,
            address=address, actor_options=actor_options, start_timeout_s=start_timeout_s,
        )

    def _manifest_extra(self):
        return _layout_fields(self._templates)

    def __repr__(self):
        return (
            f"ShardedIndex({_layout_repr(self._templates[0])}, n_shards={self._n_shards}, "
            f"ntotal={self.ntotal})"
        )


def _layout_repr(template):
    if isinstance(template, BinaryIndex):
        return f"BinaryIndex({template.nbits})"
    return f"FloatIndex({template.dim}, metric={template.metric!r})"


def _layout_fields(templates):
    out = {}
    for t in templates:
        if isinstance(t, BinaryIndex):
            out["nbits"] = t.nbits
        else:
            out["dim"] = t.dim
            out["metric"] = t.metric
    return out


def _template_from_manifest(manifest, kind=None):
    kind = kind or manifest["kind"]
    try:
        if kind == "binary":
            return BinaryIndex(manifest["nbits"])
        return FloatIndex(manifest["dim"], metric=manifest["metric"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"sharded index manifest has a corrupt layout: {exc!r}") from None


_SCREENS = ("per_shard", "global")


class ShardedCascade(_Sharded):
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
        _check_template(coarse, "coarse", (BinaryIndex,))
        _check_template(fine, "fine", (FloatIndex,))
        self._set_stages(n_candidates, screen, reranker, n_rerank)
        self._start((coarse, fine), n_shards, address, actor_options, start_timeout_s)

    def _set_stages(self, n_candidates, screen, reranker, n_rerank):
        self.n_candidates, self.n_rerank = _check_stages(n_candidates, reranker, n_rerank)
        if screen not in _SCREENS:
            raise ValueError(f"screen must be one of {list(_SCREENS)}, got {screen!r}")
        self.screen = screen
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

    def add(self, codes, vectors):
        """Appends items: ``codes[i]`` and ``vectors[i]`` are one item, with id ``ntotal + i``."""
        self._check_usable()
        c = check_codes(codes, "codes", self.code_size, one_d_ok=True)
        v = check_floats(vectors, "vectors", self.dim, one_d_ok=True)
        if c.shape[0] != v.shape[0]:
            raise ValueError(
                f"codes and vectors must hold the same items: got {c.shape[0]} and "
                f"{v.shape[0]} rows"
            )
        self._add_parts((c, v))

    def search(self, query_codes, query_vectors, k, *, rerank_queries=None, num_threads=None):
        """Top-``k`` per query through the stages, as ``Cascade.search``; returns a
        :class:`~cofisearch.CascadeResult` with global ids.

        ``timings`` has the keys of ``Cascade``: with ``screen="global"``, ``"coarse"`` and
        ``"fine"`` are the driver's wall time of each round trip; with ``"per_shard"``,
        they are the slowest shard's own stage times. ``"total"`` is the driver's wall
        time, Ray's overhead included. ``candidates`` is the global screen
        ``(nq, n_candidates)`` with ``"global"``; with ``"per_shard"`` it is the union of
        the shards' screens, ``(nq, n_shards * n_candidates)``, sorted by (Hamming
        distance, id), so its first ``n_candidates`` columns are the global screen.
        """
        self._check_usable()
        k = check_k(k)
        threads = _check_threads(num_threads)
        n_codes = _rows(query_codes, "query_codes")
        n_vectors = _rows(query_vectors, "query_vectors")
        if n_codes != n_vectors:
            raise ValueError(
                f"query_codes and query_vectors must hold the same queries: got {n_codes} "
                f"and {n_vectors} rows"
            )
        qc = check_codes(query_codes, "query_codes", self.code_size, one_d_ok=True)
        qv = check_floats(query_vectors, "query_vectors", self.dim, one_d_ok=True)
        if self.ntotal == 0:
            raise ValueError("the index is empty: add items before searching")
        depth = max(k, self.n_rerank) if self.reranker is not None else k
        shards = self._live_shards()
        qc_arg = self._put(qc, len(shards))
        qv_arg = self._put(qv, len(shards))
        t0 = time.perf_counter()
        if self.screen == "global":
            got = self._call("screen", shards, lambda s: (qc_arg, self.n_candidates, threads))
            _, candidates = _merge([got[s] for s in shards], self.n_candidates, descending=False)
            t1 = time.perf_counter()
            c_arg = self._put(candidates, len(shards))
            got = self._call("rerank", shards, lambda s: (qv_arg, c_arg, depth, threads))
            scores, ids = _merge([got[s] for s in shards], depth, descending=True)
            coarse_s, fine_s = t1 - t0, time.perf_counter() - t1
        else:
            got = self._call(
                "cascade", shards, lambda s: (qc_arg, qv_arg, self.n_candidates, depth, threads)
            )
            parts = [got[s] for s in shards]
            scores, ids = _merge([p[:2] for p in parts], depth, descending=True)
            width = len(parts) * self.n_candidates
            _, candidates = _merge([p[2:4] for p in parts], width, descending=False)
            coarse_s = max(p[4] for p in parts)
            fine_s = max(p[5] for p in parts)
        return _last_stage(self.reranker, self.n_rerank, query_vectors, rerank_queries,
                           scores, ids, k, candidates, coarse_s, fine_s, t0)

    @classmethod
    def load(cls, directory, *, n_candidates=None, screen=None, reranker=None, n_rerank=None,
             mmap=False, address=None, actor_options=None, start_timeout_s=120.0):
        """Restores a sharded cascade saved with :meth:`save`. ``n_candidates`` and
        ``screen`` default to the saved ones; a reranker, being code, is never saved."""
        directory = os.path.abspath(os.fspath(directory))
        manifest = _read_manifest(directory)
        if manifest["kind"] != "cascade":
            raise ValueError(
                f"{directory!r} holds a sharded {manifest['kind']} index; load it with "
                "ShardedIndex.load or load_sharded"
            )
        templates = (
            _template_from_manifest(manifest, "binary"),
            _template_from_manifest(manifest, "float"),
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
            **_layout_fields(self._templates),
            "n_candidates": self.n_candidates,
            "screen": self.screen,
        }

    def __repr__(self):
        return (
            f"ShardedCascade(coarse={_layout_repr(self._templates[0])}, "
            f"fine={_layout_repr(self._templates[1])}, "
            f"n_shards={self._n_shards}, ntotal={self.ntotal}, n_candidates={self.n_candidates}, "
            f"screen={self.screen!r}, reranker={self.reranker!r}, n_rerank={self.n_rerank})"
        )


def load_sharded(directory, *, mmap=False, address=None, actor_options=None,
                 start_timeout_s=120.0):
    """Restores a :class:`ShardedIndex` or :class:`ShardedCascade` from the directory it
    was saved to, whichever the manifest says it holds."""
    manifest = _read_manifest(os.path.abspath(os.fspath(directory)))
    cls = ShardedCascade if manifest["kind"] == "cascade" else ShardedIndex
    return cls.load(
        directory, mmap=mmap, address=address, actor_options=actor_options,
        start_timeout_s=start_timeout_s,
    )

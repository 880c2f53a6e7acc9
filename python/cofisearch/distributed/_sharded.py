"""What every sharded class shares: the shard actors, calling them, ids, faults,
persistence.

:class:`Sharded` starts ``n_shards`` :class:`~._shard.Shard` actors, routes each item to
shard ``id % n_shards`` (as the shard id ``id // n_shards``), calls the shards all at once
and checks each answer's item count; a shard that died or came back empty is restored
from its last save and asked again, once, or the index raises :class:`ShardLostError`
and refuses every later call. ``save`` and the loading of a save follow :mod:`._manifest`.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np
import ray
import ray.exceptions

from .._checks import check_float, check_ids, check_num_threads, check_positive_int
from .._index import BinaryIndex
from .._rows import MAX_ID, check_new_ids
from ._manifest import read_manifest, shard_file_names, shard_paths, write_manifest
from ._shard import ShardActor, empty_like

# Below this size a query batch travels inline with each call; above it, one copy in the
# object store is cheaper than one serialised copy per shard.
_PUT_BYTES = 64 << 10
_DEFAULT_ACTOR_OPTIONS = {"scheduling_strategy": "SPREAD"}
# Between two replacement actors for one shard, when the first died on arrival.
_RETRY_PAUSE_S = 0.5


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


def ensure_ray(address):
    """Starts or joins Ray unless it is initialised (``address`` as for the sharded
    classes: ``None`` starts a local Ray)."""
    if ray.is_initialized():
        return
    if address is None:
        # The dashboard needs extra packages and a port; a library has no use for it.
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)


def _actor_options(actor_options, n_shards):
    """One options dict per shard, each over the default placement."""
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


def check_threads(num_threads):
    # None travels as None: each shard then uses its own node's default, not the driver's.
    return None if num_threads is None else check_num_threads(num_threads)


class Sharded:
    """Actors, routing, fault handling and persistence shared by the sharded classes."""

    kind = None

    def _start(self, templates, n_shards, address, actor_options, start_timeout_s):
        self._n_shards = check_positive_int(n_shards, "n_shards")
        self._start_timeout_s = check_float(start_timeout_s, "start_timeout_s", above=0)
        self._templates = tuple(empty_like(t) for t in templates)
        self._options = _actor_options(actor_options, self._n_shards)
        self._counts = [0] * self._n_shards
        # One past the largest id ever held: the first id of an add without ids.
        self._next_id = 0
        # Per shard: (paths, mmap, checksums, sequential) of a save that matches its
        # items, or None.
        self._saved = [None] * self._n_shards
        self._ever_saved = [False] * self._n_shards
        self._mmap = False
        self._lost = {}
        self._closed = False
        self._recovery = threading.Lock()
        ensure_ray(address)
        self._actors = [self._new_actor(s) for s in range(self._n_shards)]
        self._wait_started(range(self._n_shards))

    def _new_actor(self, s):
        return ShardActor.options(**self._options[s]).remote(s, self._n_shards, self._templates)

    def _wait_started(self, shards):
        refs = [self._actors[s].count.remote() for s in shards]
        try:
            ray.get(refs, timeout=self._start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise TimeoutError(
                f"the {self._n_shards} shard actors were not all running after "
                f"{self._start_timeout_s:g} s: the cluster may lack the resources that "
                f"actor_options asks for ({self._options[0]}; an actor that names a resource "
                "also holds a CPU unless num_cpus is given); see ray.cluster_resources()"
            ) from None

    # -- public bits shared by every sharded class

    @property
    def n_shards(self):
        return self._n_shards

    @property
    def ntotal(self):
        """Items present (added and not removed)."""
        return sum(self._counts)

    def __len__(self):
        return self.ntotal

    @property
    def shard_sizes(self):
        """Items present per shard (shard ``s`` holds the ids ``g`` with ``g % n_shards ==
        s``)."""
        return tuple(self._counts)

    @property
    def ids(self):
        """The ids of the present items, int64, ascending (gathered from every shard: a
        round trip and a copy of them all)."""
        self._check_usable()
        shards = self._live_shards()
        if not shards:
            return np.empty(0, dtype=np.int64)
        got = self._call("ids", shards, lambda s: ())
        return np.sort(np.concatenate([got[s] for s in shards]))

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

        ``expected(s, payload)`` is the item count shard ``s`` must report afterwards (by
        default, its current count). A shard that died or reports another count is
        restored from its save and asked again, once; if that is impossible,
        :class:`ShardLostError`.
        """
        self._check_usable()
        if expected is None:
            def expected(s, _):
                return self._counts[s]
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
            want = expected(s, payload)
            if count != want:
                failures[s] = (
                    f"its actor reported {count} items where {want} were expected "
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
                why = "items were added or removed since its last save"
            else:
                why = "it was never saved"
            return f"{reason}, and it cannot be restored: {why}"
        paths, mmap, checksums, sequential = saved
        # A node that has just died is still alive to Ray's scheduler until its health
        # checks lapse (seconds): a replacement may be placed there and die at once.
        # Another one is tried, until the start timeout, rather than giving up a shard
        # that the rest of the cluster could hold.
        deadline = time.monotonic() + self._start_timeout_s
        attempts = 0
        while True:
            try:
                ray.kill(self._actors[s], no_restart=True)
            except Exception:  # already dead, which is the usual case here
                pass
            self._actors[s] = self._new_actor(s)
            attempts += 1
            try:
                count, (problem, _) = ray.get(
                    self._actors[s].load.remote(paths, mmap, checksums, sequential),
                    timeout=max(deadline - time.monotonic(), 0.0),
                )
                break
            except ray.exceptions.GetTimeoutError:
                return (
                    f"{reason}, and no replacement actor was running after "
                    f"{self._start_timeout_s:g} s"
                )
            except ray.exceptions.RayActorError as exc:
                if time.monotonic() + _RETRY_PAUSE_S >= deadline:
                    tried = "its replacement actor" if attempts == 1 else (
                        f"its {attempts} replacement actors"
                    )
                    return f"{reason}, and {tried} died too ({type(exc).__name__})"
                time.sleep(_RETRY_PAUSE_S)
        if problem is not None:
            return f"{reason}, and restoring it from its save failed: {problem}"
        if count != self._counts[s]:
            return (
                f"{reason}, and its save at {paths[0]!r} holds {count} items where "
                f"{self._counts[s]} are expected (the file was overwritten?)"
            )
        return None

    def _put(self, array, n_calls):
        return ray.put(array) if n_calls > 1 and array.nbytes >= _PUT_BYTES else array

    def _live_shards(self):
        return [s for s in range(self._n_shards) if self._counts[s] > 0]

    # -- ids

    def _by_shard(self, ids):
        """Per shard, the positions in ``ids`` (non-negative int64) of those it holds, in
        their order in ``ids``."""
        n = self._n_shards
        if n == 1:
            return [np.arange(ids.size)]
        # Shard numbers in 16 bits sort by radix, in one pass.
        shard_of = (ids % n).astype(np.uint16 if n <= 1 << 16 else np.int64)
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(n + 1))
        return [order[bounds[s] : bounds[s + 1]] for s in range(n)]

    def _local_ids(self, ids, name):
        """Per shard, the shard ids of the ``ids`` it may hold (checked as ``name``;
        negative ids and ids never given name no item and are dropped)."""
        ids = check_ids(ids, name)
        ids = ids[(ids >= 0) & (ids < self._next_id)]
        return [ids[at] // self._n_shards for at in self._by_shard(ids)]

    def _checked_new_ids(self, ids, m):
        """The ``m`` ids of an add, checked before any shard changes: non-negative,
        unique, none present (the shards that may hold one are asked)."""
        return check_new_ids(ids, m, self._present)

    def _present(self, new):
        """The ids of ``new`` that some shard holds, ascending (only the shards that may
        hold one are asked)."""
        ordered = np.sort(new)
        # An id at or past next_id was never held.
        local = self._local_ids(ordered[ordered < self._next_id], "ids")
        asked = [s for s in range(self._n_shards) if local[s].size and self._counts[s]]
        if not asked:
            return ordered[:0]
        got = self._call("present", asked, lambda s: (local[s],))
        return np.sort(np.concatenate([got[s] for s in asked]))

    def _add_items(self, parts, ids):
        """Adds the items of ``parts`` (arrays with equal row counts, one per shard index)
        as ``ids``, or as the next sequential ids; each goes to shard ``id % n_shards``."""
        n = self._n_shards
        m = parts[0].shape[0]
        batches = {}
        if ids is None:
            start = self._next_id
            if start > MAX_ID + 1 - m:
                raise ValueError(f"no sequential ids left after {start - 1}: pass ids")
            if m == 0:
                return
            # Round-robin from start: strided slices, and consecutive shard ids.
            for s in range(n):
                first = (s - start) % n
                if first < m:
                    rows = tuple(np.ascontiguousarray(p[first::n]) for p in parts)
                    lo = (start + first) // n
                    batches[s] = (range(lo, lo + rows[0].shape[0]), *rows)
            end = start + m
        else:
            new = self._checked_new_ids(ids, m)
            if m == 0:
                return
            for s, at in enumerate(self._by_shard(new)):
                if at.size:
                    batches[s] = (new[at] // n, *(np.ascontiguousarray(p[at]) for p in parts))
            end = max(self._next_id, int(new.max()) + 1)
        sizes = {s: batch[1].shape[0] for s, batch in batches.items()}
        self._call(
            "add", batches, lambda s: batches[s],
            expected=lambda s, _: self._counts[s] + sizes[s],
        )
        for s, size in sizes.items():
            self._counts[s] += size
            self._saved[s] = None
        self._next_id = end

    def remove(self, ids):
        """Removes the items with these ids from the shards that hold them; returns how
        many were present (absent ids are ignored). They never appear in a result again;
        each shard reclaims their space as a single index does (see ``BinaryIndex``)."""
        self._check_usable()
        local = self._local_ids(ids, "ids")
        asked = [s for s in range(self._n_shards) if local[s].size and self._counts[s]]
        if not asked:
            return 0
        got = self._call(
            "remove", asked, lambda s: (local[s],),
            expected=lambda s, removed: self._counts[s] - removed,
        )
        for s in asked:
            if got[s]:
                self._counts[s] -= got[s]
                self._saved[s] = None
        return sum(got.values())

    def compact(self):
        """Has every shard rewrite its rows without the removed ones now (see
        ``BinaryIndex.compact``); searches may run meanwhile."""
        self._check_usable()
        self._call("compact", range(self._n_shards), lambda s: ())

    def _allowed_per_shard(self, allowed):
        """``allowed`` (global ids) as each shard's own, or None for no filter."""
        return None if allowed is None else self._local_ids(allowed, "allowed")

    # -- persistence

    def _manifest_extra(self):
        return {}

    def save(self, directory):
        """Saves every shard and then, atomically, ``directory/manifest.json``.

        ``directory`` must be the same path on every node (shared file system, or a local
        directory per node for shards pinned to nodes); it is created where missing.
        Removed items are not written (each shard file is compacted).
        """
        self._check_usable()
        directory = os.path.abspath(os.fspath(directory))
        os.makedirs(directory, exist_ok=True)
        try:
            old = read_manifest(directory)
        except ValueError:
            old = None
        names = shard_file_names(self.kind, self._n_shards, uuid.uuid4().hex[:12])
        paths = shard_paths(directory, self.kind, names)
        try:
            got = self._call("save", range(self._n_shards), lambda s: (paths[s],))
        except BaseException:
            # The previous save stays whole; only this attempt's files are litter.
            for path in (p for shard in paths for p in shard):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            raise
        checksums = [got[s][0] for s in range(self._n_shards)]
        sequential = [got[s][1] for s in range(self._n_shards)]
        write_manifest(
            directory, kind=self.kind, counts=self._counts, next_id=self._next_id,
            sequential=sequential, file_names=names, checksums=checksums,
            extra=self._manifest_extra(),
        )
        for s in range(self._n_shards):
            self._saved[s] = (paths[s], self._mmap, checksums[s], sequential[s])
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
        refs = [actor.unlink.remote(stale) for actor in self._actors]
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
        entries = manifest["shards"]
        paths = shard_paths(directory, manifest["kind"], [entry["files"] for entry in entries])
        refs = [
            self._actors[s].load.remote(
                paths[s], mmap, entries[s].get("checksums"), entries[s]["sequential"]
            )
            for s in range(self._n_shards)
        ]
        next_id = manifest["next_id"]
        for s, ref in enumerate(refs):
            count, (problem, largest) = ray.get(ref)
            expected = entries[s]["count"]
            if problem is None and count != expected:
                problem = f"it holds {count} items, the manifest says {expected}"
            if problem is not None:
                self.close()
                raise ValueError(f"cannot load shard {s} of the index in {directory!r}: {problem}")
            self._counts[s] = count
            self._saved[s] = (paths[s], bool(mmap), entries[s].get("checksums"),
                              entries[s]["sequential"])
            self._ever_saved[s] = True
            # The ids the files hold are never given again, whatever next_id says.
            next_id = max(next_id, largest + 1)
        self._next_id = next_id
        return self

    def _init_from_manifest(self, manifest):
        pass


def check_template(template, name, allowed):
    """An empty index of one of the ``allowed`` classes, giving a shard's layout."""
    if not isinstance(template, allowed):
        expected = " or ".join(t.__name__ for t in allowed)
        raise TypeError(f"{name} must be a {expected}, got {type(template).__name__}")
    if template.ntotal:
        raise ValueError(
            f"{name} must be an empty {type(template).__name__} (it gives the layout only), "
            f"got one holding {template.ntotal} rows; add them to the sharded index instead"
        )


def layout_repr(template):
    """How a sharded class's repr shows the layout of an empty index."""
    if isinstance(template, BinaryIndex):
        return f"BinaryIndex({template.nbits})"
    return f"FloatIndex({template.dim}, metric={template.metric!r})"

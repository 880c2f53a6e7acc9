"""Sharded exact search on Ray: one database spread over many processes or machines.

A :class:`ShardedIndex` splits a binary or float database over ``n_shards`` Ray actors,
each holding an ordinary :class:`~cofisearch.BinaryIndex` or
:class:`~cofisearch.FloatIndex`; :class:`ShardedCascade` does the same for the
coarse-to-fine cascade. Both answer exactly what one index holding all the data answers:
the same ids, the same distances, the same order and the same tie-break (smaller id
first), with the same padding (id ``-1``) when fewer than ``k`` results exist.

Install with ``pip install "cofisearch[ray]"``. Ray is optional for the rest of the
package: ``import cofisearch`` never imports it, and importing this package without Ray
raises ``ImportError`` at once (at import, not later at construction, so that a missing
dependency shows up where the module is named).

How it works
------------
- **Id routing.** Item ``g`` lives on shard ``g % n_shards`` as the shard's id
  ``g // n_shards``. Items added without ids get the next sequential ids, so they are
  dealt round-robin: shards stay balanced within one item whatever the batch sizes, and
  hold the shard ids ``0, 1, 2, ...``, for which they store no id map (nothing per item
  beyond the data). On every shard the order of shard ids is the order of global ids,
  so each shard's own top-k, tie-break included, is already the top-k of its part of
  the database in global terms.
- **Ids, removals, filters.** ``add(data, ids=...)`` names the items by the caller's
  int64 ids (unique, non-negative, none present: checked on the driver, asking the
  shards that may hold one, before any shard changes); ``remove(ids)`` forwards each id
  to its shard and returns how many were present; ``search(..., allowed=ids)`` sends
  each shard the allowed ids it holds, which it checks inside its scan, so the merged
  top-k is the exact top-k among the allowed items. ``ids`` gathers the present ids.
- **Search.** One remote call per shard per query batch, all shards at once; a large
  query batch is put in Ray's object store once and read there by every shard. Shards
  search with the engine's own threads (``num_threads`` is passed through; by default
  each shard uses every CPU of its node, whatever ``cofisearch.set_num_threads`` says
  in the driver, so with several shards per node pass ``num_threads`` = cores per node
  // shards per node). The driver merges the per-shard top-k into the global one,
  ordered as the engine orders (distance, then id), with one vectorised sort per batch.
- **Faults.** Every answer carries the shard's row count, checked against what the driver
  expects. When a shard's actor has died (or came back empty, restarted by Ray), the call
  is retried once on a fresh actor restored from the shard's last save, if the shard was
  saved and nothing was added to it or removed from it since; otherwise :class:`ShardLostError` names the
  lost shards, and the index refuses every later call. Results are never assembled from
  the surviving shards alone. The fresh actor goes where ``actor_options`` allow: a shard
  pinned to a node that died waits for that node to come back, up to
  ``start_timeout_s``, then is lost; a replacement that dies on arrival (placed on a node
  Ray does not know yet to be dead) is followed by another until ``start_timeout_s``.
- **Persistence.** ``save(directory)`` has each shard write its own file(s) in the
  engine's format (see :func:`cofisearch.load_index`), then writes ``manifest.json``
  atomically (with the ids: each shard file keeps its items' ids, the manifest the next
  sequential id); files of the previous save in that directory are removed only after
  the new manifest is in place, so a crash mid-save leaves the previous save whole.
  Manifests written before ids existed (version 1) still load.
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

(A head runs with token authentication whenever ``~/.ray/auth_token`` exists, and then
refuses nodes and drivers that lack the token: give every node and the driver the same
token, as ``RAY_AUTH_MODE=token`` plus ``RAY_AUTH_TOKEN`` or that file, e.g. from
``ray get-auth-token --generate`` on the head.) Then run the driver on any node of the cluster::

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
``{"resources": {"big_memory": 1}, "num_cpus": 0}``) or a list with one dict per shard
(e.g. a custom resource that only one node has, or a
``NodeAffinitySchedulingStrategy``, to pin shard ``s`` to a node and its per-node save
directory; ``soft=True`` lets a lost shard be restored elsewhere). Several shards per node
are fine. Ray's rule: an actor that names any resource also holds one CPU for its
lifetime unless ``num_cpus`` says otherwise, so without ``"num_cpus": 0`` a node places
no more such shards than it has CPUs.

Modules: :mod:`.index` holds :class:`ShardedIndex`, :mod:`.cascade`
:class:`ShardedCascade`; the private ``_sharded`` (actors, calls, faults, saving),
``_shard`` (the actor) and ``_manifest`` (the on-disk format) are shared by both.

Threads: one driver may search a sharded index from several threads (and ``compact``
meanwhile); each shard answers one call at a time, in the order they were sent. ``add``,
``remove`` and ``save`` must not overlap other calls on the same index: a search that
overlapped a ``remove`` could see it done on one shard and not yet on another.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401  (checked here, once, so that the error names the extra)
except ImportError as exc:
    raise ImportError(
        'cofisearch.distributed needs Ray, which is not installed: pip install "cofisearch[ray]"'
    ) from exc

import os

from ._manifest import MANIFEST, read_manifest  # noqa: F401  (MANIFEST: public, the file name)
from ._sharded import ShardLostError
from .cascade import ShardedCascade
from .index import ShardedIndex

__all__ = ["ShardLostError", "ShardedCascade", "ShardedIndex", "load_sharded"]


def load_sharded(directory, *, mmap=False, address=None, actor_options=None,
                 start_timeout_s=120.0):
    """Restores a :class:`ShardedIndex` or :class:`ShardedCascade` from the directory it
    was saved to, whichever the manifest says it holds."""
    manifest = read_manifest(os.path.abspath(os.fspath(directory)))
    cls = ShardedCascade if manifest["kind"] == "cascade" else ShardedIndex
    return cls.load(
        directory, mmap=mmap, address=address, actor_options=actor_options,
        start_timeout_s=start_timeout_s,
    )

"""ShardedIndex: one BinaryIndex or FloatIndex split over Ray actors, answering exactly
what the single index answers."""

from __future__ import annotations

import os

from .._checks import check_codes, check_floats, check_k
from .._index import BinaryIndex, FloatIndex, SearchResult, check_candidates
from .._reference import merge_topk
from ._manifest import layout_fields, read_manifest, template_from_manifest
from ._shard import empty_like
from ._sharded import Sharded, check_template, check_threads, layout_repr


class ShardedIndex(Sharded):
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
        check_template(template, "template", (BinaryIndex, FloatIndex))
        self.kind = template.kind
        self._start((template,), n_shards, address, actor_options, start_timeout_s)

    def _init_from_manifest(self, manifest):
        self.kind = manifest["kind"]

    @property
    def template(self):
        """An empty index of the shards' layout."""
        return empty_like(self._templates[0])

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

    def add(self, rows, *, ids=None):
        """Adds codes (binary) or vectors (float) as the items ``ids`` (int64, unique,
        non-negative, none present already: otherwise ``ValueError`` naming them, and no
        shard changes), or as the next sequential ids, one past the largest id the index
        ever held (``ntotal .. ntotal + n - 1`` while no ids were given or removed). Item
        ``g`` goes to shard ``g % n_shards``: sequential ids are dealt round-robin."""
        self._check_usable()
        checked = self._check_rows(rows, "codes" if self.kind == "binary" else "vectors")
        self._add_items((checked,), ids)

    def search(self, queries, k, *, candidates=None, allowed=None, num_threads=None):
        """Exact top-``k`` over every shard; see ``BinaryIndex.search`` and
        ``FloatIndex.search``. ``candidates`` (float only) and ``allowed`` (a 1-D array of
        ids: results only among them, ``k`` whenever ``k`` allowed items are present) are
        the index's ids; each shard gets the allowed ids it holds and filters in its scan."""
        self._check_usable()
        q = self._check_rows(queries, "queries")
        k = check_k(k)
        threads = check_threads(num_threads)
        if candidates is not None and self.kind == "binary":
            raise TypeError("candidates applies to a float index only; this one is binary")
        allowed = self._allowed_per_shard(allowed)
        if self.ntotal == 0:
            raise ValueError("the index is empty: add rows before searching")
        if candidates is not None:
            candidates = check_candidates(candidates, q.shape[0], self._next_id)
        shards = self._live_shards()
        q_arg = self._put(q, len(shards))
        c_arg = None if candidates is None else self._put(candidates, len(shards))
        payloads = self._call(
            "search", shards,
            lambda s: (q_arg, k, threads, c_arg, None if allowed is None else allowed[s]),
        )
        # Each shard's answer is the exact top-k of its rows, so the global top-k is
        # among their union.
        d, i = merge_topk([payloads[s] for s in shards], k, largest=self.kind == "float")
        return SearchResult(d, i)

    @classmethod
    def load(cls, directory, *, mmap=False, address=None, actor_options=None,
             start_timeout_s=120.0):
        """Restores a sharded index saved with :meth:`save`; each shard loads its own file
        (memory-mapped with ``mmap=True``). The shard count is the saved one."""
        directory = os.path.abspath(os.fspath(directory))
        manifest = read_manifest(directory)
        if manifest["kind"] == "cascade":
            raise ValueError(
                f"{directory!r} holds a sharded cascade; load it with ShardedCascade.load "
                "or load_sharded"
            )
        return cls._from_manifest(
            directory, manifest, (template_from_manifest(manifest),), mmap,
            address=address, actor_options=actor_options, start_timeout_s=start_timeout_s,
        )

    def _manifest_extra(self):
        return layout_fields(self._templates)

    def __repr__(self):
        return (
            f"ShardedIndex({layout_repr(self._templates[0])}, n_shards={self._n_shards}, "
            f"ntotal={self.ntotal})"
        )

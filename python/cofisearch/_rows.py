"""The rows an exact index holds, and what a search of them scans: the growing storage,
the caller's ids and removals (published as one snapshot), the compaction, and the plan
of a filtered search (a bitmap of rows, a packed copy of them, or a gather of a few).
Shared by :class:`~cofisearch.BinaryIndex` and :class:`~cofisearch.FloatIndex` (the
public behaviour is documented in ``_index``), and in part by the IVF index and the
sharded driver.
"""

from __future__ import annotations

import threading

import numpy as np

from ._checks import check_ids

# Ids are int64 but the heaps key on (distance, id); keep both far from overflow.
MAX_ROWS = 1 << 40


class Items:
    """The caller's ids and the removals of one storage, published as one object that is
    never changed once published (a remove publishes a new one; an add writes only past
    the rows already published, as the storage does).

    ids: int64, row ``r`` holds item ``ids[r]`` (at least as many entries as the storage
        has rows), or None where row ``r`` holds item ``r``.
    ascending: the ids increase with the row, so ties by id are ties by row.
    live: uint64 words, bit ``r`` set while row ``r`` is present, or None (all present).
    dead: rows removed and not yet compacted away.
    next_id: the id ``add`` gives the next row without ids.
    """

    __slots__ = ("_order", "ascending", "dead", "ids", "live", "next_id")

    def __init__(self, ids, ascending, live, dead, next_id):
        self.ids = ids
        self.ascending = ascending
        self.live = live
        self.dead = dead
        self.next_id = next_id
        self._order = None

    def id_of(self, rows):
        return rows if self.ids is None else self.ids[rows]

    def present(self, rows):
        """Whether each of ``rows`` holds a present item."""
        if self.live is None:
            return np.ones(rows.shape, dtype=bool)
        return (self.live[rows >> 6] >> (rows & 63).astype(np.uint64)) & np.uint64(1) != 0

    def present_rows(self, n):
        """A boolean mask of the first ``n`` rows: present or removed."""
        if self.live is None:
            return np.ones(n, dtype=bool)
        return np.unpackbits(self.live.view(np.uint8), count=n, bitorder="little").view(bool)

    def rows_of(self, ids, n):
        """The row holding each of ``ids`` among the first ``n`` rows, or -1 where the id
        is not present."""
        if self.ids is None:
            rows = np.where((ids >= 0) & (ids < n), ids, -1)
        else:
            keys = self.ids[:n]
            order = None if self.ascending else self._sorted(n)
            ordered = keys if order is None else keys[order]
            if n == 0:
                return np.full(ids.shape, -1, dtype=np.int64)
            at = np.minimum(np.searchsorted(ordered, ids), n - 1)
            found = ordered[at] == ids
            rows = np.where(found, at if order is None else order[at], -1)
            # An id removed and added again is held by a removed row and a present one
            # (only without ascending ids): pick the present one. Rare, so one by one.
            if order is not None:
                for j in np.flatnonzero(found & ~self.present(np.maximum(rows, 0))):
                    lo, hi = np.searchsorted(ordered, [ids[j], ids[j] + 1])
                    held = order[lo:hi]
                    held = held[self.present(held)]
                    rows[j] = held[0] if held.size else -1
        if self.live is None:
            return rows
        hit = rows >= 0
        hit[hit] = self.present(rows[hit])
        return np.where(hit, rows, -1)

    def _sorted(self, n):
        cached = self._order
        if cached is None or cached[0] != n:
            # Stable: an id held by a removed row and a present one sorts removed first.
            cached = (n, np.argsort(self.ids[:n], kind="stable"))
            self._order = cached
        return cached[1]


def row_words(mask):
    """A boolean row mask as uint64 words, bit r % 64 of word r // 64."""
    bits = np.packbits(mask, bitorder="little")
    padded = np.zeros(-(-bits.size // 8) * 8, dtype=np.uint8)
    padded[: bits.size] = bits
    return padded.view(np.uint64)


class Storage:
    """A growable 2-D buffer whose live rows are published as one immutable snapshot.

    ``snapshot`` is a ``(buffer, n)`` pair replaced in a single assignment, so a reader
    that takes it once sees rows ``[0, n)`` of that buffer as they were when it was
    published: appends write only past ``n`` (or into a new buffer) before publishing.
    Appends are serialised by a lock; reads take no lock.

    With ``track_norm`` it also keeps an upper bound on the norm of every row, raised
    before each snapshot is published, so a reader that takes the snapshot first and the
    bound second always gets a bound that holds for its rows.
    """

    def __init__(self, width, dtype, rows=None, *, track_norm=False, items=None):
        self._lock = threading.Lock()
        # None for an index that never had ids or removals: it pays for neither. Published
        # before each snapshot that needs it, so a reader that takes the snapshot first
        # and the items second gets items that cover its rows.
        self.items = items
        self._track_norm = track_norm
        # None where no bound is known yet (rows restored from a file or a pickle).
        self._norm_bound = 0.0 if rows is None else None
        if rows is None:
            rows = np.empty((0, width), dtype=dtype)
        self.snapshot = (rows, rows.shape[0])

    @property
    def n(self):
        return self.snapshot[1]

    def append(self, rows):
        """Appends ``rows`` and returns the new snapshot."""
        with self._lock:
            buffer, n = self.snapshot
            needed = n + rows.shape[0]
            if needed > MAX_ROWS:
                raise ValueError(
                    f"an index holds at most {MAX_ROWS} rows, adding would give {needed}"
                )
            if needed > buffer.shape[0] or not buffer.flags.writeable:
                capacity = needed if n == 0 else max(needed, buffer.shape[0] * 3 // 2)
                grown = np.empty((capacity, buffer.shape[1]), dtype=buffer.dtype)
                grown[:n] = buffer[:n]
                buffer = grown
            buffer[n:needed] = rows
            if self._track_norm and self._norm_bound is not None:
                self._norm_bound = max(self._norm_bound, _max_norm(rows))
            self.snapshot = (buffer, needed)
            return self.snapshot

    def norm_bound(self):
        """An upper bound on the norm of every row of any snapshot taken before the call."""
        bound = self._norm_bound
        if bound is None:
            with self._lock:
                if self._norm_bound is None:
                    buffer, n = self.snapshot
                    self._norm_bound = _max_norm(buffer[:n])
                bound = self._norm_bound
        return bound

    def view(self):
        buffer, n = self.snapshot
        v = buffer[:n]
        if v.flags.writeable:
            v = v.view()
            v.flags.writeable = False
        return v


# A quarter of the rows removed: the next add compacts first (the tombstones cost a
# quarter of every scan, and the compaction a copy of the rows once).
_COMPACT_FRACTION = 4
# A filter of at most this many present items, or of a 1 / _GATHER_FRACTION[kind] part of
# the rows, computes the distances of its rows only instead of scanning every row. The
# crossover, measured by bench/filters.py (1,000 queries, k = 10, one thread, AVX-512,
# Intel Xeon @2.80GHz model 106): 1M 64-bit codes, gather / scan 0.142 / 0.203 s at 1%,
# 1.56 / 0.141 s at 10%, so even near 1.4%; 200k 512-d floats 0.217 / 3.0 s at 1%,
# 3.23 / 2.36 s at 10%, so even near 7.5%. A gather reads its rows at random, so the
# fractions stay below the crossovers.
GATHER_ROWS = 4096
_GATHER_FRACTION = {"binary": 64, "float": 16}
# The gather pays for a few queries only: it reads each query's rows at random. A batch
# of at least PACK_QUERIES, and a larger filter, is searched by packing the allowed rows
# into a contiguous copy scanned by the unfiltered kernels, when that costs less than
# scanning every row with the bitmap: a batch is compute-bound, so packing pays up to
# _PACK_MOST of the rows; fewer queries read memory at the rate a scan does, and a copy
# (a read and a write of the allowed rows, then the scan of them) pays only below
# _PACK_FEW of them. The copy is bounded by PACK_BYTES; past it the bitmap scan runs.
# Measured by bench/filters.py (1,000 queries, one thread, AVX-512, Intel Xeon @2.80GHz
# model 106): 1M 64-bit codes at 1% pack 0.004 s, gather 0.133 s, bitmap scan 0.195 s;
# at 50% pack 0.086 s, bitmap scan 0.121 s; 200k 512-d floats at 50% pack 1.5 s, bitmap
# scan 2.9 s.
PACK_QUERIES = 8
_PACK_MOST = 0.75
_PACK_FEW = 0.25
PACK_BYTES = 256 << 20
MAX_ID = np.iinfo(np.int64).max


def quote_ids(ids, limit=8):
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def check_new_ids(ids, m, present):
    """The caller's ids for ``m`` new items, as int64: non-negative and unique, and none
    of them among ``present(new)``, the ids of ``new`` that an index already holds; else a
    ValueError naming the offending ids. Shared by every index that takes ids."""
    new = check_ids(ids, "ids", count=m)
    negative = new[new < 0]
    if negative.size:
        raise ValueError(f"ids must be non-negative, got {quote_ids(negative)}")
    ordered = np.sort(new)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size:
        raise ValueError(f"ids must be unique, got repeated id(s) {quote_ids(np.unique(repeated))}")
    held = present(new)
    if held.size:
        raise ValueError(f"ids already present in the index: {quote_ids(held)}")
    return new


class Indexed:
    """The caller's ids, removals and filters, shared by both exact indexes. A subclass
    has ``_store`` (a :class:`Storage`), ``_lock`` (serialising every change) and
    ``_new_storage(rows, items)``."""

    @property
    def ntotal(self):
        """Items present (added and not removed)."""
        store = self._store
        n = store.n
        items = store.items
        return n - items.dead if items is not None else n

    def __len__(self):
        return self.ntotal

    def _present_view(self):
        store = self._store
        buffer, n = store.snapshot
        items = store.items
        if items is None or items.dead == 0:
            return store.view()
        rows = buffer[:n][items.present_rows(n)]
        rows.flags.writeable = False
        return rows

    @property
    def ids(self):
        """The ids of the present items, int64, in the order of ``codes`` / ``vectors``."""
        store = self._store
        _, n = store.snapshot
        items = store.items
        if items is None:
            return np.arange(n, dtype=np.int64)
        ids = np.arange(n, dtype=np.int64) if items.ids is None else items.ids[:n].copy()
        return ids[items.present_rows(n)] if items.dead else ids

    def _append(self, rows, ids):
        with self._lock:
            store = self._store
            items = store.items
            if items is not None and items.dead and items.dead * _COMPACT_FRACTION >= store.n:
                store = self._compact_locked()
                items = store.items
            if ids is None and items is None:
                store.append(rows)
                return
            n = store.n
            m = rows.shape[0]
            if n + m > MAX_ROWS:
                raise ValueError(f"an index holds at most {MAX_ROWS} rows, adding would give {n + m}")
            if items is None:
                items = Items(None, True, None, 0, n)
            if ids is None:
                if items.next_id > MAX_ID - m:
                    raise ValueError(f"no sequential ids left after {items.next_id - 1}: pass ids")
                new = np.arange(items.next_id, items.next_id + m, dtype=np.int64)
            else:
                new = self._checked_new_ids(ids, m, items, n)
            if items.ids is None and (ids is None or np.array_equal(new, np.arange(n, n + m))):
                table = None  # still row r = id r
            else:
                table = items.ids if items.ids is not None else np.arange(n, dtype=np.int64)
                if table.shape[0] < n + m:
                    grown = np.empty(max(n + m, table.shape[0] * 3 // 2), dtype=np.int64)
                    grown[:n] = table[:n]
                    table = grown
                # Past the published rows: no reader looks there yet.
                table[n : n + m] = new
            last = n - 1 if items.ids is None else (items.ids[n - 1] if n else -1)
            ascending = items.ascending and bool(
                m == 0 or (new[0] > last and (m == 1 or (np.diff(new) > 0).all()))
            )
            live = items.live
            if live is not None:
                live = row_words(np.concatenate([items.present_rows(n), np.ones(m, dtype=bool)]))
            next_id = max(items.next_id, int(new.max()) + 1) if m else items.next_id
            # The items first, then the rows: a search takes the rows first.
            store.items = Items(table, ascending, live, items.dead, next_id)
            store.append(rows)

    def _next_id(self):
        """The id the next add without ids gives its first item."""
        store = self._store
        items = store.items
        return store.n if items is None else items.next_id

    def _checked_new_ids(self, ids, m, items, n):
        return check_new_ids(ids, m, lambda new: new[items.rows_of(new, n) >= 0])

    def remove(self, ids):
        """Removes the items with these ids; returns how many were present (absent ids are
        ignored). They never appear in a result again; their rows are reclaimed by the
        next compaction (:meth:`compact`, or an ``add`` once a quarter are removed)."""
        ids = check_ids(ids, "ids")
        with self._lock:
            store = self._store
            _, n = store.snapshot
            items = store.items or Items(None, True, None, 0, n)
            rows = items.rows_of(ids, n)
            rows = np.unique(rows[rows >= 0])
            if rows.size == 0:
                return 0
            mask = items.present_rows(n)
            mask[rows] = False
            store.items = Items(items.ids, items.ascending, row_words(mask),
                                 items.dead + int(rows.size), items.next_id)
            return int(rows.size)

    def compact(self):
        """Rewrites the rows without the removed ones (searches in progress keep reading
        the old rows; later ones read the new)."""
        with self._lock:
            self._compact_locked()

    def _compact_locked(self):
        store = self._store
        buffer, n = store.snapshot
        items = store.items
        if items is None or items.dead == 0:
            return store
        keep = items.present_rows(n)
        ids = np.flatnonzero(keep) if items.ids is None else items.ids[:n][keep]
        fresh = self._new_storage(
            buffer[:n][keep], Items(ids.astype(np.int64), items.ascending, None, 0, items.next_id)
        )
        # The rows kept are some of the old ones: the old norm bound holds for them.
        fresh._norm_bound = store._norm_bound
        self._store = fresh
        return fresh

    def _plan(self, allowed, nq, name="allowed"):
        """What a search scans, taken once (one snapshot): ``(buffer, n, ids, ascending,
        allow, gather)``, rows ``[0, n)`` of ``buffer`` reporting ``ids`` (None: the row
        numbers), ascending with the row or not; ``allow`` is the row bitmap for the scan
        (None: every row), ``gather`` the rows to score instead of a scan (None: scan).
        The rows of a filter may be a packed copy (see PACK_QUERIES)."""
        store = self._store
        buffer, n = store.snapshot
        items = store.items
        ids = None if items is None else items.ids
        ascending = items is None or items.ascending
        if allowed is None:
            return buffer, n, ids, ascending, (None if items is None else items.live), None
        wanted = check_ids(allowed, name)
        lookup = items or Items(None, True, None, 0, n)
        rows = lookup.rows_of(wanted, n)
        rows = rows[rows >= 0]
        few = nq < PACK_QUERIES
        # Counted with repeats, which only a few filters have: no sort of a large filter.
        if rows.size == 0 or (few and rows.size <= max(GATHER_ROWS, n // _GATHER_FRACTION[self.kind])):
            return buffer, n, ids, ascending, None, np.unique(rows)
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        count = int(np.count_nonzero(mask))
        share = count / n
        if share <= (_PACK_FEW if few else _PACK_MOST) and count * buffer.strides[0] <= PACK_BYTES:
            rows = np.flatnonzero(mask)  # ascending: the ids keep their order
            return np.ascontiguousarray(buffer[rows]), count, lookup.id_of(rows), ascending, None, None
        return buffer, n, ids, ascending, row_words(mask), None


def _max_norm(rows):
    if rows.shape[0] == 0:
        return 0.0
    # Float32 sums are 6x faster than float64 here; their rounding (relative, below 1e-4)
    # sits well inside the kernel's margin, and an overflow to inf stays a valid bound.
    return float(np.sqrt(np.einsum("ij,ij->i", rows, rows).max()))

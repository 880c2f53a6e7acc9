"""The inverted lists of an :class:`~cofisearch.IVFBinaryIndex` as published snapshots:
the arithmetic of adding, removing and filtering items (each returns a new snapshot, which
the index publishes in one assignment, so that a search holding an older one never sees a
row change)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._rows import GATHER_ROWS, PACK_BYTES, PACK_QUERIES, check_new_ids, row_words

# A filter of at most GATHER_ROWS present items, or of a 1 / _GATHER_FRACTION part of
# them, is searched over those items alone in every list (exact over the allowed items,
# whatever nprobe), instead of probing with a bitmap: a selective filter would leave most
# probed lists empty, and scoring a few thousand rows costs less than one probe.
_GATHER_FRACTION = 64


class _Lists(NamedTuple):
    """The inverted lists as one published snapshot.

    List ``l`` is rows ``[start[l], start[l] + size[l])`` of ``codes`` and ``ids``, with
    room up to ``cap[l]`` rows; rows ``[used, len(codes))`` are free for lists that
    outgrow their room. Rows past a list's size, and the free tail, were never part of
    any published snapshot: an add writes only there (or into new buffers) before
    publishing, so a reader holding an older snapshot never sees a row change.
    """

    codes: np.ndarray
    ids: np.ndarray
    start: np.ndarray
    size: np.ndarray
    cap: np.ndarray
    used: int
    ntotal: int
    #: The asymmetric screen's 1-bit codes and factors, row for row with ``codes``
    #: (``None`` for a Hamming-only index).
    acodes: np.ndarray | None = None
    factors: np.ndarray | None = None
    #: The id an add without ids gives the next item: above every id ever added, so that
    #: a removed id is not given again.
    next_id: int = 0

    def rows(self):
        """The per-row arrays, in the order that _append and the payload keep them."""
        return [a for a in (self.codes, self.ids, self.acodes, self.factors) if a is not None]

    def list_rows(self):
        """The rows of every item, list by list (int64)."""
        return _ranges(self.start, self.size)


def _empty_lists(nlist, nbytes, screen_bits=0):
    zeros = np.zeros(nlist, dtype=np.int64)
    extra = (np.empty((0, screen_bits // 8), np.uint8), np.empty(0, np.float32)) if screen_bits else ()
    return _Lists(np.empty((0, nbytes), np.uint8), np.empty(0, np.int64), zeros, zeros, zeros, 0, 0,
                  *extra)


def _ranges(starts, lengths):
    """The concatenated ``arange(s, s + n)`` of each (start, length), as int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total)


def _sequential(next_id, m):
    if next_id > np.iinfo(np.int64).max - m:
        raise ValueError(f"no sequential ids left after {next_id - 1}: pass ids")
    return np.arange(next_id, next_id + m, dtype=np.int64)


def _new_ids(ids, m, lists):
    """The caller's ids for ``m`` new items, checked: non-negative, unique, not present."""
    return check_new_ids(ids, m, lambda new: new[np.isin(new, lists.ids[lists.list_rows()])])


def _filtered(lists, allowed, nq):
    """``(lists, allow, everywhere)`` for a search of ``nq`` queries restricted to the ids
    ``allowed``: lists of the allowed items alone and no bitmap, to be probed in every list
    (``everywhere``) for a selective filter, or as the index's own lists for a batch; for a
    few queries, the index's lists and a bitmap of their allowed rows (copying the allowed
    items would cost more than the probed lists' scan)."""
    rows = lists.list_rows()
    hit = np.isin(lists.ids[rows], allowed)
    count = int(np.count_nonzero(hit))
    everywhere = count <= max(GATHER_ROWS, lists.ntotal // _GATHER_FRACTION)
    if everywhere or (nq >= PACK_QUERIES and count * lists.codes.strides[0] <= PACK_BYTES):
        nlist = lists.size.shape[0]
        size = np.bincount(np.repeat(np.arange(nlist), lists.size)[hit], minlength=nlist)
        codes, ids, *screened = (a[rows[hit]] for a in lists.rows())
        sub = _lists_from(size.astype(np.int64), ids, codes, *screened, next_id=lists.next_id)
        return sub, None, everywhere
    mask = np.zeros(lists.codes.shape[0], dtype=bool)
    mask[rows[hit]] = True
    return lists, row_words(mask), False


def _append(lists, codes, assign, new_ids, screened=()):
    """The snapshot after appending ``codes`` as the items ``new_ids`` (and, for the
    asymmetric screen, the ``screened`` pair of their 1-bit codes and factors) to the
    lists ``assign`` names.

    A list that outgrows its room moves to the free tail with room for 1.5 times its new
    size (so each item is moved O(1) times on average); when the tail is too short, or
    the buffers are read-only (memory-mapped), every list is copied into new buffers
    with a quarter of their rows as free tail. The first add into an empty index
    allocates exactly its rows, as ``BinaryIndex`` does.
    """
    nlist = lists.size.shape[0]
    counts = np.bincount(assign, minlength=nlist).astype(np.int64)
    need = lists.size + counts
    grows = need > lists.cap
    cap = np.where(grows, np.where(lists.size == 0, need, np.maximum(need, lists.cap * 3 // 2)), lists.cap)
    start = lists.start.copy()
    moved = int(cap[grows].sum())
    old = lists.rows()
    if all(a.flags.writeable for a in old) and lists.used + moved <= lists.codes.shape[0]:
        bufs, used = old, lists.used
        src = _ranges(lists.start[grows], lists.size[grows])
        start[grows] = used + np.cumsum(cap[grows]) - cap[grows]
        dst = _ranges(start[grows], lists.size[grows])
        for buf in bufs:
            buf[dst] = buf[src]
        used += moved
    else:
        total = int(cap.sum())
        spare = total // 4 if lists.ntotal else 0
        bufs = [np.empty((total + spare, *a.shape[1:]), dtype=a.dtype) for a in old]
        src = _ranges(lists.start, lists.size)
        start = np.cumsum(cap) - cap
        dst = _ranges(start, lists.size)
        for buf, a in zip(bufs, old):
            buf[dst] = a[src]
        used = total
    # New items in the order given within each list, after the list's current items.
    order = np.argsort(assign, kind="stable")
    sorted_lists = assign[order]
    first_of_list = np.cumsum(counts) - counts
    rank = np.arange(order.size) - first_of_list[sorted_lists]
    dst = start[sorted_lists] + lists.size[sorted_lists] + rank
    for buf, new in zip(bufs, (codes, new_ids, *screened)):
        buf[dst] = new[order]
    next_id = max(lists.next_id, int(new_ids.max()) + 1) if new_ids.size else lists.next_id
    return _Lists(bufs[0], bufs[1], start, need, cap, used, lists.ntotal + codes.shape[0], *bufs[2:],
                  next_id=next_id)


def _without(lists, rows, hit):
    """The snapshot without the items at ``rows[hit]`` (``rows``: ``lists.list_rows()``).

    The lists that lose items are rewritten compactly into the free tail, as ``_append``
    moves a list that outgrows its room; when the tail is too short or the buffers are
    read-only, every list is copied into new buffers with a quarter of their rows spare.
    """
    nlist = lists.size.shape[0]
    list_of = np.repeat(np.arange(nlist), lists.size)
    size = lists.size - np.bincount(list_of[hit], minlength=nlist)
    touched = size != lists.size
    kept = rows[~hit]
    src = kept[touched[list_of[~hit]]]
    old = lists.rows()
    start, cap = lists.start.copy(), lists.cap.copy()
    if all(a.flags.writeable for a in old) and lists.used + src.size <= lists.codes.shape[0]:
        bufs, used = old, lists.used + src.size
        start[touched] = lists.used + np.cumsum(size[touched]) - size[touched]
        cap[touched] = size[touched]
        dst = _ranges(start[touched], size[touched])
        for buf in bufs:
            buf[dst] = buf[src]
    else:
        total = int(size.sum())
        bufs = [np.empty((total + total // 4, *a.shape[1:]), dtype=a.dtype) for a in old]
        for buf, a in zip(bufs, old):
            buf[:total] = a[kept]
        start, cap, used = np.cumsum(size) - size, size.copy(), total
    return _Lists(bufs[0], bufs[1], start, size, cap, used, int(size.sum()), *bufs[2:],
                  next_id=lists.next_id)


def _lists_from(sizes, ids, codes, *screened, next_id):
    start = np.cumsum(sizes) - sizes
    return _Lists(codes, ids, start, sizes, sizes.copy(), codes.shape[0], codes.shape[0], *screened,
                  next_id=next_id)

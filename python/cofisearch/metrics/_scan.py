"""One pass over bounded blocks of query rows, shared by the matrix and embedding paths.

Every block is a "key": (queries x items), smaller is better, ties go to the smaller
column (item id), the engine's rule. :func:`scan` turns the blocks into the metrics of
one direction: instance ranks from :class:`Truth` (counted, never sorted), category
metrics from :class:`CategoryAccumulator` over each row's ranked relevance.
"""

from __future__ import annotations

import numpy as np

from .._reference import full_order, smallest_k

__all__ = [
    "BLOCK_ELEMENTS",
    "RECALL_LEVELS",
    "CategoryAccumulator",
    "Truth",
    "rows_per_block",
    "scan",
]

#: Recall levels of the 11-point interpolated precision-recall curve.
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)

# Elements of a (queries x items) block held at once; with the temporaries built from
# it this keeps any single call's working memory to some tens of MiB.
BLOCK_ELEMENTS = 1 << 21


def rows_per_block(n_items, per_item=1):
    return max(1, BLOCK_ELEMENTS // max(1, n_items * per_item))


def _compact(key):
    """An unsigned key with the same order and the same ties, when one fits in 32 bits.

    Unsigned keys let the full sort break ties by column in a single pass (see
    :func:`_ranked_relevance`); float64 and wide integers are returned unchanged.
    """
    if key.dtype.kind in "biu":
        lo, hi = int(key.min()), int(key.max())
        for dtype in (np.uint16, np.uint32):
            if hi - lo <= np.iinfo(dtype).max:
                return (key.astype(np.int64) - lo).astype(dtype)
        return key
    if key.dtype.itemsize <= 4:
        # IEEE order as unsigned integers: flip every bit of negatives and only the sign
        # bit of the rest.  Adding 0 first turns -0.0 into +0.0 (they compare equal).
        u = np.add(key, np.float32(0), dtype=np.float32).view(np.uint32)
        flip = (u.view(np.int32) >> 31).view(np.uint32)
        flip |= np.uint32(0x80000000)
        u ^= flip
        return u
    return key


def _ranked_relevance(key, depth, labels, query_index, item_index, items):
    """Relevance of each row's best ``depth`` candidates, in ranked order.

    ``key``: (queries x n), smaller is better, ties by smaller column; ``query_index``
    and ``item_index`` give the image whose labels each query and candidate carries;
    ``items`` is ``labels.items(item_index)``.
    """
    n = key.shape[1]
    depth = min(depth, n)
    key = _compact(key)
    if 8 * depth <= n:
        order = smallest_k(key, depth)
        return labels.relevance_at(query_index, item_index[order])
    rel = labels.relevance(labels.side(query_index), items)
    if key.dtype in (np.uint16, np.uint32) and n < (1 << 31):
        # (key, column, relevance) packed in one uint64: a plain (SIMD) sort is then
        # exact and deterministic, and the ranked relevance is its lowest bit.  Several
        # times faster than a stable argsort followed by a gather.
        packed = key.astype(np.uint64)
        packed <<= np.uint64(32)
        packed |= np.arange(0, 2 * n, 2, dtype=np.uint64)
        packed |= rel
        packed.sort(axis=1)
        return (packed[:, :depth] & np.uint64(1)).astype(bool)
    return np.take_along_axis(rel, full_order(key)[:, :depth], axis=1)


class Truth:
    """The true matches of each query, as (query, item) pairs sorted by query.

    ``query_owner[q]`` and ``item_owner[j]`` are image ids: j matches q when they agree.
    """

    def __init__(self, pair_query, pair_item, query_owner, item_owner):
        self.pair_query = pair_query
        self.pair_item = pair_item
        self.query_owner = query_owner
        self.item_owner = item_owner

    @classmethod
    def images_to_captions(cls, cap2img, n_images):
        by_image = np.argsort(cap2img, kind="stable")
        return cls(cap2img[by_image], by_image, np.arange(n_images), cap2img)

    @classmethod
    def captions_to_images(cls, cap2img, n_images):
        return cls(np.arange(len(cap2img)), cap2img, cap2img, np.arange(n_images))

    def ranks(self, key, q0):
        """0-based rank of the best-ranked true match of queries q0..q0+len(key)."""
        rows = key.shape[0]
        a, b = np.searchsorted(self.pair_query, [q0, q0 + rows])
        pq = self.pair_query[a:b] - q0
        pj = self.pair_item[a:b]
        vals = key[pq, pj]
        order = np.lexsort((pj, vals, pq))
        first = np.ones(len(order), dtype=bool)
        first[1:] = pq[order][1:] != pq[order][:-1]
        best = order[first]  # callers guarantee every query has a true match
        best_val = vals[best][:, None]
        best_item = pj[best][:, None]
        better = (key < best_val).sum(axis=1)
        cols = np.arange(key.shape[1])
        tied_before = ((key == best_val) & (cols[None, :] < best_item)).sum(axis=1)
        return better + tied_before

    def first_hit(self, ids, q0):
        """Position of the first true match in each row of ``ids`` (len(row) if none)."""
        hit = self.item_owner[ids] == self.query_owner[q0:q0 + len(ids)][:, None]
        return np.where(hit.any(axis=1), hit.argmax(axis=1), ids.shape[1])


class CategoryAccumulator:
    """Running sums of mAP@k, P@K and the interpolated PR curve over query blocks."""

    def __init__(self, n_items, map_at, precision_at, pr):
        self.n = n_items
        self.map_at = map_at
        self.precision_at = precision_at
        self.pr = pr
        self.n_queries = 0
        self.ap = {k: 0.0 for k in map_at}
        self.prec = {k: 0.0 for k in precision_at}
        self.pr_sum = np.zeros(len(RECALL_LEVELS))
        self.pr_queries = 0

    def depth(self):
        """How many ranked items per query the requested statistics read."""
        need = [self.n if k is None else min(k, self.n) for k in self.map_at]
        need += [min(k, self.n) for k in self.precision_at]
        if self.pr:
            need.append(self.n)
        return max(need) if need else 0

    def add(self, rel):
        """``rel``: (queries x depth) bool, relevance in ranked order."""
        rows = rel.shape[0]
        self.n_queries += rows
        # Everything below reads only the relevant positions: O(relevant) per query.
        # (flatnonzero and a division beat 2-D nonzero by about 2x.)
        flat = np.flatnonzero(rel)
        row = flat // rel.shape[1]
        col = flat - row * rel.shape[1]
        found = np.bincount(row, minlength=rows)
        starts = np.cumsum(found) - found
        nth = np.arange(len(row)) - starts[row] + 1
        precision = nth / (col + 1)
        for k in self.map_at:
            kk = self.n if k is None else min(k, self.n)
            inside = col < kk
            hits = np.bincount(row[inside], minlength=rows)
            total = np.bincount(row[inside], weights=precision[inside], minlength=rows)
            self.ap[k] += float((total[hits > 0] / hits[hits > 0]).sum())
        for k in self.precision_at:
            kk = min(k, self.n)
            self.prec[k] += float(np.bincount(row[col < kk], minlength=rows).sum() / kk)
        if self.pr and len(row):
            # Interpolated precision is the best precision from a relevant item to the
            # end of the row (ranks between relevant items never hold the maximum), so
            # only relevant items are kept: (rows x most relevant items in any row),
            # column i = precision at the (i+1)-th relevant item, zero-padded.
            best_after = np.zeros((rows, int(found.max())))
            best_after[row, nth - 1] = precision
            best_after = np.maximum.accumulate(best_after[:, ::-1], axis=1)[:, ::-1]
            keep = np.flatnonzero(found)
            total = found[keep]
            for j in range(len(RECALL_LEVELS)):
                # recall >= j/10 first holds at the ceil(j*total/10)-th relevant item,
                # in integers so that 0.3 * 10 is exactly 3.
                nth_needed = np.maximum((j * total + 9) // 10, 1)
                self.pr_sum[j] += best_after[keep, nth_needed - 1].sum()
            self.pr_queries += len(keep)

    def result(self):
        out = {}
        nq = max(self.n_queries, 1)
        for k in self.map_at:
            out["mAP@N" if k is None else f"mAP@{k}"] = self.ap[k] / nq
        for k in self.precision_at:
            out[f"P@{k}"] = self.prec[k] / nq
        if self.pr:
            if self.pr_queries:
                out["PR"] = self.pr_sum / self.pr_queries
            else:
                out["PR"] = np.full(len(RECALL_LEVELS), np.nan)
        return out


def _recall_dict(ranks, ks):
    ranks = np.asarray(ranks)
    out = {f"R@{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}
    out["MedianR"] = float(np.floor(np.median(ranks)) + 1)
    out["MeanR"] = float(ranks.mean() + 1)
    return out


def scan(nq, n, block_key, step, *, truth=None, ks=(), labels=None, query_index=None,
         item_index=None, map_at=(), precision_at=(), pr=False):
    """Metrics of one direction from a single pass over blocks of query rows.

    ``block_key(q0, q1)`` returns the (q1 - q0) x n key block of those queries (smaller
    is better).  With ``truth``, the instance metrics (``ks``, MedianR, MeanR); with
    ``labels``, the category metrics.
    """
    ranks = np.empty(nq, dtype=np.int64) if truth is not None else None
    acc = None
    if labels is not None and (map_at or precision_at or pr):
        acc = CategoryAccumulator(n, map_at, precision_at, pr)
        depth = acc.depth()
        items = labels.items(item_index)
    for q0 in range(0, nq, step):
        key = block_key(q0, min(q0 + step, nq))
        if ranks is not None:
            ranks[q0:q0 + len(key)] = truth.ranks(key, q0)
        if acc is not None:
            acc.add(_ranked_relevance(key, depth, labels, query_index[q0:q0 + len(key)],
                                      item_index, items))
    out = {}
    if ranks is not None:
        out.update(_recall_dict(ranks, ks))
    if acc is not None:
        out.update(acc.result())
    return out

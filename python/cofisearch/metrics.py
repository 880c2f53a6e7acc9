"""Retrieval metrics for image-text search, compatible with the ``fico-itr`` package.

Two groups of functions live here.

Drop-in replacements for ``fico_itr`` 1.0.0, with the same argument names, defaults,
result keys and units:

- :func:`instance_retrieval` -- instance level: R@K in percent, ``MedianR``, ``MeanR``.
- :func:`category_retrieval` -- category level: mAP@k as a fraction in [0, 1].

Beyond fico-itr:

- any list of K for recall (``ks=``), :func:`category_metrics` (mAP at several depths,
  precision@K and the 11-point interpolated precision-recall curve from one ranking),
  :func:`precision_at_k`, :func:`pr_curve` and :func:`rsum`;
- :func:`evaluate`, which starts from embeddings (float32 for inner product or cosine,
  packed uint8 codes for Hamming) and never holds the full queries x database
  similarity matrix: top-k metrics alone come from the engine's fused top-k; the rest
  from one pass over bounded blocks of queries, where true-match ranks are counted
  rather than sorted and only mAP@N and the PR curve sort.

Every function works on bounded blocks of query rows, so memory stays at some tens of
MiB beyond the inputs (5,000 images x 25,000 captions included).

Conventions shared by every function
------------------------------------
- A similarity matrix is *images x captions*, higher is better.  A rectangular matrix
  may be passed in either orientation: the shorter axis is taken as the images, as
  fico-itr does (fico-itr also warns; this module does not).
- Ties are broken by the smaller item id, the same rule as the engine's top-k, so
  results are deterministic.  fico-itr leaves the order of tied scores to NumPy's
  unstable sort, so the two agree exactly on tie-free (continuous) scores.
- ``captions_per_image`` is ``'auto'`` (captions divided evenly among images), an int,
  an array of per-image caption counts (length n_images), a caption -> image map
  (length n_captions, any order, uneven counts such as MS-COCO's 25,010 test
  captions), or a ``{caption_id: image_id}`` dict.  An array whose length equals both
  is read as counts, as in fico-itr.  With a square matrix and an int greater than 1,
  the matrix is read as fico-itr reads the VSRN/UCCH outputs: every image repeated
  ``captions_per_image`` times along the rows.
- Category labels are given per image: 1-D (single label, relevant = equal label) or
  2-D multi-hot (relevant = shares at least one non-zero label).  Captions inherit the
  label of their image.

Units follow fico-itr: instance recall in percent; mAP, precision@K and the PR curve as
fractions in [0, 1]; ``MedianR`` and ``MeanR`` as 1-based ranks.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from ._checks import as_numpy

__all__ = [
    "instance_retrieval",
    "category_retrieval",
    "category_metrics",
    "precision_at_k",
    "pr_curve",
    "rsum",
    "evaluate",
    "ranking_metrics",
    "RECALL_LEVELS",
]

#: Recall levels of the 11-point interpolated precision-recall curve.
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)

# Elements of a (queries x items) block held at once; with the temporaries built from
# it this keeps any single call's working memory to some tens of MiB.
_BLOCK_ELEMENTS = 1 << 21
_ENGINE_QUERY_CHUNK = 8192


# --------------------------------------------------------------------------------------
# Argument checking


def _check_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_depths(name, values, allow_none=False, allow_empty=False):
    """A sequence of depths (ints >= 1, and None for 'all' where allowed), deduplicated."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    out = []
    for v in values:
        if v is None and allow_none:
            checked = None
        else:
            checked = _check_int(f"every entry of {name}", v)
        if checked not in out:
            out.append(checked)
    if not out and not allow_empty:
        raise ValueError(f"{name} must hold at least one depth, got an empty sequence")
    return tuple(out)


def _check_matrix(name, matrix):
    m = np.asarray(matrix)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {m.dtype}")
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D (images x captions), got shape {m.shape}")
    if m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {m.shape}")
    return m


def _oriented(matrix):
    """Rectangular matrices are turned to images x captions (images = shorter axis)."""
    return matrix.T if matrix.shape[0] > matrix.shape[1] else matrix


def _caption_map(captions_per_image, n_images, n_captions):
    """caption -> image (int64, length n_captions) from any accepted ``captions_per_image``."""
    cpi = captions_per_image
    name = "captions_per_image"
    if isinstance(cpi, str):
        if cpi != "auto":
            raise ValueError(f"{name} must be 'auto' when given as a string, got {cpi!r}")
        if n_captions % n_images:
            raise ValueError(
                f"{name}='auto' needs the number of captions ({n_captions}) to be a multiple "
                f"of the number of images ({n_images}); pass a caption -> image map for "
                "uneven counts (e.g. MS-COCO's 25,010 captions)"
            )
        return np.repeat(np.arange(n_images, dtype=np.int64), n_captions // n_images)
    if isinstance(cpi, numbers.Integral) and not isinstance(cpi, (bool, np.bool_)):
        per = _check_int(name, cpi)
        if per * n_images != n_captions:
            raise ValueError(
                f"{name}={per} with {n_images} images expects {per * n_images} captions, "
                f"got {n_captions}"
            )
        return np.repeat(np.arange(n_images, dtype=np.int64), per)
    if isinstance(cpi, Mapping):
        try:
            keys = np.fromiter((int(k) for k in cpi.keys()), dtype=np.int64, count=len(cpi))
            vals = np.fromiter((int(v) for v in cpi.values()), dtype=np.int64, count=len(cpi))
        except (TypeError, ValueError):
            raise TypeError(f"{name} as a dict must map int caption ids to int image ids") from None
        # fico-itr silently maps captions missing from the dict to image 0; a partial
        # dict is far more likely a mistake than an intent, so it is refused here.
        if len(keys) != n_captions or not np.array_equal(np.sort(keys), np.arange(n_captions)):
            raise ValueError(
                f"{name} as a dict must give an image for every caption id 0..{n_captions - 1}, "
                f"got {len(keys)} entries"
            )
        cap2img = np.empty(n_captions, dtype=np.int64)
        cap2img[keys] = vals
        return _check_map_range(cap2img, n_images)
    arr = np.asarray(cpi)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be 'auto', an int, an int array or a dict, got "
            f"{type(cpi).__name__} with dtype {arr.dtype}"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} as an array must be 1-D, got shape {arr.shape}")
    if len(arr) == n_images:
        if (arr < 0).any() or int(arr.sum()) != n_captions:
            raise ValueError(
                f"{name} of length n_images={n_images} is read as per-image caption counts; "
                f"they must be >= 0 and sum to n_captions={n_captions}, got sum {int(arr.sum())}"
            )
        return np.repeat(np.arange(n_images, dtype=np.int64), arr.astype(np.int64))
    if len(arr) == n_captions:
        return _check_map_range(arr.astype(np.int64), n_images)
    raise ValueError(
        f"{name} as an array must have length n_images={n_images} (counts) or "
        f"n_captions={n_captions} (caption -> image map), got length {len(arr)}"
    )


def _check_map_range(cap2img, n_images):
    if len(cap2img) and (cap2img.min() < 0 or cap2img.max() >= n_images):
        raise ValueError(
            f"captions_per_image maps captions to image ids in [{cap2img.min()}, "
            f"{cap2img.max()}], expected ids in [0, {n_images - 1}]"
        )
    return cap2img


def _check_every_image_captioned(cap2img, n_images):
    # fico-itr gives an image without captions the rank 1e20, which wrecks MeanR; an
    # image-to-text query with no true caption has no defined rank, so refuse it.
    counts = np.bincount(cap2img, minlength=n_images)
    if (counts == 0).any():
        first = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(
            f"captions_per_image leaves {int((counts == 0).sum())} image(s) without a caption "
            f"(first: image {first}); image-to-text ranks need at least one per image"
        )


class _Labels:
    """Per-image labels, in a form where relevance is a cheap array operation."""

    def __init__(self, labels, n_images):
        lab = np.asarray(labels)
        if lab.ndim not in (1, 2):
            raise ValueError(
                f"labels must be 1-D (one label per image) or 2-D multi-hot "
                f"(n_images x n_classes), got shape {lab.shape}"
            )
        allowed = "biufUS" if lab.ndim == 1 else "biuf"
        if lab.dtype.kind not in allowed:
            raise TypeError(
                f"labels must hold numbers (or strings when 1-D), got dtype {lab.dtype}"
            )
        if lab.shape[0] != n_images:
            raise ValueError(
                f"labels must have one row per image ({n_images}), got {lab.shape[0]}"
            )
        self.single = lab.ndim == 1
        if self.single:
            if lab.dtype.kind == "f" and np.isnan(lab).any():
                raise ValueError("labels must not contain NaN")
            self.codes = np.unique(lab, return_inverse=True)[1].reshape(-1).astype(np.int64)
            return
        if lab.shape[1] == 0:
            raise ValueError(f"labels must have at least one class column, got shape {lab.shape}")
        # Label sets as bits in uint64 words: "shares a label" is an AND per word.
        n_words = -(-lab.shape[1] // 64)
        bits = np.zeros((n_images, n_words * 64), dtype=bool)
        bits[:, :lab.shape[1]] = lab != 0
        packed = np.packbits(bits, axis=1, bitorder="little")
        self.words = np.ascontiguousarray(packed).view(np.uint64)

    def side(self, index):
        """Labels of the images ``index``, as queries."""
        return self.codes[index] if self.single else self.words[index]

    def items(self, index):
        """Labels of the images ``index``, as candidates for :meth:`relevance`."""
        return self.codes[index] if self.single else np.ascontiguousarray(self.words[index].T)

    def relevance(self, query_side, items):
        """(queries x candidates) bool."""
        if self.single:
            return query_side[:, None] == items[None, :]
        out = (query_side[:, :1] & items[:1]) != 0
        for w in range(1, items.shape[0]):
            out |= (query_side[:, w:w + 1] & items[w:w + 1]) != 0
        return out

    def relevance_at(self, query_index, item_index):
        """(queries x k) bool for gathered candidates; both arguments are image ids."""
        if self.single:
            return self.codes[item_index] == self.codes[query_index][:, None]
        q = self.words[query_index][:, None, :]
        rows, k = item_index.shape
        out = np.empty((rows, k), dtype=bool)
        # (rows x k x words) temporaries, so go in blocks of rows.
        step = _rows_per_block(k, self.words.shape[1])
        for r0 in range(0, rows, step):
            items = self.words[item_index[r0:r0 + step]]
            out[r0:r0 + step] = (q[r0:r0 + step] & items).any(axis=2)
        return out


# --------------------------------------------------------------------------------------
# Ranking kernels shared by the matrix and embedding paths.  Every block is a "key":
# smaller is better, ties go to the smaller column index.


def _descending_key(block, name):
    """An ascending sort key equivalent to sorting ``block`` in descending order."""
    if block.dtype.kind == "f":
        if np.isnan(block).any():
            raise ValueError(f"{name} must not contain NaN")
        return -block
    # ~x reverses the order of every integer type (and of bool) without overflow.
    return ~block


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


def _full_order(key):
    """Column order of every entry of each row, ties by smaller column."""
    # The default (SIMD) sort is several times faster than the stable one; rows with
    # ties are sorted again stably, which costs only where ties occur.
    order = np.argsort(key, axis=1)
    ranked = np.take_along_axis(key, order, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(key[tied], axis=1, kind="stable")
    return order


def _partial_order(key, k):
    """Column order of the best ``k`` entries of each row, ties by smaller column."""
    part = np.argpartition(key, k - 1, axis=1)[:, :k]
    chosen = np.take_along_axis(key, part, axis=1)
    kth = chosen.max(axis=1, keepdims=True)
    # argpartition picks an arbitrary subset of the entries tied with the k-th value;
    # where it had to split them, keep the ones with the smallest columns instead.
    equal = key == kth
    split = equal.sum(axis=1) > (chosen == kth).sum(axis=1)
    if split.any():
        sub, eq = key[split], equal[split]
        need = k - (sub < kth[split]).sum(axis=1, keepdims=True)
        take = (sub < kth[split]) | (eq & (np.cumsum(eq, axis=1) <= need))
        part[split] = np.nonzero(take)[1].reshape(len(sub), k)
    part.sort(axis=1)
    sub = np.take_along_axis(key, part, axis=1)
    return np.take_along_axis(part, np.argsort(sub, axis=1, kind="stable"), axis=1)


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
        order = _partial_order(key, depth)
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
    return np.take_along_axis(rel, _full_order(key)[:, :depth], axis=1)


class _Truth:
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


class _CategoryAccumulator:
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


def _rows_per_block(n_items, per_item=1):
    return max(1, _BLOCK_ELEMENTS // max(1, n_items * per_item))


# --------------------------------------------------------------------------------------
# Similarity-matrix metrics (fico-itr compatible)


def _scan(nq, n, block_key, step, *, truth=None, ks=(), labels=None, query_index=None,
          item_index=None, map_at=(), precision_at=(), pr=False):
    """Metrics of one direction from a single pass over blocks of query rows.

    ``block_key(q0, q1)`` returns the (q1 - q0) x n key block of those queries (smaller
    is better).  With ``truth``, the instance metrics (``ks``, MedianR, MeanR); with
    ``labels``, the category metrics.
    """
    ranks = np.empty(nq, dtype=np.int64) if truth is not None else None
    acc = None
    if labels is not None and (map_at or precision_at or pr):
        acc = _CategoryAccumulator(n, map_at, precision_at, pr)
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


def _matrix_blocks(matrix, name):
    return lambda q0, q1: _descending_key(np.asarray(matrix[q0:q1]), name)


def _repeat_factor(shape, captions_per_image, name):
    """How many times each image is repeated along a square matrix's rows (the VSRN/UCCH
    layout fico-itr reads), or 0 when the matrix is not in that layout."""
    rows, cols = shape
    if rows != cols or not _duplicated(captions_per_image):
        return 0
    per = int(captions_per_image)
    if rows % per:
        raise ValueError(
            f"{name} is square ({rows} x {cols}), which with captions_per_image={per} "
            f"means images repeated {per} times, but {rows} is not a multiple of {per}"
        )
    return per


def _instance_layout(matrix, captions_per_image, name):
    """(i2t matrix, i2t truth, t2i matrix, t2i truth) for one images x captions matrix."""
    rows, cols = matrix.shape
    per = _repeat_factor(matrix.shape, captions_per_image, name)
    if per:
        n_images = rows // per
        owner = np.arange(cols, dtype=np.int64) // per
        unique_rows = matrix[::per]
        return (unique_rows, _Truth.images_to_captions(owner, n_images),
                unique_rows.T, _Truth.captions_to_images(owner, n_images))
    if rows == cols and not _uniform(captions_per_image):
        raise ValueError(
            f"{name} is square ({rows} x {cols}) and captions_per_image is an explicit "
            "map, which is ambiguous (as in fico-itr); pass the rectangular images x "
            "captions matrix, or an int for image-duplicated square matrices"
        )
    cap2img = _caption_map(captions_per_image, rows, cols)
    _check_every_image_captioned(cap2img, rows)
    return (matrix, _Truth.images_to_captions(cap2img, rows),
            matrix.T, _Truth.captions_to_images(cap2img, rows))


def _duplicated(captions_per_image):
    return (
        isinstance(captions_per_image, numbers.Integral)
        and not isinstance(captions_per_image, (bool, np.bool_))
        and captions_per_image > 1
    )


def _uniform(captions_per_image):
    return isinstance(captions_per_image, (str, numbers.Integral))


def instance_retrieval(similarity_matrix, t2i_sim=None, captions_per_image="auto", *,
                       ks=(1, 5, 10)):
    """Instance-level recall in both directions, as ``fico_itr.instance_retrieval``.

    Parameters
    ----------
    similarity_matrix : (n_images, n_captions) array
        Higher is better.  Rectangular matrices are accepted in either orientation.
        A square matrix with an int ``captions_per_image`` > 1 is read as images
        repeated ``captions_per_image`` times along the rows (VSRN/UCCH outputs):
        image-to-text uses rows 0, c, 2c, ... as queries and text-to-image ranks
        only those rows.
    t2i_sim : array, optional
        A separate matrix for text-to-image (fusion rerankers such as BLIP-2), in the
        same convention as ``similarity_matrix`` and of the same shape up to
        orientation; ``similarity_matrix`` is used when omitted.
    captions_per_image : 'auto', int, counts array, caption -> image map or dict
        See the module docstring.
    ks : sequence of int, keyword-only
        Recall depths (fico-itr always uses 1, 5, 10).  R@K above the number of
        candidates is 100.

    Returns
    -------
    (i2t, t2i) : two dicts
        ``R@K`` for each K (percent of queries whose best-ranked true match is in the
        top K; image-to-text counts a hit when any of the image's captions is there),
        ``MedianR`` (floor of the median 0-based rank, plus one, as fico-itr) and
        ``MeanR`` (mean 1-based rank).

    Cost: no sorting.  The rank of a query's true match is the number of items scoring
    strictly better plus those tied with it at a smaller id, counted in O(n) per query
    over bounded blocks of rows.

    Differences from fico-itr, all on inputs where fico-itr silently misbehaves: an
    image without captions raises ValueError (fico-itr gives it rank 1e20); a dict that
    misses captions raises (fico-itr maps them to image 0); a map entry outside the
    image range raises; NaN scores raise; ``t2i_sim`` of another size raises.
    """
    ks = _check_depths("ks", ks)
    sim = _oriented(_check_matrix("similarity_matrix", similarity_matrix))
    i2t_m, i2t_truth, t2i_m, t2i_truth = _instance_layout(sim, captions_per_image,
                                                          "similarity_matrix")
    if t2i_sim is not None:
        other = _oriented(_check_matrix("t2i_sim", t2i_sim))
        if other.shape != sim.shape:
            raise ValueError(
                f"t2i_sim must describe the same images and captions as similarity_matrix "
                f"({sim.shape[0]} x {sim.shape[1]} in either orientation), got shape "
                f"{np.shape(t2i_sim)}"
            )
        _, _, t2i_m, t2i_truth = _instance_layout(other, captions_per_image, "t2i_sim")
    t2i_name = "similarity_matrix" if t2i_sim is None else "t2i_sim"
    i2t, t2i = (
        _scan(m.shape[0], m.shape[1], _matrix_blocks(m, name), _rows_per_block(m.shape[1]),
              truth=truth, ks=ks)
        for m, truth, name in ((i2t_m, i2t_truth, "similarity_matrix"),
                               (t2i_m, t2i_truth, t2i_name))
    )
    return i2t, t2i


def _category_layout(sim1, sim2, labels, captions_per_image):
    """[(matrix, query label index, item label index), ...] for i2t then t2i."""
    sim = _oriented(_check_matrix("sim1", sim1))
    rows, cols = sim.shape
    if sim2 is None:
        other = sim.T
    else:
        other = _check_matrix("sim2", sim2)
        if rows != cols:
            # Text-to-image rows are captions.  fico-itr would compute image-to-text
            # mAP on a sim2 passed as images x captions; here it is turned around.
            other = other.T if other.shape[0] < other.shape[1] else other
        if other.shape != (cols, rows):
            raise ValueError(
                f"sim2 must be captions x images ({cols} x {rows}) to match sim1, got "
                f"shape {np.shape(sim2)}"
            )
    per = _repeat_factor((rows, cols), captions_per_image, "sim1")
    if per:
        # As fico-itr: every row and every column is an item, labels repeated on both axes.
        n_images = rows // per
        owner = np.arange(rows, dtype=np.int64) // per
        lab = _Labels(labels, n_images)
        return lab, [(sim, owner, owner), (other, owner, owner)]
    cap2img = _caption_map(captions_per_image, rows, cols)
    lab = _Labels(labels, rows)
    images = np.arange(rows, dtype=np.int64)
    return lab, [(sim, images, cap2img), (other, cap2img, images)]


def category_metrics(sim1, labels, *, sim2=None, captions_per_image="auto",
                     map_at=(10, 100, None), precision_at=(), pr_curve=False):
    """mAP at several depths, precision@K and the 11-point PR curve, from one ranking.

    Same inputs as :func:`category_retrieval`.  Returns ``(i2t, t2i)`` dicts with
    ``mAP@k`` for each entry of ``map_at`` (``None`` gives ``mAP@N``, every candidate),
    ``P@K`` for each entry of ``precision_at`` (relevant items in the top K over K,
    averaged over all queries), and, with ``pr_curve=True``, ``PR``: the 11-point
    interpolated precision-recall curve at :data:`RECALL_LEVELS` (precision at recall
    r is the best precision at any rank whose recall is >= r; averaged over the
    queries that have at least one relevant item; all NaN if none has).  All values are
    fractions in [0, 1].

    AP@k is normalised by the number of relevant items found *in the top k* (not by
    all relevant items), as fico-itr and the hashing literature do; a query with none
    in its top k scores 0 and still counts in the mean.

    Cost: each query's candidates are ranked once for all depths.  Depths well below
    the number of candidates use a partial selection; ``mAP@N`` and the PR curve sort
    every row (O(n log n) per query), in blocks of rows so memory stays bounded.
    """
    map_at = _check_depths("map_at", map_at, allow_none=True, allow_empty=True)
    precision_at = _check_depths("precision_at", precision_at, allow_empty=True)
    if not isinstance(pr_curve, (bool, np.bool_)):
        raise TypeError(f"pr_curve must be a bool, got {type(pr_curve).__name__}")
    if not (map_at or precision_at or pr_curve):
        raise ValueError(
            "nothing to compute: map_at and precision_at are empty and pr_curve is False"
        )
    lab, directions = _category_layout(sim1, sim2, labels, captions_per_image)
    i2t, t2i = (
        _scan(m.shape[0], m.shape[1], _matrix_blocks(m, name), _rows_per_block(m.shape[1]),
              labels=lab, query_index=qi, item_index=ii, map_at=map_at,
              precision_at=precision_at, pr=bool(pr_curve))
        for (m, qi, ii), name in zip(directions, ("sim1", "sim1" if sim2 is None else "sim2"))
    )
    return i2t, t2i


def category_retrieval(sim1, labels, k=None, sim2=None, captions_per_image="auto"):
    """Category-level mAP@k in both directions, as ``fico_itr.category_retrieval``.

    Parameters
    ----------
    sim1 : (n_images, n_captions) array
        Higher is better; either orientation.  A square matrix with an int
        ``captions_per_image`` > 1 is an image-duplicated matrix: as in fico-itr,
        every row and every column is a query/candidate and the labels are repeated
        ``captions_per_image`` times on both axes.
    labels : array
        Per *image* (not per caption): 1-D single labels (relevant = equal) or 2-D
        multi-hot (relevant = shares at least one label).  Captions inherit their
        image's label through ``captions_per_image``.
    k : int or None
        Depth; None ranks every candidate (mAP@N).  A k above the number of candidates
        means all of them, as in fico-itr.
    sim2 : array, optional
        Text-to-image matrix (captions x images); ``sim1.T`` when omitted.  For a
        rectangular ``sim2`` either orientation is accepted.
    captions_per_image : 'auto', int, counts array, caption -> image map or dict

    Returns
    -------
    (mAP_i2t, mAP_t2i) : floats in [0, 1]

    AP@k is the mean of the precisions at the ranks of the relevant items within the
    top k, i.e. it is normalised by the relevant items *found in the top k*, not by all
    relevant items (fico-itr's, and the hashing literature's, mAP@k).  A query with no
    relevant item in its top k has AP 0.  See :func:`category_metrics` for the cost.

    Differences from fico-itr: k=0 or a negative k raises (fico-itr reads 0 as "all"
    and slices off the tail for negative k); labels with a row count other than the
    number of images raise; a ``sim2`` given as images x captions is turned around
    instead of being scored as image-to-text.
    """
    depth = None if k is None else _check_int("k", k)
    i2t, t2i = category_metrics(sim1, labels, sim2=sim2, captions_per_image=captions_per_image,
                                map_at=(depth,))
    key = "mAP@N" if depth is None else f"mAP@{depth}"
    return i2t[key], t2i[key]


def precision_at_k(sim1, labels, ks=(1, 5, 10, 100), *, sim2=None, captions_per_image="auto"):
    """Category-level precision@K: ``(i2t, t2i)`` dicts of ``P@K`` (fractions).

    P@K is the share of the top K candidates that share a label with the query,
    averaged over queries (K above the number of candidates means all of them).
    """
    return category_metrics(sim1, labels, sim2=sim2, captions_per_image=captions_per_image,
                            map_at=(), precision_at=ks)


def pr_curve(sim1, labels, *, sim2=None, captions_per_image="auto"):
    """11-point interpolated precision-recall curves ``(i2t, t2i)``, arrays of shape (11,).

    Values are precisions at the recall levels :data:`RECALL_LEVELS` (0.0, 0.1, ...,
    1.0); see :func:`category_metrics` for the definition.
    """
    i2t, t2i = category_metrics(sim1, labels, sim2=sim2, captions_per_image=captions_per_image,
                                map_at=(), pr_curve=True)
    return i2t["PR"], t2i["PR"]


def rsum(i2t, t2i, ks=(1, 5, 10)):
    """rSum: the sum of R@K over both directions (R@1, R@5, R@10 by default), in percent
    points, as reported by VSE++-style papers (600 is perfect)."""
    ks = _check_depths("ks", ks)
    total = 0.0
    for name, d in (("i2t", i2t), ("t2i", t2i)):
        if not isinstance(d, Mapping):
            raise TypeError(f"{name} must be a dict of metrics, got {type(d).__name__}")
        for k in ks:
            if f"R@{k}" not in d:
                raise ValueError(f"{name} has no 'R@{k}'; compute it with ks including {k}")
            total += float(d[f"R@{k}"])
    return total


# --------------------------------------------------------------------------------------
# Embeddings in


_METRICS = ("ip", "cosine", "hamming")


def _check_embeddings(image_emb, text_emb, metric):
    if metric is not None and not isinstance(metric, str):
        raise TypeError(f"metric must be a string or None, got {type(metric).__name__}")
    if metric is not None and metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS} or None, got {metric!r}")
    arrays = []
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        emb = as_numpy(emb, name)
        if np.issubdtype(emb.dtype, np.floating) and emb.dtype != np.float32:
            # Same rule as the indexes: other float dtypes are converted once.
            emb = emb.astype(np.float32)
        if emb.dtype not in (np.float32, np.uint8):
            raise TypeError(
                f"{name} must be float embeddings or packed uint8 codes, got dtype {emb.dtype}"
            )
        if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
            raise ValueError(
                f"{name} must be a non-empty 2-D array (items x width), got shape {emb.shape}"
            )
        arrays.append(emb)
    images, texts = arrays
    if images.dtype != texts.dtype:
        raise TypeError(
            f"image_emb and text_emb must have the same dtype, got {images.dtype} and {texts.dtype}"
        )
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must have the same width, got {images.shape[1]} and "
            f"{texts.shape[1]}"
        )
    binary = images.dtype == np.uint8
    if metric is None:
        metric = "hamming" if binary else "cosine"
    if binary != (metric == "hamming"):
        raise TypeError(
            f"metric={metric!r} needs "
            f"{'packed uint8 codes' if metric == 'hamming' else 'float32 embeddings'}, "
            f"got dtype {images.dtype}"
        )
    if metric == "cosine":
        images, texts = (_unit_rows(n, e) for n, e in (("image_emb", images), ("text_emb", texts)))
    elif not binary:
        for name, e in (("image_emb", images), ("text_emb", texts)):
            if not np.isfinite(e).all():
                raise ValueError(f"{name} must be finite, found NaN or inf")
    return np.ascontiguousarray(images), np.ascontiguousarray(texts), metric


def _unit_rows(name, emb):
    if not np.isfinite(emb).all():
        raise ValueError(f"{name} must be finite, found NaN or inf")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has an all-zero row, whose cosine similarity is undefined")
    return (emb / norms).astype(np.float32)


def _popcount_words(codes):
    """View packed codes as the widest unsigned words that divide the row width."""
    for dtype in (np.uint64, np.uint32, np.uint16):
        if codes.shape[1] % np.dtype(dtype).itemsize == 0:
            return np.ascontiguousarray(codes).view(dtype)
    return codes


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_lut(words):
    """Per-byte popcount by table lookup, for NumPy < 2.0 (no ``bitwise_count``); the
    last axis then counts bytes instead of words, which sums to the same totals."""
    b = np.ascontiguousarray(words).view(np.uint8)
    return _BYTE_POPCOUNT[b]


_popcount = getattr(np, "bitwise_count", _popcount_lut)


class _Scorer:
    """Blocks of exact keys (smaller = better) of queries against a database, in NumPy.

    Float: negated float32 inner products (one BLAS product per block).  Hamming:
    XOR + popcount of packed words, as int32 distances.
    """

    def __init__(self, database, metric):
        self.hamming = metric == "hamming"
        if self.hamming:
            self.db = _popcount_words(database)
            self.per_item = self.db.shape[1]
        else:
            # Negating the database instead of each block of scores saves a pass, and is
            # exact: rounding is symmetric, so q @ (-d) == -(q @ d) bit for bit.
            self.neg_db_t = np.ascontiguousarray(-database.T)
            self.per_item = 1
        self.n = database.shape[0]

    def rows_per_block(self):
        return _rows_per_block(self.n, self.per_item)

    def blocks(self, queries):
        """``block_key`` for :func:`_scan`."""
        return lambda q0, q1: self.key(queries[q0:q1])

    def key(self, queries):
        if self.hamming:
            q = _popcount_words(queries)
            x = np.bitwise_xor(q[:, None, :], self.db[None, :, :])
            return _popcount(x).sum(axis=2, dtype=np.int32)
        return queries @ self.neg_db_t


def _engine_direction(queries, database, metric, truth, ks, labels, query_index, item_index,
                      map_at, precision_at):
    """R@K, mAP@k and P@K of one direction from the engine's fused top-k alone."""
    from . import dot_knn, hamming_knn  # lazily: the package imports this module

    knn = hamming_knn if metric == "hamming" else dot_knn
    nq, n = queries.shape[0], database.shape[0]
    acc = None
    if labels is not None and (map_at or precision_at):
        acc = _CategoryAccumulator(n, map_at, precision_at, False)
    depth = min(n, max(ks + map_at + precision_at))
    hit = np.empty(nq, dtype=np.int64)
    for q0 in range(0, nq, _ENGINE_QUERY_CHUNK):
        chunk = queries[q0:q0 + _ENGINE_QUERY_CHUNK]
        _, ids = knn(database, chunk, depth)
        ids = np.asarray(ids, dtype=np.int64)
        hit[q0:q0 + len(chunk)] = truth.first_hit(ids, q0)
        if acc is not None:
            acc.add(labels.relevance_at(query_index[q0:q0 + len(chunk)], item_index[ids]))
    out = {f"R@{k}": 100.0 * float(np.mean(hit < k)) for k in ks}
    if acc is not None:
        out.update(acc.result())
    return out


def ranking_metrics(ids, caption_to_image, *, direction, labels=None, ks=(1, 5, 10),
                    map_at=(10, 100), precision_at=()):
    """Metrics of one direction from ranked id lists, such as a cascade's output.

    Parameters
    ----------
    ids : (nq, K) integer array
        Ranked database ids per query, best first; ``-1`` marks padding (fewer than K
        results), as in :class:`cofisearch.SearchResult`. Query ``q`` is image ``q`` for
        ``direction="i2t"`` (ids are caption ids) and caption ``q`` for ``"t2i"`` (ids
        are image ids).
    caption_to_image : (n_captions,) integer array
        Image id of every caption.
    labels : per-image labels (1-D or multi-hot), for mAP@k and P@K.
    ks, map_at, precision_at : depths; every depth must be at most K, since nothing
        beyond the lists is known (so mAP@N needs K = database size).

    Returns a dict with ``R@k`` (percent) and, with labels, ``mAP@k`` / ``P@k``, with the
    same meaning and normalisation as :func:`evaluate` (AP@k is normalised by the
    relevant items found in the top k).
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"ids must be 2-D (queries x K), got shape {ids.shape}")
    if direction not in ("i2t", "t2i"):
        raise ValueError(f"direction must be 'i2t' or 't2i', got {direction!r}")
    cap2img = np.asarray(caption_to_image)
    if cap2img.ndim != 1 or cap2img.dtype.kind not in "iu" or cap2img.size == 0:
        raise ValueError(
            f"caption_to_image must be a non-empty 1-D integer array, got shape "
            f"{cap2img.shape} and dtype {cap2img.dtype}"
        )
    cap2img = cap2img.astype(np.int64)
    n_img = int(cap2img.max()) + 1
    _check_map_range(cap2img, n_img)
    ks = _check_depths("ks", ks)
    map_at = _check_depths("map_at", map_at, allow_empty=True)
    precision_at = _check_depths("precision_at", precision_at, allow_empty=True)
    if labels is None:
        map_at = precision_at = ()
    depth = ids.shape[1]
    too_deep = [k for k in ks + map_at + precision_at if k > depth]
    if too_deep:
        raise ValueError(f"every depth must be at most K={depth} (the ids' columns), got {too_deep}")
    img_ids = np.arange(n_img, dtype=np.int64)
    if direction == "i2t":
        truth = _Truth.images_to_captions(cap2img, n_img)
        n_items, query_index, item_index = len(cap2img), img_ids, cap2img
    else:
        truth = _Truth.captions_to_images(cap2img, n_img)
        n_items, query_index, item_index = n_img, cap2img, img_ids
    if ids.shape[0] != len(query_index):
        raise ValueError(
            f"ids must have one row per {'image' if direction == 'i2t' else 'caption'} "
            f"({len(query_index)}), got {ids.shape[0]}"
        )
    if ids.size and (ids.min() < -1 or ids.max() >= n_items):
        raise ValueError(f"ids must be in [0, {n_items}) or -1, got values outside")
    padded = ids < 0
    safe = np.where(padded, 0, ids).astype(np.int64)
    hit = truth.item_owner[safe] == truth.query_owner[:, None]
    hit &= ~padded
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), depth)
    out = {f"R@{k}": 100.0 * float(np.mean(first < k)) for k in ks}
    if labels is not None and (map_at or precision_at):
        lab = _Labels(labels, n_img)
        acc = _CategoryAccumulator(n_items, map_at, precision_at, False)
        rel = lab.relevance_at(query_index, item_index[safe])
        rel &= ~padded
        acc.add(rel)
        out.update(acc.result())
    return out


def evaluate(image_emb, text_emb, *, captions_per_image="auto", labels=None, ks=(1, 5, 10),
             map_at=(10, 100, None), precision_at=(), pr_curve=False, metric=None, ranks=True):
    """Evaluate image and text embeddings in both directions, without a similarity matrix.

    Parameters
    ----------
    image_emb, text_emb : (n, d) float32 or (n, bytes) packed uint8
        Rows of ``text_emb`` are captions, attributed to images by
        ``captions_per_image`` ('auto', int, counts, caption -> image map or dict; see
        the module docstring).
    labels : array, optional
        Per-image category labels (1-D or multi-hot) for the category metrics.
    ks : recall depths.
    map_at : mAP depths, ``None`` meaning every candidate (mAP@N); used with labels.
    precision_at : precision@K depths; needs labels.
    pr_curve : add the 11-point interpolated PR curve (``PR``); needs labels.
    metric : 'ip', 'cosine' or 'hamming'; by default 'cosine' for float32 and
        'hamming' for uint8.  Cosine normalises the rows (in float32) first.
    ranks : compute ``MedianR`` and ``MeanR`` (default True).

    Returns
    -------
    (i2t, t2i) : dicts with the keys and units of :func:`instance_retrieval` and
        :func:`category_metrics`; ``rsum(i2t, t2i)`` gives rSum.  The values equal
        those functions' on the full similarity matrix (ties by the smaller id in both).

    What costs what.  Two paths, chosen from what is asked for:

    - Top-k only (``ranks=False``, no ``None`` in ``map_at``, no ``pr_curve``): the
      engine's fused top-k (``dot_knn`` / ``hamming_knn``) at depth max(K) per
      direction gives R@K, mAP@k and P@K.  No similarity matrix, no sort; this is the
      path that scales to large databases.
    - Otherwise one exhaustive pass in NumPy over blocks of queries: a float32 BLAS
      product (or XOR + popcount of packed words) per block.  Each true match's rank
      (MedianR, MeanR, R@K) is counted in O(n) per query without sorting; top-k lists
      come from a partial selection; only mAP@N and the PR curve sort each row
      (O(n log n)).  The engine is not called here, since scoring everything once in
      NumPy is cheaper than scoring it again in the engine.

    Memory stays at some tens of MiB beyond the inputs, whatever the sizes, since the
    queries go in blocks; 5,000 images x 25,000 captions takes seconds.
    """
    images, texts, metric = _check_embeddings(image_emb, text_emb, metric)
    ks = _check_depths("ks", ks)
    map_at = _check_depths("map_at", map_at, allow_none=True, allow_empty=True)
    precision_at = _check_depths("precision_at", precision_at, allow_empty=True)
    for name, flag in (("pr_curve", pr_curve), ("ranks", ranks)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if labels is None and (precision_at or pr_curve):
        raise ValueError("precision_at and pr_curve are category metrics and need labels")
    n_img, n_txt = images.shape[0], texts.shape[0]
    cap2img = _caption_map(captions_per_image, n_img, n_txt)
    _check_every_image_captioned(cap2img, n_img)
    lab = None if labels is None else _Labels(labels, n_img)
    if lab is None:
        map_at = ()
    img_ids = np.arange(n_img, dtype=np.int64)
    directions = (
        (images, texts, _Truth.images_to_captions(cap2img, n_img), img_ids, cap2img),
        (texts, images, _Truth.captions_to_images(cap2img, n_img), cap2img, img_ids),
    )
    exhaustive = bool(ranks) or None in map_at or bool(pr_curve)
    results = []
    for queries, database, truth, query_index, item_index in directions:
        if exhaustive:
            scorer = _Scorer(database, metric)
            out = _scan(queries.shape[0], database.shape[0], scorer.blocks(queries),
                        scorer.rows_per_block(),
                        truth=truth, ks=ks, labels=lab, query_index=query_index,
                        item_index=item_index, map_at=map_at, precision_at=precision_at,
                        pr=bool(pr_curve))
            if not ranks:
                del out["MedianR"], out["MeanR"]
        else:
            out = _engine_direction(queries, database, metric, truth, ks, lab, query_index,
                                    item_index, map_at, precision_at)
        results.append(out)
    return tuple(results)

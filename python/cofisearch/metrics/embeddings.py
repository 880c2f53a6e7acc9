"""Metrics from image and text embeddings, without a similarity matrix.

:func:`evaluate` scores float32 embeddings (inner product or cosine) or packed uint8
codes (Hamming) either with the engine's fused top-k (top-k metrics alone) or in one
NumPy pass over bounded blocks of queries (ranks, mAP@N, the PR curve).
"""

from __future__ import annotations

import numpy as np

from .._checks import as_numpy, check_bool, check_choice, check_int_sequence
from .._index import dot_knn, hamming_knn
from .._reference import hamming_distances, unit_rows, words
from ._labels import Labels, caption_map, check_every_image_captioned
from ._scan import CategoryAccumulator, Truth, rows_per_block, scan

__all__ = ["evaluate"]

_METRICS = ("ip", "cosine", "hamming")

# Queries per call of the engine's top-k, which bounds the (queries x depth) results
# held at once.
_ENGINE_QUERY_CHUNK = 8192


def _check_embeddings(image_emb, text_emb, metric):
    if metric is not None and not isinstance(metric, str):
        raise TypeError(f"metric must be a string or None, got {type(metric).__name__}")
    check_choice(metric, "metric", (*_METRICS, None))
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
    if not np.abs(emb).max(axis=1).all():
        raise ValueError(f"{name} has an all-zero row, whose cosine similarity is undefined")
    return unit_rows(emb).astype(np.float32)


class _Scorer:
    """Blocks of exact keys (smaller = better) of queries against a database, in NumPy.

    Float: negated float32 inner products (one BLAS product per block).  Hamming:
    XOR + popcount of packed words, as int32 distances.
    """

    def __init__(self, database, metric):
        self.hamming = metric == "hamming"
        if self.hamming:
            self.db = database
            # The XOR temporaries hold one element per word, not per item.
            self.per_item = words(database).shape[1]
        else:
            # Negating the database instead of each block of scores saves a pass, and is
            # exact: rounding is symmetric, so q @ (-d) == -(q @ d) bit for bit.
            self.neg_db_t = np.ascontiguousarray(-database.T)
            self.per_item = 1
        self.n = database.shape[0]

    def rows_per_block(self):
        return rows_per_block(self.n, self.per_item)

    def blocks(self, queries):
        """``block_key`` for :func:`scan`."""
        return lambda q0, q1: self.key(queries[q0:q1])

    def key(self, queries):
        if self.hamming:
            return hamming_distances(queries, self.db)
        return queries @ self.neg_db_t


def _engine_direction(queries, database, metric, truth, ks, labels, query_index, item_index,
                      map_at, precision_at):
    """R@K, mAP@k and P@K of one direction from the engine's fused top-k alone."""
    knn = hamming_knn if metric == "hamming" else dot_knn
    nq, n = queries.shape[0], database.shape[0]
    acc = None
    if labels is not None and (map_at or precision_at):
        acc = CategoryAccumulator(n, map_at, precision_at, False)
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


def evaluate(image_emb, text_emb, *, captions_per_image="auto", labels=None, ks=(1, 5, 10),
             map_at=(10, 100, None), precision_at=(), pr_curve=False, metric=None, ranks=True):
    """Evaluate image and text embeddings in both directions, without a similarity matrix.

    Parameters
    ----------
    image_emb, text_emb : (n, d) float32 or (n, bytes) packed uint8
        Rows of ``text_emb`` are captions, attributed to images by
        ``captions_per_image`` ('auto', int, counts, caption -> image map or dict; see
        :mod:`cofisearch.metrics`).
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
    (i2t, t2i) : dicts with the keys and units of
        :func:`~cofisearch.metrics.instance_retrieval` and
        :func:`~cofisearch.metrics.category_metrics`; ``rsum(i2t, t2i)`` gives rSum.  The
        values equal those functions' on the full similarity matrix (ties by the smaller
        id in both).

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
    ks = check_int_sequence(ks, "ks")
    map_at = check_int_sequence(map_at, "map_at", allow_none=True, allow_empty=True)
    precision_at = check_int_sequence(precision_at, "precision_at", allow_empty=True)
    pr_curve = check_bool(pr_curve, "pr_curve")
    ranks = check_bool(ranks, "ranks")
    if labels is None and (precision_at or pr_curve):
        raise ValueError("precision_at and pr_curve are category metrics and need labels")
    n_img, n_txt = images.shape[0], texts.shape[0]
    cap2img = caption_map(captions_per_image, n_img, n_txt)
    check_every_image_captioned(cap2img, n_img)
    lab = None if labels is None else Labels(labels, n_img)
    if lab is None:
        map_at = ()
    img_ids = np.arange(n_img, dtype=np.int64)
    directions = (
        (images, texts, Truth.images_to_captions(cap2img, n_img), img_ids, cap2img),
        (texts, images, Truth.captions_to_images(cap2img, n_img), cap2img, img_ids),
    )
    exhaustive = bool(ranks) or None in map_at or bool(pr_curve)
    results = []
    for queries, database, truth, query_index, item_index in directions:
        if exhaustive:
            scorer = _Scorer(database, metric)
            out = scan(queries.shape[0], database.shape[0], scorer.blocks(queries),
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

"""The fico-itr-compatible metrics, from a similarity matrix.

:func:`instance_retrieval` and :func:`category_retrieval` are drop-in replacements for
``fico_itr`` 1.0.0 (same argument names, defaults, result keys and units);
:func:`category_metrics`, :func:`precision_at_k`, :func:`pr_curve` and :func:`rsum` go
beyond it.  The matrix is read as fico-itr reads it (either orientation, or a square
matrix of images repeated along the rows); see :mod:`cofisearch.metrics` for the
conventions.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from .._checks import check_bool, check_int_sequence, check_positive_int
from .._reference import ascending_key
from ._labels import Labels, caption_map, check_every_image_captioned
from ._scan import Truth, rows_per_block, scan

__all__ = [
    "category_metrics",
    "category_retrieval",
    "instance_retrieval",
    "pr_curve",
    "precision_at_k",
    "rsum",
]


def _check_matrix(matrix, name):
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


def _matrix_blocks(matrix, name):
    """``block_key`` for :func:`scan`: rows of ``matrix``, best (highest) first."""

    def block_key(q0, q1):
        block = np.asarray(matrix[q0:q1])
        if block.dtype.kind == "f" and block.size:
            # One pass: the maximum propagates NaN and exposes +inf, which would rank
            # first for no reason a metric can report (-inf stays: "never relevant").
            top = block.max()
            if np.isnan(top):
                raise ValueError(f"{name} must not contain NaN")
            if top == np.inf:
                raise ValueError(f"{name} must not contain +inf")
        return ascending_key(block, largest=True)

    return block_key


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
        return (unique_rows, Truth.images_to_captions(owner, n_images),
                unique_rows.T, Truth.captions_to_images(owner, n_images))
    if rows == cols and not _uniform(captions_per_image):
        raise ValueError(
            f"{name} is square ({rows} x {cols}) and captions_per_image is an explicit "
            "map, which is ambiguous (as in fico-itr); pass the rectangular images x "
            "captions matrix, or an int for image-duplicated square matrices"
        )
    cap2img = caption_map(captions_per_image, rows, cols)
    check_every_image_captioned(cap2img, rows)
    return (matrix, Truth.images_to_captions(cap2img, rows),
            matrix.T, Truth.captions_to_images(cap2img, rows))


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
        See :mod:`cofisearch.metrics`.
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
    ks = check_int_sequence(ks, "ks")
    sim = _oriented(_check_matrix(similarity_matrix, "similarity_matrix"))
    i2t_m, i2t_truth, t2i_m, t2i_truth = _instance_layout(sim, captions_per_image,
                                                          "similarity_matrix")
    if t2i_sim is not None:
        other = _oriented(_check_matrix(t2i_sim, "t2i_sim"))
        if other.shape != sim.shape:
            raise ValueError(
                f"t2i_sim must describe the same images and captions as similarity_matrix "
                f"({sim.shape[0]} x {sim.shape[1]} in either orientation), got shape "
                f"{np.shape(t2i_sim)}"
            )
        _, _, t2i_m, t2i_truth = _instance_layout(other, captions_per_image, "t2i_sim")
    t2i_name = "similarity_matrix" if t2i_sim is None else "t2i_sim"
    i2t, t2i = (
        scan(m.shape[0], m.shape[1], _matrix_blocks(m, name), rows_per_block(m.shape[1]),
              truth=truth, ks=ks)
        for m, truth, name in ((i2t_m, i2t_truth, "similarity_matrix"),
                               (t2i_m, t2i_truth, t2i_name))
    )
    return i2t, t2i


def _category_layout(sim1, sim2, labels, captions_per_image):
    """[(matrix, query label index, item label index), ...] for i2t then t2i."""
    sim = _oriented(_check_matrix(sim1, "sim1"))
    rows, cols = sim.shape
    if sim2 is None:
        other = sim.T
    else:
        other = _check_matrix(sim2, "sim2")
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
        lab = Labels(labels, n_images)
        return lab, [(sim, owner, owner), (other, owner, owner)]
    cap2img = caption_map(captions_per_image, rows, cols)
    lab = Labels(labels, rows)
    images = np.arange(rows, dtype=np.int64)
    return lab, [(sim, images, cap2img), (other, cap2img, images)]


def category_metrics(sim1, labels, *, sim2=None, captions_per_image="auto",
                     map_at=(10, 100, None), precision_at=(), pr_curve=False):
    """mAP at several depths, precision@K and the 11-point PR curve, from one ranking.

    Same inputs as :func:`category_retrieval`.  Returns ``(i2t, t2i)`` dicts with
    ``mAP@k`` for each entry of ``map_at`` (``None`` gives ``mAP@N``, every candidate),
    ``P@K`` for each entry of ``precision_at`` (relevant items in the top K over K,
    averaged over all queries), and, with ``pr_curve=True``, ``PR``: the 11-point
    interpolated precision-recall curve at :data:`~cofisearch.metrics.RECALL_LEVELS`
    (precision at recall r is the best precision at any rank whose recall is >= r;
    averaged over the queries that have at least one relevant item; all NaN if none
    has).  All values are fractions in [0, 1].

    AP@k is normalised by the number of relevant items found *in the top k* (not by
    all relevant items), as fico-itr and the hashing literature do; a query with none
    in its top k scores 0 and still counts in the mean.

    Cost: each query's candidates are ranked once for all depths.  Depths well below
    the number of candidates use a partial selection; ``mAP@N`` and the PR curve sort
    every row (O(n log n) per query), in blocks of rows so memory stays bounded.
    """
    map_at = check_int_sequence(map_at, "map_at", allow_none=True, allow_empty=True)
    precision_at = check_int_sequence(precision_at, "precision_at", allow_empty=True)
    pr_curve = check_bool(pr_curve, "pr_curve")
    if not (map_at or precision_at or pr_curve):
        raise ValueError(
            "nothing to compute: map_at and precision_at are empty and pr_curve is False"
        )
    lab, directions = _category_layout(sim1, sim2, labels, captions_per_image)
    i2t, t2i = (
        scan(m.shape[0], m.shape[1], _matrix_blocks(m, name), rows_per_block(m.shape[1]),
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
    depth = None if k is None else check_positive_int(k, "k")
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

    Values are precisions at the recall levels :data:`~cofisearch.metrics.RECALL_LEVELS`
    (0.0, 0.1, ..., 1.0); see :func:`category_metrics` for the definition.
    """
    i2t, t2i = category_metrics(sim1, labels, sim2=sim2, captions_per_image=captions_per_image,
                                map_at=(), pr_curve=True)
    return i2t["PR"], t2i["PR"]


def rsum(i2t, t2i, ks=(1, 5, 10)):
    """rSum: the sum of R@K over both directions (R@1, R@5, R@10 by default), in percent
    points, as reported by VSE++-style papers (600 is perfect)."""
    ks = check_int_sequence(ks, "ks")
    total = 0.0
    for name, d in (("i2t", i2t), ("t2i", t2i)):
        if not isinstance(d, Mapping):
            raise TypeError(f"{name} must be a dict of metrics, got {type(d).__name__}")
        for k in ks:
            if f"R@{k}" not in d:
                raise ValueError(f"{name} has no 'R@{k}'; compute it with ks including {k}")
            total += float(d[f"R@{k}"])
    return total

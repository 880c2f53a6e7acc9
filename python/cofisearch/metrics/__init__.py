"""Retrieval metrics for image-text search, compatible with the ``fico-itr`` package.

Two groups of functions live here, re-exported from :mod:`.fico` (similarity matrix in),
:mod:`.embeddings` (:func:`evaluate`) and :mod:`.ranking` (:func:`ranking_metrics`, for
ranked id lists such as a cascade's output).

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

from ._scan import RECALL_LEVELS
from .embeddings import evaluate
from .fico import (
    category_metrics,
    category_retrieval,
    instance_retrieval,
    pr_curve,
    precision_at_k,
    rsum,
)
from .ranking import ranking_metrics

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

"""Metrics of one direction from ranked id lists, such as a cascade's output.

Nothing is scored here: :func:`ranking_metrics` reads the order the lists already give,
so it measures whatever produced them (an index, a cascade, a sharded search).
"""

from __future__ import annotations

import numpy as np

from .._checks import check_choice, check_int_sequence
from ._labels import Labels, check_map_range
from ._scan import CategoryAccumulator, Truth

__all__ = ["ranking_metrics"]


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
    same meaning and normalisation as :func:`~cofisearch.metrics.evaluate` (AP@k is
    normalised by the relevant items found in the top k).
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"ids must be 2-D (queries x K), got shape {ids.shape}")
    check_choice(direction, "direction", ("i2t", "t2i"))
    cap2img = np.asarray(caption_to_image)
    if cap2img.ndim != 1 or cap2img.dtype.kind not in "iu" or cap2img.size == 0:
        raise ValueError(
            f"caption_to_image must be a non-empty 1-D integer array, got shape "
            f"{cap2img.shape} and dtype {cap2img.dtype}"
        )
    cap2img = cap2img.astype(np.int64)
    n_img = int(cap2img.max()) + 1
    check_map_range(cap2img, n_img)
    ks = check_int_sequence(ks, "ks")
    map_at = check_int_sequence(map_at, "map_at", allow_empty=True)
    precision_at = check_int_sequence(precision_at, "precision_at", allow_empty=True)
    if labels is None:
        map_at = precision_at = ()
    depth = ids.shape[1]
    too_deep = [k for k in ks + map_at + precision_at if k > depth]
    if too_deep:
        raise ValueError(
            f"every depth must be at most K={depth} (the ids' columns), got {too_deep}"
        )
    img_ids = np.arange(n_img, dtype=np.int64)
    if direction == "i2t":
        truth = Truth.images_to_captions(cap2img, n_img)
        n_items, query_index, item_index = len(cap2img), img_ids, cap2img
    else:
        truth = Truth.captions_to_images(cap2img, n_img)
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
        lab = Labels(labels, n_img)
        acc = CategoryAccumulator(n_items, map_at, precision_at, False)
        rel = lab.relevance_at(query_index, item_index[safe])
        rel &= ~padded
        acc.add(rel)
        out.update(acc.result())
    return out

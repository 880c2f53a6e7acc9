"""Who matches whom: captions attributed to images, and per-image category labels.

Shared by every metric: the caption -> image map says which captions are an image's
true matches (instance metrics), the labels say which items are relevant to a query
(category metrics).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from .._checks import check_multi_hot, check_positive_int
from ._scan import rows_per_block

__all__ = ["Labels", "caption_map", "check_every_image_captioned", "check_map_range"]


def caption_map(captions_per_image, n_images, n_captions):
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
        per = check_positive_int(cpi, name)
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
        return check_map_range(cap2img, n_images)
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
        return check_map_range(arr.astype(np.int64), n_images)
    raise ValueError(
        f"{name} as an array must have length n_images={n_images} (counts) or "
        f"n_captions={n_captions} (caption -> image map), got length {len(arr)}"
    )


def check_map_range(cap2img, n_images):
    if len(cap2img) and (cap2img.min() < 0 or cap2img.max() >= n_images):
        raise ValueError(
            f"captions_per_image maps captions to image ids in [{cap2img.min()}, "
            f"{cap2img.max()}], expected ids in [0, {n_images - 1}]"
        )
    return cap2img


def check_every_image_captioned(cap2img, n_images):
    # fico-itr gives an image without captions the rank 1e20, which wrecks MeanR; an
    # image-to-text query with no true caption has no defined rank, so refuse it.
    counts = np.bincount(cap2img, minlength=n_images)
    if (counts == 0).any():
        first = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(
            f"captions_per_image leaves {int((counts == 0).sum())} image(s) without a caption "
            f"(first: image {first}); image-to-text ranks need at least one per image"
        )


class Labels:
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
        check_multi_hot(lab, "labels")
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
        step = rows_per_block(k, self.words.shape[1])
        for r0 in range(0, rows, step):
            items = self.words[item_index[r0:r0 + step]]
            out[r0:r0 + step] = (q[r0:r0 + step] & items).any(axis=2)
        return out

"""Training-free binarisers of float embeddings: ``RandomRotationBinarizer`` and
``ITQBinarizer``. NumPy only: this module never imports torch."""

from __future__ import annotations

import copy

import numpy as np

from .._checks import check_int, check_nbits
from ._arrays import CHUNK_ROWS, check_features, check_finite, pack_signs, signs_pm1

__all__ = ["ITQBinarizer", "RandomRotationBinarizer"]


def _random_orthogonal(rng, dim, ncols):
    """`ncols` columns, orthonormal within each block of `dim`, Haar-distributed."""
    blocks = []
    remaining = ncols
    while remaining > 0:
        width = min(dim, remaining)
        q, r = np.linalg.qr(rng.standard_normal((dim, width)))
        # Without the sign fix QR's output is biased towards the positive diagonal.
        q *= np.sign(np.diag(r))
        blocks.append(q)
        remaining -= width
    return np.concatenate(blocks, axis=1)


class _LinearBinarizer:
    """sign((x - mean_) @ projection_), packed. Subclasses fit mean_ and projection_."""

    def __init__(self, nbits, seed):
        self.nbits = check_nbits(nbits)
        self.seed = check_int(seed, "seed", minimum=0)
        self.mean_ = None
        self.projection_ = None

    def _require_fitted(self):
        if self.projection_ is None:
            raise ValueError(
                f"this {type(self).__name__} is not fitted yet; call fit(x) first"
            )

    def project(self, x):
        """The float projections ``(x - mean_) @ projection_``, (n, nbits) float32: what
        :meth:`transform` takes the signs of. An asymmetric screen scores these (a float
        query, not binarised) against items' codes read as ±1, which ranks far closer to
        the float inner product than the Hamming distance between two codes."""
        return self._project(x, "x")

    def with_mean(self, mean):
        """A copy with the same projection centred on ``mean`` (dim,) instead of ``mean_``:
        e.g. each modality on its own mean, when titles and descriptions (or captions and
        images) share one projection but sit apart in the embedding space."""
        self._require_fitted()
        centre = mean if isinstance(mean, np.ndarray) else np.asarray(mean)
        dim = self.mean_.shape[0]
        if centre.shape != (dim,):
            raise ValueError(f"mean must have shape ({dim},), got shape {centre.shape}")
        check_finite(check_features(centre[None], "mean", dim), "mean")
        other = copy.copy(self)
        other.mean_ = centre.astype(np.float32)
        return other

    def _project(self, x, name):
        self._require_fitted()
        arr = check_features(x, name, self.mean_.shape[0])
        check_finite(arr, name)
        out = np.empty((arr.shape[0], self.nbits), dtype=np.float32)
        for start in range(0, arr.shape[0], CHUNK_ROWS):
            chunk = arr[start : start + CHUNK_ROWS].astype(np.float32, copy=False)
            np.matmul(chunk - self.mean_, self.projection_, out=out[start : start + CHUNK_ROWS])
        return out

    def transform(self, x, *, packed=True):
        """Binary codes of `x` (n, dim): packed uint8 (n, nbits // 8), or int8 ±1 (n, nbits)."""
        self._require_fitted()
        arr = check_features(x, "x", self.mean_.shape[0])
        check_finite(arr, "x")
        nbytes = self.nbits // 8
        out = np.empty((arr.shape[0], nbytes if packed else self.nbits),
                       dtype=np.uint8 if packed else np.int8)
        for start in range(0, arr.shape[0], CHUNK_ROWS):
            chunk = arr[start : start + CHUNK_ROWS].astype(np.float32, copy=False)
            bits = (chunk - self.mean_) @ self.projection_ >= 0
            out[start : start + CHUNK_ROWS] = pack_signs(bits) if packed else signs_pm1(bits)
        return out

    def fit_transform(self, x, *, packed=True):
        return self.fit(x).transform(x, packed=packed)

    def quantization_error(self, x):
        """Mean over rows of ||sign(v) - v||^2, v the projected centred row (ITQ's objective)."""
        v = self._project(x, "x")
        if v.shape[0] == 0:
            raise ValueError(f"x must have at least 1 row, got shape {np.shape(x)}")
        b = np.where(v >= 0, np.float32(1), np.float32(-1))
        return float(np.square(b - v, dtype=np.float64).sum() / v.shape[0])

    def __repr__(self):
        return f"{type(self).__name__}(nbits={self.nbits}, seed={self.seed})"


def _column_mean(arr):
    total = np.zeros(arr.shape[1], dtype=np.float64)
    for start in range(0, arr.shape[0], CHUNK_ROWS):
        total += arr[start : start + CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    return total / arr.shape[0]


class RandomRotationBinarizer(_LinearBinarizer):
    """Sign of a random orthogonal projection of centred float embeddings.

    ``fit`` only learns the mean; the projection is a Haar-random orthogonal matrix drawn
    from ``seed`` (``dim x nbits``; for ``nbits > dim``, independent orthogonal blocks are
    stacked, which is sign random projection / SimHash beyond ``dim`` bits).

    Example::

        codes = RandomRotationBinarizer(64, seed=0).fit(emb).transform(emb)  # (n, 8) uint8
    """

    def __init__(self, nbits, seed=0):
        super().__init__(nbits, seed)

    def fit(self, x):
        arr = check_features(x, "x", min_rows=1)
        check_finite(arr, "x")
        rng = np.random.default_rng(self.seed)
        self.mean_ = _column_mean(arr).astype(np.float32)
        self.projection_ = _random_orthogonal(rng, arr.shape[1], self.nbits).astype(np.float32)
        return self


class ITQBinarizer(_LinearBinarizer):
    """Iterative quantisation (Gong & Lazebnik, CVPR 2011) of float embeddings.

    Centres the data, projects it onto its top ``nbits`` principal components, then
    alternates ``n_iter`` times between ``B = sign(V R)`` and the orthogonal Procrustes
    update of ``R`` that minimises ``||B - V R||_F^2``. The starting rotation is random
    (from ``seed``), so ``n_iter=0`` is "PCA + random rotation". Needs ``nbits <= dim``.

    After ``fit``: ``mean_`` (dim,), ``projection_`` (dim, nbits) = PCA basis @ rotation,
    and ``quantization_errors_``, the objective per row before each update and after the
    last one (``n_iter + 1`` values, non-increasing).
    """

    def __init__(self, nbits, n_iter=50, seed=0):
        super().__init__(nbits, seed)
        self.n_iter = check_int(n_iter, "n_iter", minimum=0)
        self.quantization_errors_ = None

    def fit(self, x):
        arr = check_features(x, "x", min_rows=2)
        if self.nbits > arr.shape[1]:
            raise ValueError(
                f"ITQBinarizer needs nbits <= the embedding width (PCA to nbits), got "
                f"nbits={self.nbits} for x of shape {arr.shape}; use "
                f"RandomRotationBinarizer for more bits than dimensions"
            )
        check_finite(arr, "x")
        rng = np.random.default_rng(self.seed)
        mean = _column_mean(arr)
        cov = np.zeros((arr.shape[1], arr.shape[1]), dtype=np.float64)
        for start in range(0, arr.shape[0], CHUNK_ROWS):
            c = arr[start : start + CHUNK_ROWS].astype(np.float64) - mean
            cov += c.T @ c
        _, vecs = np.linalg.eigh(cov)
        pca = vecs[:, ::-1][:, : self.nbits].astype(np.float32)
        mean32 = mean.astype(np.float32)

        v = np.empty((arr.shape[0], self.nbits), dtype=np.float32)
        for start in range(0, arr.shape[0], CHUNK_ROWS):
            chunk = arr[start : start + CHUNK_ROWS].astype(np.float32, copy=False)
            np.matmul(chunk - mean32, pca, out=v[start : start + CHUNK_ROWS])
        rotation = _random_orthogonal(rng, self.nbits, self.nbits)

        errors = []
        for _ in range(self.n_iter + 1):
            z = v @ rotation.astype(np.float32)
            b = np.where(z >= 0, np.float32(1), np.float32(-1))
            errors.append(float(np.square(b - z, dtype=np.float64).sum() / v.shape[0]))
            if len(errors) > self.n_iter:
                break
            # Procrustes: argmax_R tr(B^T V R) over orthogonal R is U W^T for V^T B = U S W^T.
            u, _, wt = np.linalg.svd((v.T @ b).astype(np.float64))
            rotation = u @ wt
        self.mean_ = mean32
        self.projection_ = (pca.astype(np.float64) @ rotation).astype(np.float32)
        self.quantization_errors_ = errors
        return self

    def __repr__(self):
        return f"ITQBinarizer(nbits={self.nbits}, n_iter={self.n_iter}, seed={self.seed})"

"""Encoders that turn precomputed image and text features into searchable codes.

Inputs are backbone features given as float arrays, one row per item, with a different
width per modality (the FiCo-ITR setting, where VGG-19 / Doc2Vec or VLP features are
extracted once). Outputs are NumPy arrays ready for the indexes:

* ``DualEncoder`` - fine-grained (FG) dual encoder: L2-normalised float32 embeddings for a
  ``FloatIndex``, trained with a symmetric InfoNCE instance-level loss.
* ``HashEncoder`` - cross-modal hashing (CG): packed binary codes for a ``BinaryIndex``,
  trained with an instance-level loss (contrastive on the pairs, like ADV/UCCH) or a
  category-level loss (pairwise label likelihood, like DCMH/DADH).
* ``RandomRotationBinarizer`` and ``ITQBinarizer`` - training-free binarisers of float
  embeddings (NumPy only, usable without torch).
* ``CrossAttentionReranker`` - a small fusion model scoring (query, candidate) pairs, the
  example for a cascade's optional third stage.

Packed codes: ``uint8`` of shape ``(n, nbits // 8)`` in ``numpy.packbits`` order (the first
bit is the most significant bit of byte 0); a ``+1`` bit (a value ``>= 0`` before the sign)
is a set bit. The unpacked form is ``int8`` of ``+1``/``-1``, shape ``(n, nbits)``.

PyTorch is an optional dependency (``pip install "cofisearch[torch]"``). It is imported only
when a torch-backed class is constructed or loaded, so ``import cofisearch`` and the
binarisers work without it. The torch classes run on the CPU. Training and encoding are
deterministic for a given ``seed`` and thread count: each call seeds its own RNG stream and
turns on ``torch.use_deterministic_algorithms`` and the requested thread count only for
its own duration, restoring the previous global state afterwards (so these calls are not
meant to run concurrently with other torch code in other threads). ``num_threads`` (default:
``torch.get_num_threads()``) sets the thread count; on cores shared with other busy
processes ``num_threads=1`` can be several times faster, as OpenMP threads spin-wait at
every barrier while a sibling thread is descheduled.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import types

import numpy as np

__all__ = [
    "DualEncoder",
    "HashEncoder",
    "CrossAttentionReranker",
    "RandomRotationBinarizer",
    "ITQBinarizer",
]

_INSTALL_HINT = 'pip install "cofisearch[torch]"'
_FORMAT = "cofisearch.encoders"
_FORMAT_VERSION = 1
# Rows per chunk when a whole-array pass (finiteness check, projection) would otherwise
# allocate a temporary as large as the input.
_CHUNK_ROWS = 65536


# --------------------------------------------------------------------------- checks


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value, name, *, positive=False, nonnegative=False, below=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


def _check_nbits(nbits):
    nbits = _check_int(nbits, "nbits", 8)
    if nbits % 8:
        raise ValueError(
            f"nbits must be a multiple of 8 so codes pack into whole bytes, got {nbits}"
        )
    return nbits


def _check_hidden(hidden):
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        sizes = tuple(hidden)
    except TypeError:
        raise TypeError(
            f"hidden must be an int or a sequence of ints, got {type(hidden).__name__}"
        ) from None
    return tuple(_check_int(h, "hidden", 1) for h in sizes)


def _check_finite(arr, name):
    for start in range(0, arr.shape[0], _CHUNK_ROWS):
        if not np.isfinite(arr[start : start + _CHUNK_ROWS]).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def _check_features(x, name, dim=None, *, min_rows=0):
    """A 2-D floating array with `dim` columns; returned without a copy where possible."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a floating-point array (float16, float32 or float64), "
            f"got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValueError(f"{name} must be 2-D with shape {want}, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got shape {arr.shape}")
    return arr


def _check_index_map(mapping, name, n_rows, n_targets, target_name):
    arr = mapping if isinstance(mapping, np.ndarray) else np.asarray(mapping)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.shape != (n_rows,):
        raise ValueError(f"{name} must have shape ({n_rows},), got shape {arr.shape}")
    if n_rows and (arr.min() < 0 or arr.max() >= n_targets):
        raise ValueError(
            f"{name} values must index {target_name} (0 <= value < {n_targets}), "
            f"got range [{arr.min()}, {arr.max()}]"
        )
    # A copy: small, and writable, which torch.from_numpy needs to stay quiet.
    return arr.astype(np.int64)


def _check_labels(labels, n_images):
    arr = labels if isinstance(labels, np.ndarray) else np.asarray(labels)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"labels must be integer class ids (n_images,) or a multi-hot array "
            f"(n_images, n_classes), got dtype {arr.dtype}"
        )
    if arr.ndim not in (1, 2) or arr.shape[0] != n_images:
        raise ValueError(
            f"labels must have shape ({n_images},) or ({n_images}, n_classes), "
            f"got shape {arr.shape}"
        )
    if arr.ndim == 1 and arr.dtype.kind not in "iu":
        raise TypeError(f"1-D labels must be integer class ids, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise ValueError(f"multi-hot labels need at least one class, got shape {arr.shape}")
    return arr


def _pack(signs_nonneg):
    """Pack a boolean "bit is +1" array (n, nbits) into numpy.packbits order."""
    return np.packbits(signs_nonneg, axis=1, bitorder="big")


def _to_pm1(signs_nonneg):
    return np.where(signs_nonneg, np.int8(1), np.int8(-1))


# --------------------------------------------------------------------------- binarisers


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
        self.nbits = _check_nbits(nbits)
        self.seed = _check_int(seed, "seed", 0)
        self.mean_ = None
        self.projection_ = None

    def _require_fitted(self):
        if self.projection_ is None:
            raise ValueError(
                f"this {type(self).__name__} is not fitted yet; call fit(x) first"
            )

    def _project(self, x, name):
        self._require_fitted()
        arr = _check_features(x, name, self.mean_.shape[0])
        _check_finite(arr, name)
        out = np.empty((arr.shape[0], self.nbits), dtype=np.float32)
        for start in range(0, arr.shape[0], _CHUNK_ROWS):
            chunk = arr[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
            np.matmul(chunk - self.mean_, self.projection_, out=out[start : start + _CHUNK_ROWS])
        return out

    def transform(self, x, *, packed=True):
        """Binary codes of `x` (n, dim): packed uint8 (n, nbits // 8), or int8 ±1 (n, nbits)."""
        self._require_fitted()
        arr = _check_features(x, "x", self.mean_.shape[0])
        _check_finite(arr, "x")
        nbytes = self.nbits // 8
        out = np.empty((arr.shape[0], nbytes if packed else self.nbits),
                       dtype=np.uint8 if packed else np.int8)
        for start in range(0, arr.shape[0], _CHUNK_ROWS):
            chunk = arr[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
            bits = (chunk - self.mean_) @ self.projection_ >= 0
            out[start : start + _CHUNK_ROWS] = _pack(bits) if packed else _to_pm1(bits)
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
    for start in range(0, arr.shape[0], _CHUNK_ROWS):
        total += arr[start : start + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
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
        arr = _check_features(x, "x", min_rows=1)
        _check_finite(arr, "x")
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
        self.n_iter = _check_int(n_iter, "n_iter", 0)
        self.quantization_errors_ = None

    def fit(self, x):
        arr = _check_features(x, "x", min_rows=2)
        if self.nbits > arr.shape[1]:
            raise ValueError(
                f"ITQBinarizer needs nbits <= the embedding width (PCA to nbits), got "
                f"nbits={self.nbits} for x of shape {arr.shape}; use "
                f"RandomRotationBinarizer for more bits than dimensions"
            )
        _check_finite(arr, "x")
        rng = np.random.default_rng(self.seed)
        mean = _column_mean(arr)
        cov = np.zeros((arr.shape[1], arr.shape[1]), dtype=np.float64)
        for start in range(0, arr.shape[0], _CHUNK_ROWS):
            c = arr[start : start + _CHUNK_ROWS].astype(np.float64) - mean
            cov += c.T @ c
        _, vecs = np.linalg.eigh(cov)
        pca = vecs[:, ::-1][:, : self.nbits].astype(np.float32)
        mean32 = mean.astype(np.float32)

        v = np.empty((arr.shape[0], self.nbits), dtype=np.float32)
        for start in range(0, arr.shape[0], _CHUNK_ROWS):
            chunk = arr[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
            np.matmul(chunk - mean32, pca, out=v[start : start + _CHUNK_ROWS])
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


# --------------------------------------------------------------------------- torch plumbing


def _require_torch(what):
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"{what} needs PyTorch, an optional dependency of cofisearch; "
            f"install it with: {_INSTALL_HINT}"
        ) from exc
    return torch


def _progress(total, desc, enabled):
    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(
            f"show_progress_bar=True needs tqdm; install it with: {_INSTALL_HINT}"
        ) from exc
    return tqdm(total=total, desc=desc, unit="batch")


@contextlib.contextmanager
def _torch_scope(torch, seed, num_threads):
    """Seeded, deterministic torch for the duration of one call; global state restored."""
    import torch.utils.deterministic as det_flags

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = getattr(det_flags, "fill_uninitialized_memory", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if num_threads is not None and num_threads != prev_threads:
                torch.set_num_threads(num_threads)
            torch.use_deterministic_algorithms(True)
            # Deterministic mode also NaN-fills every new tensor, which took an eighth of
            # the training time; nothing here reads memory it has not written.
            if prev_fill is not None:
                det_flags.fill_uninitialized_memory = False
            yield
        finally:
            if prev_fill is not None:
                det_flags.fill_uninitialized_memory = prev_fill
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn_only)
            if torch.get_num_threads() != prev_threads:
                torch.set_num_threads(prev_threads)


@functools.lru_cache(maxsize=None)
def _nets():
    """The nn.Module classes, defined on first use so this module imports without torch."""
    torch = _require_torch("cofisearch.encoders")
    nn = torch.nn
    F = torch.nn.functional

    class Tower(nn.Module):
        """Standardise with training-set statistics, then an MLP."""

        def __init__(self, in_dim, hidden, out_dim, dropout):
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("inv_std", torch.ones(in_dim))
            layers = []
            width = in_dim
            for h in hidden:
                layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
                width = h
            layers.append(nn.Linear(width, out_dim))
            self.mlp = nn.Sequential(*layers)

        def set_stats(self, x):
            # Backbone features come at arbitrary scales (VGG activations in the
            # thousands, Doc2Vec near zero); one fixed step size cannot serve both.
            mean = x.mean(0)
            std = x.std(0, unbiased=False)
            self.mean.copy_(mean)
            self.inv_std.copy_(1.0 / std.clamp_min(1e-6 * float(std.max()) + 1e-12))

        def forward(self, x):
            return self.mlp((x - self.mean) * self.inv_std)

    class TwoTowers(nn.Module):
        def __init__(self, image_dim, text_dim, hidden, out_dim, dropout, log_scale,
                     learn_scale):
            super().__init__()
            self.image = Tower(image_dim, hidden, out_dim, dropout)
            self.text = Tower(text_dim, hidden, out_dim, dropout)
            self.log_scale = nn.Parameter(torch.tensor(float(log_scale)),
                                          requires_grad=learn_scale)

    class Fusion(nn.Module):
        """Query and candidate as token sets; cross-attention both ways; MLP on the result.

        Attention is written out with einsum instead of nn.MultiheadAttention so that the
        query/key/value projections run once per query and once per candidate, and only
        the T x T token attention and a small MLP run per (query, candidate) pair.
        """

        def __init__(self, query_dim, candidate_dim, d_model, n_tokens, n_heads, hidden,
                     dropout, input_cosine):
            super().__init__()
            self.n_tokens, self.n_heads, self.d_model = n_tokens, n_heads, d_model
            self.input_cosine = input_cosine
            self.q_in = Tower(query_dim, (), n_tokens * d_model, 0.0)
            self.c_in = Tower(candidate_dim, (), n_tokens * d_model, 0.0)
            self.q_norm = nn.LayerNorm(d_model)
            self.c_norm = nn.LayerNorm(d_model)
            self.q_qkv = nn.Linear(d_model, 3 * d_model)
            self.c_qkv = nn.Linear(d_model, 3 * d_model)
            self.head = nn.Sequential(
                nn.Linear(4 * d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                nn.Linear(hidden, 1),
            )
            # A bilinear shortcut gives a usable score from the first steps; the
            # attention path learns the corrections on top of it.
            self.q_lin = nn.Linear(d_model, d_model, bias=False)
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            # When both inputs are first-stage embeddings, their cosine is the first
            # stage's score: starting from it, the model can only learn corrections and
            # does not have to rediscover what the dual encoder already knows.
            self.cosine_weight = nn.Parameter(torch.tensor(10.0 if input_cosine else 0.0),
                                              requires_grad=input_cosine)
            if input_cosine:
                # ... and start exactly there: the learned terms begin at zero.
                nn.init.zeros_(self.head[-1].weight)
                nn.init.zeros_(self.head[-1].bias)
                self.log_scale.data.fill_(-8.0)

        def _tokens(self, tower, norm, qkv, x):
            lead = x.shape[:-1]
            tok = norm(tower(x).view(*lead, self.n_tokens, self.d_model))
            q, k, v = qkv(tok).chunk(3, dim=-1)
            split = (*lead, self.n_tokens, self.n_heads, self.d_model // self.n_heads)
            return (tok.mean(-2), q.reshape(split), k.reshape(split), v.reshape(split),
                    F.normalize(x, dim=-1))

        def encode_queries(self, queries):
            return self._tokens(self.q_in, self.q_norm, self.q_qkv, queries)

        def encode_candidates(self, candidates):
            return self._tokens(self.c_in, self.c_norm, self.c_qkv, candidates)

        def pair_scores(self, enc_q, enc_c):
            # enc_q from (B, dq) queries, enc_c from (B, C, dc) candidates -> (B, C).
            # Only the pooled attention output is used, and mean_t(softmax(A) V) equals
            # mean_t(softmax(A)) V, so each direction costs one T x S score block and one
            # S-term weighted sum per pair; query tensors are never copied per candidate.
            qbar, qq, qk, qv, q_unit = enc_q
            cbar, cq, ck, cv, c_unit = enc_c
            scale = 1.0 / math.sqrt(qq.shape[-1])
            w_q = (torch.einsum("bthd,bcshd->bchts", qq, ck) * scale).softmax(-1).mean(3)
            q_att = torch.einsum("bchs,bcshd->bchd", w_q, cv).flatten(-2)
            w_c = (torch.einsum("bcthd,bshd->bchts", cq, qk) * scale).softmax(-1).mean(3)
            c_att = torch.einsum("bchs,bshd->bchd", w_c, qv).flatten(-2)
            qb = qbar.unsqueeze(1).expand_as(cbar)
            fused = torch.cat([qb * c_att, cbar * q_att, q_att * c_att, qb * cbar], -1)
            bilinear = (F.normalize(self.q_lin(qbar), dim=-1).unsqueeze(1)
                        * F.normalize(cbar, dim=-1)).sum(-1)
            score = self.head(fused).squeeze(-1) + self.log_scale.exp() * bilinear
            if self.input_cosine:
                score = score + self.cosine_weight * (q_unit.unsqueeze(1) * c_unit).sum(-1)
            return score

        def forward(self, queries, candidates):
            return self.pair_scores(self.encode_queries(queries),
                                    self.encode_candidates(candidates))

    return types.SimpleNamespace(torch=torch, Tower=Tower, TwoTowers=TwoTowers,
                                 Fusion=Fusion)


def _multi_positive_nce(logits, positive, dim):
    """-log( sum of exp over positives / sum of exp over all ) along `dim`, averaged.

    Several captions of one image can land in a batch; counting them as negatives of each
    other would push apart items the data says match.
    """
    masked = logits.masked_fill(~positive, float("-inf"))
    return (logits.logsumexp(dim) - masked.logsumexp(dim)).mean()


def _as_tensor(torch, arr):
    """float32 C-contiguous tensor sharing memory with `arr` where that is safe."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if not a.flags.writeable:
        # torch.from_numpy warns on read-only arrays (memory-mapped features are).
        a = a.copy()
    return torch.from_numpy(a)


class _TorchModel:
    """Shared config handling, training loop, batched inference and persistence."""

    def _init_common(self, seed, num_threads):
        self.seed = _check_int(seed, "seed", 0)
        if num_threads is not None:
            num_threads = _check_int(num_threads, "num_threads", 1)
        self.num_threads = num_threads
        self._n_fits = 0
        self._ns = _nets()
        self._torch = self._ns.torch

    def _build(self, factory):
        with _torch_scope(self._torch, self.seed, self.num_threads):
            net = factory()
        net.eval()
        return net

    @property
    def is_fitted(self):
        return self._n_fits > 0

    def _require_fitted(self):
        if not self._n_fits:
            raise ValueError(
                f"this {type(self).__name__} is not trained yet; call fit(...) first "
                f"or {type(self).__name__}.load(path)"
            )

    def _train(self, n_examples, batch_size, epochs, lr, weight_decay, step_loss,
               show_progress_bar):
        """AdamW with linear warm-up and cosine decay; `step_loss(ids)` gives the loss."""
        torch = self._torch
        epochs = _check_int(epochs, "epochs", 1)
        batch_size = _check_int(batch_size, "batch_size", 2)
        lr = _check_float(lr, "lr", positive=True)
        weight_decay = _check_float(weight_decay, "weight_decay", nonnegative=True)
        batch_size = min(batch_size, n_examples)
        # Drop the ragged last batch: a tiny batch gives a noisy contrastive loss with
        # almost no negatives.
        steps_per_epoch = max(1, n_examples // batch_size)
        total = epochs * steps_per_epoch
        warmup = max(1, min(total // 20, 200))
        params = [p for p in self.net.parameters() if p.requires_grad]
        seed = self.seed + 7919 * (self._n_fits + 1)
        history = []
        with _torch_scope(torch, seed, self.num_threads):
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt,
                lambda s: min(1.0, (s + 1) / warmup)
                * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)),
            )
            self.net.train()
            try:
                with _progress(total, f"{type(self).__name__}.fit",
                               show_progress_bar) as bar:
                    for _ in range(epochs):
                        order = torch.randperm(n_examples, generator=gen)
                        running = 0.0
                        for step in range(steps_per_epoch):
                            ids = order[step * batch_size : (step + 1) * batch_size]
                            loss = step_loss(ids, gen)
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                            opt.step()
                            sched.step()
                            running += loss.item()
                            if bar is not None:
                                bar.update(1)
                                bar.set_postfix(loss=f"{running / (step + 1):.4f}", refresh=False)
                        history.append(running / steps_per_epoch)
            finally:
                self.net.eval()
        self._n_fits += 1
        self.loss_history_ = getattr(self, "loss_history_", []) + history
        return self

    def _infer(self, fn, x, name, dim, batch_size, out_width, out_dtype, post,
               show_progress_bar):
        """Run `fn` over batches of `x`, writing `post(output)` into one preallocated array."""
        self._require_fitted()
        arr = _check_features(x, name, dim)
        batch_size = _check_int(batch_size, "batch_size", 1)
        torch = self._torch
        n = arr.shape[0]
        out = np.empty((n, out_width), dtype=out_dtype)
        steps = -(-n // batch_size)
        with _torch_scope(torch, self.seed, self.num_threads), torch.inference_mode(), \
                _progress(steps, f"{type(self).__name__}.{name}", show_progress_bar) as bar:
            for start in range(0, n, batch_size):
                chunk = _as_tensor(torch, arr[start : start + batch_size])
                if not torch.isfinite(chunk).all():
                    raise ValueError(f"{name} contains NaN or infinite values")
                out[start : start + batch_size] = post(fn(chunk).numpy())
                if bar is not None:
                    bar.update(1)
        return out

    def _config(self):
        raise NotImplementedError

    def save(self, path):
        """Write config and weights with torch.save; read back with ``type(self).load(path)``."""
        self._torch.save(
            {
                "format": _FORMAT,
                "format_version": _FORMAT_VERSION,
                "class": type(self).__name__,
                "config": self._config(),
                "n_fits": self._n_fits,
                "loss_history": list(getattr(self, "loss_history_", [])),
                "state_dict": self.net.state_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path, *, num_threads=None):
        """Rebuild a model written by ``save`` (``torch.load(..., weights_only=True)``)."""
        torch = _require_torch(f"{cls.__name__}.load")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a file written by cofisearch.encoders save()")
        if blob.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{path!r} has format version {blob.get('format_version')!r}; this "
                f"cofisearch reads version {_FORMAT_VERSION}"
            )
        if blob.get("class") != cls.__name__:
            raise ValueError(
                f"{path!r} holds a {blob.get('class')}, not a {cls.__name__}; "
                f"load it with {blob.get('class')}.load"
            )
        model = cls(**blob["config"], num_threads=num_threads)
        model.net.load_state_dict(blob["state_dict"])
        model._n_fits = int(blob["n_fits"])
        model.loss_history_ = list(blob["loss_history"])
        return model


def _pair_data(self, image_features, text_features, caption_to_image):
    """Validated float32 tensors and the caption -> image map (identity when None)."""
    img = _check_features(image_features, "image_features", self.image_dim, min_rows=1)
    txt = _check_features(text_features, "text_features", self.text_dim, min_rows=2)
    _check_finite(img, "image_features")
    _check_finite(txt, "text_features")
    if caption_to_image is None:
        if img.shape[0] != txt.shape[0]:
            raise ValueError(
                f"image_features and text_features have {img.shape[0]} and {txt.shape[0]} "
                f"rows; pass caption_to_image (text row -> image row) when images have "
                f"several captions"
            )
        c2i = np.arange(txt.shape[0], dtype=np.int64)
    else:
        c2i = _check_index_map(caption_to_image, "caption_to_image", txt.shape[0],
                               img.shape[0], "image_features rows")
    torch = self._torch
    img_t = _as_tensor(torch, img)
    txt_t = _as_tensor(torch, txt)
    return img_t, txt_t, torch.from_numpy(c2i)


def _set_stats_once(self, img_t, txt_t):
    if not self._n_fits:
        with self._torch.no_grad():
            self.net.image.set_stats(img_t)
            self.net.text.set_stats(txt_t)


class DualEncoder(_TorchModel):
    """Fine-grained dual encoder: two MLP towers into one L2-normalised float space.

    Trained with the symmetric InfoNCE loss of CLIP-style models over (image, caption)
    pairs: each caption should score its own image above the other images in the batch,
    and vice versa. The temperature starts at ``temperature`` and is learned unless
    ``learn_temperature=False``.

    Parameters: ``image_dim``, ``text_dim`` input feature widths; ``embed_dim`` output
    width; ``hidden`` width(s) of the hidden layers (an int or a sequence, ``()`` for a
    linear projection); ``dropout``; ``seed``; ``num_threads`` (torch threads during
    fit/encode; ``None`` keeps ``torch.get_num_threads()``).

    Example::

        enc = DualEncoder(image_dim=2048, text_dim=768).fit(img, txt, caption_to_image=c2i)
        image_emb = enc.encode_image(img)   # (n_images, 256) float32, unit rows
        text_emb = enc.encode_text(txt)
    """

    def __init__(self, image_dim, text_dim, embed_dim=256, hidden=1024, *, dropout=0.1,
                 temperature=0.05, learn_temperature=True, seed=0, num_threads=None):
        self.image_dim = _check_int(image_dim, "image_dim", 1)
        self.text_dim = _check_int(text_dim, "text_dim", 1)
        self.embed_dim = _check_int(embed_dim, "embed_dim", 1)
        self.hidden = _check_hidden(hidden)
        self.dropout = _check_float(dropout, "dropout", nonnegative=True, below=1.0)
        self.temperature = _check_float(temperature, "temperature", positive=True)
        self.learn_temperature = bool(learn_temperature)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: self._ns.TwoTowers(
            self.image_dim, self.text_dim, self.hidden, self.embed_dim, self.dropout,
            -math.log(self.temperature), self.learn_temperature))

    def _config(self):
        return dict(image_dim=self.image_dim, text_dim=self.text_dim,
                    embed_dim=self.embed_dim, hidden=list(self.hidden),
                    dropout=self.dropout, temperature=self.temperature,
                    learn_temperature=self.learn_temperature, seed=self.seed)

    @property
    def current_temperature(self):
        """The temperature in use now (learned value after fit when learnable)."""
        return math.exp(-self.net.log_scale.detach().item())

    def fit(self, image_features, text_features, *, labels=None, caption_to_image=None,
            epochs=10, batch_size=256, lr=1e-3, weight_decay=1e-4,
            show_progress_bar=False):
        """Train on pairs ``(image_features[caption_to_image[j]], text_features[j])``.

        ``caption_to_image`` (n_text,) maps each caption row to its image row; when None,
        row i of both arrays is a pair. ``labels`` is accepted for a uniform signature and
        not used (the loss is instance-level). Calling ``fit`` again continues training.
        Returns self; per-epoch mean losses accumulate in ``loss_history_``.
        """
        torch = self._torch
        img_t, txt_t, c2i = _pair_data(self, image_features, text_features, caption_to_image)
        if labels is not None:
            _check_labels(labels, img_t.shape[0])
        _set_stats_once(self, img_t, txt_t)
        net = self.net
        max_log_scale = math.log(100.0)

        def step_loss(ids, gen):
            image_ids = c2i[ids]
            zi = torch.nn.functional.normalize(net.image(img_t[image_ids]), dim=-1)
            zt = torch.nn.functional.normalize(net.text(txt_t[ids]), dim=-1)
            # CLIP's clamp: an unbounded learned scale can blow up the logits.
            logits = net.log_scale.clamp(max=max_log_scale).exp() * zi @ zt.T
            positive = image_ids[:, None] == image_ids[None, :]
            return 0.5 * (_multi_positive_nce(logits, positive, 1)
                          + _multi_positive_nce(logits, positive, 0))

        return self._train(txt_t.shape[0], batch_size, epochs, lr, weight_decay, step_loss,
                           show_progress_bar)

    def _encode(self, tower, x, name, dim, batch_size, show_progress_bar):
        torch = self._torch

        def fn(t):
            return torch.nn.functional.normalize(tower(t), dim=-1)

        return self._infer(fn, x, name, dim, batch_size, self.embed_dim, np.float32,
                           lambda a: a, show_progress_bar)

    def encode_image(self, x, *, batch_size=1024, show_progress_bar=False):
        """Image features (n, image_dim) -> float32 unit-norm embeddings (n, embed_dim)."""
        return self._encode(self.net.image, x, "image_features", self.image_dim,
                            batch_size, show_progress_bar)

    def encode_text(self, x, *, batch_size=1024, show_progress_bar=False):
        """Text features (n, text_dim) -> float32 unit-norm embeddings (n, embed_dim)."""
        return self._encode(self.net.text, x, "text_features", self.text_dim,
                            batch_size, show_progress_bar)

    def __repr__(self):
        return (f"DualEncoder(image_dim={self.image_dim}, text_dim={self.text_dim}, "
                f"embed_dim={self.embed_dim}, hidden={list(self.hidden)})")


_HASH_LOSSES = ("instance", "category")


def _label_similarity(labels_t, a, b):
    """S[i, j] = items a[i] and b[j] share a label (1-D ids: equal; multi-hot: overlap)."""
    if labels_t.dim() == 1:
        return labels_t[a][:, None] == labels_t[b][None, :]
    return (labels_t[a] @ labels_t[b].T) > 0


class HashEncoder(_TorchModel):
    """Cross-modal hashing: two MLP towers ending in ``nbits`` relaxed bits.

    During training the towers output ``h = tanh(z)`` in ``(-1, 1)^nbits``; at inference the
    code is ``sign(z)`` (``z >= 0`` is a set bit). The loss is one of

    * ``"instance"`` - cross-modal InfoNCE on the relaxed codes: ``<h_img, h_txt> / nbits``
      over ``temperature``, each caption against the images in the batch and vice versa
      (instance-level, as ADV and UCCH; the study finds such codes keep the exact match
      near the top and so can screen candidates for a float reranker);
    * ``"category"`` - the DCMH/DADH pairwise likelihood: with ``S_ij = 1`` when image i and
      caption j share a label and ``theta_ij = <h_i, h_j> / 2``, minimise the mean of
      ``log(1 + exp(theta_ij)) - S_ij * theta_ij`` over the batch's image-caption pairs.
      Needs ``labels`` in ``fit``.

    plus ``balance_weight * mean_k(mean_i h_ik)^2`` (each bit +1 for about half the items)
    and ``quantization_weight * mean((|h| - 1)^2)`` (relaxed bits close to their sign), for
    both modalities.

    ``encode_image`` / ``encode_text`` return packed codes, uint8 (n, nbits // 8) in
    ``numpy.packbits`` order, for a ``BinaryIndex``; ``packed=False`` gives int8 ±1.
    """

    def __init__(self, image_dim, text_dim, nbits=64, loss="instance", hidden=1024, *,
                 dropout=0.1, temperature=0.1, balance_weight=0.1,
                 quantization_weight=0.1, seed=0, num_threads=None):
        self.image_dim = _check_int(image_dim, "image_dim", 1)
        self.text_dim = _check_int(text_dim, "text_dim", 1)
        self.nbits = _check_nbits(nbits)
        if not isinstance(loss, str):
            raise TypeError(f"loss must be a str, one of {_HASH_LOSSES}, got "
                            f"{type(loss).__name__}")
        if loss not in _HASH_LOSSES:
            raise ValueError(f"loss must be one of {_HASH_LOSSES}, got {loss!r}")
        self.loss = loss
        self.hidden = _check_hidden(hidden)
        self.dropout = _check_float(dropout, "dropout", nonnegative=True, below=1.0)
        self.temperature = _check_float(temperature, "temperature", positive=True)
        self.balance_weight = _check_float(balance_weight, "balance_weight",
                                           nonnegative=True)
        self.quantization_weight = _check_float(quantization_weight, "quantization_weight",
                                                nonnegative=True)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: self._ns.TwoTowers(
            self.image_dim, self.text_dim, self.hidden, self.nbits, self.dropout, 0.0, False))

    def _config(self):
        return dict(image_dim=self.image_dim, text_dim=self.text_dim, nbits=self.nbits,
                    loss=self.loss, hidden=list(self.hidden), dropout=self.dropout,
                    temperature=self.temperature, balance_weight=self.balance_weight,
                    quantization_weight=self.quantization_weight, seed=self.seed)

    def fit(self, image_features, text_features, *, labels=None, caption_to_image=None,
            epochs=10, batch_size=256, lr=1e-3, weight_decay=1e-4,
            show_progress_bar=False):
        """Train on pairs ``(image_features[caption_to_image[j]], text_features[j])``.

        ``labels`` are per image: integer class ids (n_images,) or multi-hot
        (n_images, n_classes); captions take their image's labels. Required for
        ``loss="category"``, not used by ``loss="instance"``. Calling ``fit`` again
        continues training. Returns self; per-epoch losses go to ``loss_history_``.
        """
        torch = self._torch
        img_t, txt_t, c2i = _pair_data(self, image_features, text_features, caption_to_image)
        labels_t = None
        if labels is not None:
            lab = _check_labels(labels, img_t.shape[0])
            labels_t = torch.from_numpy(
                lab.astype(np.int64) if lab.ndim == 1 else (lab != 0).astype(np.float32))
        if self.loss == "category" and labels_t is None:
            raise ValueError('loss="category" needs labels (n_images,) or '
                             '(n_images, n_classes) in fit(); got labels=None')
        _set_stats_once(self, img_t, txt_t)
        net = self.net
        nbits = self.nbits
        inv_temp = 1.0 / self.temperature
        bw, qw = self.balance_weight, self.quantization_weight

        def regularisers(h):
            balance = h.mean(0).square().mean()
            quant = (h.abs() - 1.0).square().mean()
            return bw * balance + qw * quant

        def step_loss(ids, gen):
            image_ids = c2i[ids]
            hi = torch.tanh(net.image(img_t[image_ids]))
            ht = torch.tanh(net.text(txt_t[ids]))
            inner = hi @ ht.T
            if self.loss == "instance":
                logits = inner * (inv_temp / nbits)
                positive = image_ids[:, None] == image_ids[None, :]
                main = 0.5 * (_multi_positive_nce(logits, positive, 1)
                              + _multi_positive_nce(logits, positive, 0))
            else:
                theta = 0.5 * inner
                similar = _label_similarity(labels_t, image_ids, image_ids).to(theta.dtype)
                main = (torch.nn.functional.softplus(theta) - similar * theta).mean()
            return main + regularisers(hi) + regularisers(ht)

        return self._train(txt_t.shape[0], batch_size, epochs, lr, weight_decay, step_loss,
                           show_progress_bar)

    def _encode(self, tower, x, name, dim, batch_size, packed, show_progress_bar):
        if packed:
            width, dtype, post = self.nbits // 8, np.uint8, lambda z: _pack(z >= 0)
        else:
            width, dtype, post = self.nbits, np.int8, lambda z: _to_pm1(z >= 0)
        return self._infer(tower, x, name, dim, batch_size, width, dtype, post,
                           show_progress_bar)

    def encode_image(self, x, *, batch_size=1024, packed=True, show_progress_bar=False):
        """Image features (n, image_dim) -> codes: uint8 (n, nbits // 8), or int8 ±1."""
        return self._encode(self.net.image, x, "image_features", self.image_dim,
                            batch_size, packed, show_progress_bar)

    def encode_text(self, x, *, batch_size=1024, packed=True, show_progress_bar=False):
        """Text features (n, text_dim) -> codes: uint8 (n, nbits // 8), or int8 ±1."""
        return self._encode(self.net.text, x, "text_features", self.text_dim,
                            batch_size, packed, show_progress_bar)

    def __repr__(self):
        return (f"HashEncoder(image_dim={self.image_dim}, text_dim={self.text_dim}, "
                f"nbits={self.nbits}, loss={self.loss!r}, hidden={list(self.hidden)})")


class CrossAttentionReranker(_TorchModel):
    """A small fusion model that scores (query, candidate) pairs jointly.

    Calling contract (what a cascade's stage 3 calls)::

        scores = reranker(query_vectors, candidate_vectors)
        # query_vectors: float (nq, query_dim); candidate_vectors: float (nq, c, candidate_dim)
        # scores: float32 (nq, c), higher = better match

    Each vector is projected to ``n_tokens`` tokens of width ``d_model``; query tokens
    attend to candidate tokens and candidate tokens to query tokens (``n_heads`` heads),
    and an MLP on the pooled, multiplied results (plus a learned bilinear shortcut) gives
    the score. Unlike a dual encoder the score cannot be precomputed per item: it costs one
    fusion pass per pair, which is why it only reranks a short list.

    ``input_cosine`` adds ``w * cos(query_vector, candidate_vector)`` with a learned ``w``
    (starting at 10), so that on first-stage embeddings (a ``DualEncoder``'s output, the
    vectors a ``FloatIndex`` holds) the model starts from the first stage's ranking and
    learns corrections. ``None`` turns it on when ``query_dim == candidate_dim``. Train the
    reranker on pairs the first stage was not trained on where you can: on its own
    training pairs a first stage is nearly perfect, and the reranker learns little.

    ``fit(queries, candidates, query_to_candidate=...)`` trains it with a listwise
    contrastive loss: each query's matching candidate against the other candidates of the
    batch and, if given, sampled ``hard_negatives`` (the list a first stage returns, the
    negatives a reranker actually faces).
    """

    def __init__(self, query_dim, candidate_dim, *, d_model=64, n_tokens=4, n_heads=4,
                 hidden=64, dropout=0.0, input_cosine=None, seed=0, num_threads=None):
        self.query_dim = _check_int(query_dim, "query_dim", 1)
        self.candidate_dim = _check_int(candidate_dim, "candidate_dim", 1)
        if input_cosine is None:
            input_cosine = self.query_dim == self.candidate_dim
        elif not isinstance(input_cosine, bool):
            raise TypeError(f"input_cosine must be a bool or None, got "
                            f"{type(input_cosine).__name__}")
        elif input_cosine and self.query_dim != self.candidate_dim:
            raise ValueError(f"input_cosine=True needs query_dim == candidate_dim, got "
                             f"{self.query_dim} and {self.candidate_dim}")
        self.input_cosine = input_cosine
        self.n_heads = _check_int(n_heads, "n_heads", 1)
        self.d_model = _check_int(d_model, "d_model", 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be a multiple of n_heads={self.n_heads}, "
                             f"got {self.d_model}")
        self.n_tokens = _check_int(n_tokens, "n_tokens", 1)
        self.hidden = _check_int(hidden, "hidden", 1)
        self.dropout = _check_float(dropout, "dropout", nonnegative=True, below=1.0)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: self._ns.Fusion(
            self.query_dim, self.candidate_dim, self.d_model, self.n_tokens, self.n_heads,
            self.hidden, self.dropout, self.input_cosine))

    def _config(self):
        return dict(query_dim=self.query_dim, candidate_dim=self.candidate_dim,
                    d_model=self.d_model, n_tokens=self.n_tokens, n_heads=self.n_heads,
                    hidden=self.hidden, dropout=self.dropout,
                    input_cosine=self.input_cosine, seed=self.seed)

    def fit(self, queries, candidates, *, query_to_candidate=None, hard_negatives=None,
            n_hard=8, n_random=8, epochs=3, batch_size=128, lr=1e-3, weight_decay=1e-4,
            show_progress_bar=False):
        """Train on (queries[j], candidates[query_to_candidate[j]]) matching pairs.

        ``queries`` (n_queries, query_dim), ``candidates`` (n_candidates, candidate_dim);
        ``query_to_candidate`` (n_queries,) int, identity when None (e.g. captions as
        queries and the caption->image map for text-to-image reranking).

        Each step scores every query against its match, ``n_hard`` candidates sampled from
        its row of ``hard_negatives`` (n_queries, m) int, e.g. a first stage's top-m (not
        used when ``hard_negatives`` is None), and ``n_random`` candidates sampled from
        the other queries' matches in the batch; sampled entries equal to the match count
        as positives. The loss is
        the softmax cross-entropy of the match over that list. Returns self.
        """
        torch = self._torch
        q = _check_features(queries, "queries", self.query_dim, min_rows=2)
        c = _check_features(candidates, "candidates", self.candidate_dim, min_rows=1)
        _check_finite(q, "queries")
        _check_finite(c, "candidates")
        if query_to_candidate is None:
            if q.shape[0] != c.shape[0]:
                raise ValueError(
                    f"queries and candidates have {q.shape[0]} and {c.shape[0]} rows; pass "
                    f"query_to_candidate (query row -> candidate row)")
            q2c = np.arange(q.shape[0], dtype=np.int64)
        else:
            q2c = _check_index_map(query_to_candidate, "query_to_candidate", q.shape[0],
                                   c.shape[0], "candidates rows")
        hard_t = None
        n_hard = _check_int(n_hard, "n_hard", 0)
        n_random = _check_int(n_random, "n_random", 0)
        has_hard = hard_negatives is not None
        if n_random + (n_hard if has_hard else 0) < 1:
            raise ValueError(
                f"fit needs at least one negative per query: n_random={n_random}, "
                f"n_hard={n_hard}, hard_negatives {'given' if has_hard else 'None'}")
        if hard_negatives is not None:
            hard = hard_negatives if isinstance(hard_negatives, np.ndarray) \
                else np.asarray(hard_negatives)
            if hard.dtype.kind not in "iu":
                raise TypeError(f"hard_negatives must be an integer array, got dtype "
                                f"{hard.dtype}")
            if hard.ndim != 2 or hard.shape[0] != q.shape[0] or hard.shape[1] == 0:
                raise ValueError(f"hard_negatives must have shape ({q.shape[0]}, m) with "
                                 f"m >= 1, got shape {hard.shape}")
            if hard.min() < 0 or hard.max() >= c.shape[0]:
                raise ValueError(f"hard_negatives values must index candidates rows "
                                 f"(0 <= value < {c.shape[0]}), got range "
                                 f"[{hard.min()}, {hard.max()}]")
            hard_t = torch.from_numpy(hard.astype(np.int64))
        q_t = _as_tensor(torch, q)
        c_t = _as_tensor(torch, c)
        q2c_t = torch.from_numpy(q2c)
        if not self._n_fits:
            with torch.no_grad():
                self.net.q_in.set_stats(q_t)
                self.net.c_in.set_stats(c_t)
        net = self.net

        def step_loss(ids, gen):
            targets = q2c_t[ids]
            n = len(ids)
            # Random negatives are drawn from the batch's own matches, so the candidate
            # tower runs once per batch row plus once per hard negative, not per pair.
            pool = [targets]
            rows = [torch.arange(n)[:, None]]
            if hard_t is not None and n_hard:
                cols = torch.randint(hard_t.shape[1], (n, n_hard), generator=gen)
                pool.append(hard_t[ids].gather(1, cols).reshape(-1))
                rows.append(n + torch.arange(n * n_hard).view(n, n_hard))
            if n_random:
                rows.append(torch.randint(n, (n, n_random), generator=gen))
            pool, rows = torch.cat(pool), torch.cat(rows, 1)
            # A sampled "negative" can be the query's own match (another caption of the
            # same image, or a hard list that contains it); it then counts as a positive.
            positive = pool[rows] == targets[:, None]
            enc_c = tuple(t[rows] for t in net.encode_candidates(c_t[pool]))
            scores = net.pair_scores(net.encode_queries(q_t[ids]), enc_c)
            return _multi_positive_nce(scores, positive, 1)

        return self._train(q.shape[0], batch_size, epochs, lr, weight_decay, step_loss,
                           show_progress_bar)

    def score(self, query_vectors, candidate_vectors, *, batch_size=256,
              show_progress_bar=False):
        """Scores float32 (nq, c) for queries (nq, query_dim), candidates (nq, c, cand_dim)."""
        self._require_fitted()
        q = _check_features(query_vectors, "query_vectors", self.query_dim)
        c = candidate_vectors if isinstance(candidate_vectors, np.ndarray) \
            else np.asarray(candidate_vectors)
        if c.dtype.kind != "f":
            raise TypeError(f"candidate_vectors must be a floating-point array, got dtype "
                            f"{c.dtype}")
        if c.ndim != 3 or c.shape[0] != q.shape[0] or c.shape[2] != self.candidate_dim:
            raise ValueError(
                f"candidate_vectors must have shape ({q.shape[0]}, c, {self.candidate_dim}) "
                f"to match query_vectors {q.shape}, got shape {c.shape}")
        batch_size = _check_int(batch_size, "batch_size", 1)
        torch = self._torch
        nq, n_cand = c.shape[0], c.shape[1]
        out = np.empty((nq, n_cand), dtype=np.float32)
        if nq == 0 or n_cand == 0:
            return out
        steps = -(-nq // batch_size)
        with _torch_scope(torch, self.seed, self.num_threads), torch.inference_mode(), \
                _progress(steps, "CrossAttentionReranker.score", show_progress_bar) as bar:
            for start in range(0, nq, batch_size):
                qb = _as_tensor(torch, q[start : start + batch_size])
                cb = _as_tensor(torch, c[start : start + batch_size])
                if not torch.isfinite(qb).all():
                    raise ValueError("query_vectors contains NaN or infinite values")
                if not torch.isfinite(cb).all():
                    raise ValueError("candidate_vectors contains NaN or infinite values")
                out[start : start + batch_size] = self.net(qb, cb).numpy()
                if bar is not None:
                    bar.update(1)
        return out

    __call__ = score

    def __repr__(self):
        return (f"CrossAttentionReranker(query_dim={self.query_dim}, "
                f"candidate_dim={self.candidate_dim}, d_model={self.d_model}, "
                f"n_tokens={self.n_tokens}, n_heads={self.n_heads})")

"""Synthetic paired image-text data: :func:`make_paired` and its streaming form
:func:`iter_paired`.

A seeded dataset shaped like the FiCo-ITR study's test sets (Flickr30K / MS-COCO: each
image has ``captions_per_image`` captions, captions stored image-major; multi-hot
category labels as in MIRFlickr / NUS-WIDE / MS-COCO).  It scales to millions of items
in bounded memory.

How the synthetic data is built
-------------------------------
Every item ``i`` has a latent vector in ``R^d_latent`` (unit scale)::

    z_i = sqrt(category_weight) * c_i + sqrt(1 - category_weight) * u_i

``c_i`` is the sum of the prototype vectors of the item's labels divided by
``sqrt(#labels)`` (category part, shared by every item with the same labels) and
``u_i`` is an isotropic Gaussian (instance part, unique to the item).  The image
is one noisy view and each caption another::

    image_features[i]   = f_img(z_i + image_noise * e)   + feature_noise * e'
    text_features[j]    = f_txt(z_i + text_noise  * e_j) + feature_noise * e_j'

``e`` and ``e_j`` are Gaussian; ``e'`` and ``e_j'`` are approximately Gaussian
(a sum of four uniforms, unit variance), which is several times cheaper to draw.

``f_img`` (absolute value) and ``f_txt`` (tanh) are fixed random one-hidden-layer
MLPs with different weights, widths and output sizes, standardised so that each
output dimension has roughly zero mean and unit variance before ``feature_noise``
is added.  Nothing is aligned across modalities, so raw image and text features are
not comparable: a model has to learn the cross-modal map.  ``nonlinearity``
scales the hidden pre-activations: larger values bend the maps further from
anything a linear model can invert (the image map's absolute value is even, the
text map's tanh odd, so a linear map between them only sees the bias-induced
part).

Because the two latent parts are separate, a model that recovers only ``c`` can
at best rank items with the same label set together and cannot separate the
items inside a set, which instance-level retrieval needs; a model that also
recovers ``u`` finds the exact pair.  How much the label set alone reveals
depends on the pool: with the default labels, ranking by the exact label set
(random order inside a set) gives exact-pair R@10 of about 0.76 among 1,000
images, 0.50 among 5,000 and 0.17 among 100,000 (R@100: 0.99, 0.85, 0.41).
Fewer labels per item or a larger ``label_skew`` make label sets coarser.

With the defaults, a ridge map fitted on 20,000 training images gives a text ->
image R@1 / R@10 of about 0.31 / 0.70 on 1,000 test images (chance 0.001 /
0.01); ridge on 4,000 random ReLU features of the text gives about 0.79 / 0.98,
so a nonlinear model has clear headroom over a linear one.

Determinism and chunking
------------------------
Items are generated in fixed internal blocks of :data:`BLOCK_IMAGES` images (and
their captions).  Block ``b`` draws from its own generator seeded by
``SeedSequence(seed, spawn_key=(1, b))``; the shared model (prototypes, label
frequencies, modality maps) comes from ``SeedSequence(seed, spawn_key=(0,))``.
So the data depends only on the seed and the generation parameters, never on the
chunk size used to stream it, and a smaller ``n_images`` gives a prefix of a
larger one.  "Same data" means byte for byte with the same NumPy and BLAS on the
same kind of CPU; elsewhere labels and the caption map are identical but features
may differ in the last bits, as BLAS kernels round differently.  The test split is
the *last* ``n_test`` images (items are i.i.d., so a contiguous split is as good as a
random one and stays a zero-copy view).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np

from .._checks import check_bool, check_float, check_int, check_path

__all__ = [
    "BLOCK_IMAGES",
    "PairedChunk",
    "PairedDataset",
    "PairedSplit",
    "iter_paired",
    "make_paired",
]

#: Images per internal generation block.  Part of the data definition: changing
#: it changes the data generated for a given seed.
BLOCK_IMAGES = 1024

# Latents drawn (from the shared-model generator) to standardise the modality
# maps; fixed so the standardisation is part of the seeded definition.
_CALIBRATION_ITEMS = 4096
_MAX_ELEMENTS = 2**62


class PairedSplit(NamedTuple):
    """One split of a :class:`PairedDataset`; ``caption_to_image`` indexes this split's images."""

    image_features: np.ndarray
    text_features: np.ndarray
    caption_to_image: np.ndarray
    image_labels: np.ndarray
    text_labels: np.ndarray


class PairedChunk(NamedTuple):
    """Images ``[start, stop)`` and their captions, as yielded by :func:`iter_paired`.

    ``caption_to_image`` holds *global* image ids (``start <= id < stop``); the
    chunk's captions are captions ``[start * cpi, stop * cpi)`` of the dataset.
    """

    start: int
    stop: int
    image_features: np.ndarray
    text_features: np.ndarray
    caption_to_image: np.ndarray
    image_labels: np.ndarray
    text_labels: np.ndarray


@dataclass(frozen=True, eq=False)
class PairedDataset:
    """Synthetic paired image-text data returned by :func:`make_paired`.

    Attributes
    ----------
    image_features : float32, (n_images, d_image)
    text_features : float32, (n_captions, d_text); captions are image-major, so
        caption ``j`` belongs to image ``j // captions_per_image``.
    caption_to_image : int64, (n_captions,)
    image_labels : uint8 multi-hot, (n_images, n_categories); every item has at
        least one label.
    text_labels : uint8 multi-hot, (n_captions, n_categories); a caption inherits
        its image's labels (as in the FiCo-ITR study).
    n_train : images ``[0, n_train)`` (and their captions) form the training
        split, the remaining ``n_test`` images the test split.
    captions_per_image : int
    params : the generation parameters, for logs and benchmark records.
    """

    image_features: np.ndarray
    text_features: np.ndarray
    caption_to_image: np.ndarray
    image_labels: np.ndarray
    text_labels: np.ndarray
    n_train: int
    captions_per_image: int
    params: Dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_images(self) -> int:
        return int(self.image_features.shape[0])

    @property
    def n_captions(self) -> int:
        return int(self.text_features.shape[0])

    @property
    def n_test(self) -> int:
        return self.n_images - self.n_train

    def _split(self, start: int, stop: int) -> PairedSplit:
        cpi = self.captions_per_image
        c0, c1 = start * cpi, stop * cpi
        return PairedSplit(
            image_features=self.image_features[start:stop],
            text_features=self.text_features[c0:c1],
            caption_to_image=np.repeat(np.arange(stop - start, dtype=np.int64), cpi),
            image_labels=self.image_labels[start:stop],
            text_labels=self.text_labels[c0:c1],
        )

    @property
    def train(self) -> PairedSplit:
        """The training split (views of the full arrays)."""
        return self._split(0, self.n_train)

    @property
    def test(self) -> PairedSplit:
        """The test split (views of the full arrays; ``caption_to_image`` re-based to 0)."""
        return self._split(self.n_train, self.n_images)


@dataclass(frozen=True)
class _PairedConfig:
    captions_per_image: int
    n_categories: int
    seed: int
    d_image: int
    d_text: int
    d_latent: int
    hidden_image: int
    hidden_text: int
    category_weight: float
    labels_per_item: float
    label_skew: float
    image_noise: float
    text_noise: float
    feature_noise: float
    nonlinearity: float

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def _make_config(
    captions_per_image: Any,
    n_categories: Any,
    seed: Any,
    d_image: Any,
    d_text: Any,
    d_latent: Any,
    hidden_image: Any,
    hidden_text: Any,
    category_weight: Any,
    labels_per_item: Any,
    label_skew: Any,
    image_noise: Any,
    text_noise: Any,
    feature_noise: Any,
    nonlinearity: Any,
) -> _PairedConfig:
    n_categories = check_int(n_categories, "n_categories", minimum=1)
    return _PairedConfig(
        captions_per_image=check_int(captions_per_image, "captions_per_image", minimum=1),
        n_categories=n_categories,
        seed=check_int(seed, "seed", minimum=0),
        d_image=check_int(d_image, "d_image", minimum=1),
        d_text=check_int(d_text, "d_text", minimum=1),
        d_latent=check_int(d_latent, "d_latent", minimum=1),
        hidden_image=check_int(hidden_image, "hidden_image", minimum=1),
        hidden_text=check_int(hidden_text, "hidden_text", minimum=1),
        category_weight=check_float(
            category_weight, "category_weight", minimum=0.0, maximum=1.0
        ),
        labels_per_item=check_float(labels_per_item, "labels_per_item", minimum=1.0),
        label_skew=check_float(label_skew, "label_skew", minimum=0.0),
        image_noise=check_float(image_noise, "image_noise", minimum=0.0),
        text_noise=check_float(text_noise, "text_noise", minimum=0.0),
        feature_noise=check_float(feature_noise, "feature_noise", minimum=0.0),
        nonlinearity=check_float(nonlinearity, "nonlinearity", above=0.0),
    )


class _ModalityMap:
    """x = act(z @ w1 + b1) @ w2 + b2, with w2/b2 folded to standardise x."""

    def __init__(
        self,
        rng: np.random.Generator,
        calibration: np.ndarray,
        d_latent: int,
        hidden: int,
        d_out: int,
        activation: str,
        gain: float,
    ) -> None:
        # z has unit norm in expectation, so N(0, 1) columns give O(1)
        # pre-activations before the gain.
        self.w1 = (gain * rng.standard_normal((d_latent, hidden))).astype(np.float32)
        self.b1 = rng.standard_normal(hidden).astype(np.float32)
        self.activation = activation
        w2 = (rng.standard_normal((hidden, d_out)) / math.sqrt(hidden)).astype(np.float32)
        h = self._hidden(calibration)
        # Standardise hidden units first so dead / saturated units do not dominate
        # the output scale, then standardise outputs; both fold into w2 and b2.
        h_mean = h.mean(axis=0, dtype=np.float64)
        h_std = h.std(axis=0, dtype=np.float64)
        h_std[h_std < 1e-6] = 1.0
        w2 = (w2 / h_std[:, None]).astype(np.float32)
        b2 = -(h_mean / h_std) @ w2.astype(np.float64)
        x = h @ w2 + b2.astype(np.float32)
        x_mean = x.mean(axis=0, dtype=np.float64)
        x_std = x.std(axis=0, dtype=np.float64)
        x_std[x_std < 1e-6] = 1.0
        self.w2 = (w2 / x_std[None, :].astype(np.float32)).astype(np.float32)
        self.b2 = ((b2 - x_mean) / x_std).astype(np.float32)

    def _hidden(self, z: np.ndarray) -> np.ndarray:
        h = z @ self.w1
        h += self.b1
        if self.activation == "abs":
            np.abs(h, out=h)
        else:
            np.tanh(h, out=h)
        return h

    def __call__(self, z: np.ndarray) -> np.ndarray:
        x = self._hidden(z) @ self.w2
        x += self.b2
        return x


class _PairedGenerator:
    def __init__(self, config: _PairedConfig) -> None:
        self.config = config
        cfg = config
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
        d = cfg.d_latent
        self.prototypes = (rng.standard_normal((cfg.n_categories, d)) / math.sqrt(d)).astype(
            np.float32
        )
        # Zipf-like label frequencies in a random order: real label sets are
        # long-tailed (a few classes like "person" dominate).
        weights = 1.0 / np.arange(1, cfg.n_categories + 1) ** cfg.label_skew
        self.inverse_label_weights = 1.0 / rng.permutation(weights)
        labels = self._labels(rng, _CALIBRATION_ITEMS)
        z = self._latent(rng, labels)
        # Calibrate on noisy views, the inputs the maps will actually see.
        view = rng.standard_normal(z.shape, dtype=np.float32) * (cfg.image_noise / math.sqrt(d))
        self.image_map = _ModalityMap(
            rng, z + view, d, cfg.hidden_image, cfg.d_image, "abs", cfg.nonlinearity
        )
        view = rng.standard_normal(z.shape, dtype=np.float32) * (cfg.text_noise / math.sqrt(d))
        self.text_map = _ModalityMap(
            rng, z + view, d, cfg.hidden_text, cfg.d_text, "tanh", cfg.nonlinearity
        )

    def _labels(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cfg = self.config
        counts = 1 + rng.poisson(cfg.labels_per_item - 1.0, size=n)
        np.minimum(counts, cfg.n_categories, out=counts)
        # Weighted sampling without replacement as an exponential race: class c
        # "arrives" at Exp(1) / w_c, and the first `count` arrivals are drawn.
        arrival = rng.standard_exponential((n, cfg.n_categories))
        arrival *= self.inverse_label_weights
        order = np.argsort(arrival, axis=1, kind="stable")
        chosen = np.arange(cfg.n_categories)[None, :] < counts[:, None]
        labels = np.zeros((n, cfg.n_categories), dtype=np.uint8)
        np.put_along_axis(labels, order, chosen.astype(np.uint8), axis=1)
        return labels

    def _latent(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        cfg = self.config
        d = cfg.d_latent
        category = labels.astype(np.float32) @ self.prototypes
        category /= np.sqrt(labels.sum(axis=1, dtype=np.float32))[:, None]
        instance = rng.standard_normal((labels.shape[0], d), dtype=np.float32)
        instance *= math.sqrt((1.0 - cfg.category_weight) / d)
        category *= math.sqrt(cfg.category_weight)
        category += instance
        return category

    def block(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full block ``index``: (image_features, text_features, image_labels)."""
        cfg = self.config
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, index)))
        n, cpi, d = BLOCK_IMAGES, cfg.captions_per_image, cfg.d_latent
        labels = self._labels(rng, n)
        z = self._latent(rng, labels)

        z_image = rng.standard_normal((n, d), dtype=np.float32)
        z_image *= cfg.image_noise / math.sqrt(d)
        z_image += z
        z_text = rng.standard_normal((n * cpi, d), dtype=np.float32)
        z_text *= cfg.text_noise / math.sqrt(d)
        z_text += np.repeat(z, cpi, axis=0)

        image = self.image_map(z_image)
        text = self.text_map(z_text)
        if cfg.feature_noise > 0.0:
            image += _feature_noise(rng, image.shape, cfg.feature_noise)
            text += _feature_noise(rng, text.shape, cfg.feature_noise)
        return image, text, labels


# Std of the sum of four independent uniform int8 values (var (256**2 - 1) / 12 each).
_IRWIN_HALL_STD = math.sqrt(4 * (256**2 - 1) / 12)


def _feature_noise(rng: np.random.Generator, shape: Tuple[int, int], std: float) -> np.ndarray:
    # Feature noise is most of the random numbers drawn (n * d per modality);
    # a sum of four uniform bytes (Irwin-Hall, excess kurtosis -0.3) is close
    # enough to Gaussian here and several times cheaper than standard_normal.
    n = shape[0] * shape[1]
    raw = np.frombuffer(rng.bytes(4 * n), dtype=np.int8)
    acc = raw[:n].astype(np.int16)
    acc += raw[n : 2 * n]
    acc += raw[2 * n : 3 * n]
    acc += raw[3 * n :]
    noise = acc.astype(np.float32)
    noise *= std / _IRWIN_HALL_STD
    return noise.reshape(shape)


def _n_test_default(n_images: int) -> int:
    return n_images // 10


def _check_sizes(n_images: int, cfg: _PairedConfig) -> None:
    n_captions = n_images * cfg.captions_per_image
    largest = max(
        n_images * cfg.d_image, n_captions * cfg.d_text, n_captions * cfg.n_categories
    )
    if largest >= _MAX_ELEMENTS:
        raise ValueError(
            f"n_images={n_images} with captions_per_image={cfg.captions_per_image}, "
            f"d_image={cfg.d_image}, d_text={cfg.d_text}, n_categories={cfg.n_categories} "
            f"needs an array of {largest} elements; expected fewer than 2**62"
        )


def _allocate(
    out_dir: Optional[Path],
    overwrite: bool,
    shapes: Dict[str, Tuple[Tuple[int, ...], Any]],
) -> Dict[str, np.ndarray]:
    if out_dir is None:
        return {name: np.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.npy" for name in shapes}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"out_dir already holds {', '.join(existing)}; pass overwrite=True to replace them"
        )
    return {
        name: np.lib.format.open_memmap(paths[name], mode="w+", dtype=dtype, shape=shape)
        for name, (shape, dtype) in shapes.items()
    }


def make_paired(
    n_images: int,
    captions_per_image: int = 5,
    n_categories: int = 24,
    seed: int = 0,
    *,
    n_test: Optional[int] = None,
    d_image: int = 512,
    d_text: int = 300,
    d_latent: int = 64,
    hidden_image: int = 256,
    hidden_text: int = 128,
    category_weight: float = 0.5,
    labels_per_item: float = 2.0,
    label_skew: float = 1.0,
    image_noise: float = 0.3,
    text_noise: float = 0.5,
    feature_noise: float = 0.3,
    nonlinearity: float = 4.0,
    out_dir: Optional[str | os.PathLike[str]] = None,
    overwrite: bool = False,
) -> PairedDataset:
    """Generate a seeded synthetic image-text retrieval dataset.

    Parameters
    ----------
    n_images : number of images (>= 2 when there is a test split).
    captions_per_image : captions per image, stored image-major (5 as in
        Flickr30K / MS-COCO).
    n_categories : number of category labels (24 as in MIRFlickr-25K; 80 for
        MS-COCO-like data).
    seed : non-negative int; the data is a pure function of the seed and the
        parameters below.
    n_test : images in the test split, taken from the end (default
        ``n_images // 10``).  The rest is the training split.
    d_image, d_text : output feature sizes of the two modalities.
    d_latent : size of the shared latent space.
    hidden_image, hidden_text : hidden widths of the two random modality MLPs.
    category_weight : share of the latent variance carried by the category
        part, in [0, 1]; 0 gives pure instance data, 1 pure category data.
    labels_per_item : mean number of labels per item (>= 1; 1 gives one label
        per item).  Counts are ``1 + Poisson(labels_per_item - 1)``, capped at
        ``n_categories``; labels are drawn without replacement with long-tailed
        class frequencies.
    label_skew : exponent of the Zipf-like class frequencies (the class of rank
        r has weight ``r ** -label_skew``, in a seeded random order); 0 gives
        uniform classes.
    image_noise, text_noise : std of the latent perturbation of each view,
        relative to the unit-scale latent.  Captions of one image differ from each
        other by ``text_noise``.
    feature_noise : std of the Gaussian noise added to each (standardised)
        output feature.
    nonlinearity : gain of the hidden-layer pre-activations (> 0); larger bends
        the modality maps further from linear.
    out_dir : when given, write ``image_features.npy``, ``text_features.npy``,
        ``caption_to_image.npy``, ``image_labels.npy`` and ``text_labels.npy``
        there block by block (memory beyond the page cache stays bounded by one
        block of :data:`BLOCK_IMAGES` images) and return read-only memory maps.
    overwrite : allow replacing existing files in ``out_dir``.

    Returns
    -------
    PairedDataset ; ``.train`` and ``.test`` give the splits.

    Defaults generate 20,000 images / 100,000 captions in about 0.6 s on two
    cores (single-threaded BLAS; OpenBLAS's own threads can make it slower on a
    busy machine), and 1M images / 5M captions in under a minute.
    """
    n_images = check_int(n_images, "n_images", minimum=1)
    cfg = _make_config(
        captions_per_image, n_categories, seed, d_image, d_text, d_latent, hidden_image,
        hidden_text, category_weight, labels_per_item, label_skew, image_noise, text_noise,
        feature_noise, nonlinearity,
    )
    if n_test is None:
        n_test = _n_test_default(n_images)
    n_test = check_int(n_test, "n_test", minimum=0, maximum=n_images - 1)
    overwrite = check_bool(overwrite, "overwrite")
    directory = None if out_dir is None else check_path(out_dir, "out_dir")
    _check_sizes(n_images, cfg)

    cpi = cfg.captions_per_image
    n_captions = n_images * cpi
    shapes = {
        "image_features": ((n_images, cfg.d_image), np.float32),
        "text_features": ((n_captions, cfg.d_text), np.float32),
        "caption_to_image": ((n_captions,), np.int64),
        "image_labels": ((n_images, cfg.n_categories), np.uint8),
        "text_labels": ((n_captions, cfg.n_categories), np.uint8),
    }
    out = _allocate(directory, bool(overwrite), shapes)
    generator = _PairedGenerator(cfg)
    for block in range(-(-n_images // BLOCK_IMAGES)):
        start = block * BLOCK_IMAGES
        stop = min(start + BLOCK_IMAGES, n_images)
        image, text, labels = generator.block(block)
        m = stop - start
        out["image_features"][start:stop] = image[:m]
        out["text_features"][start * cpi : stop * cpi] = text[: m * cpi]
        out["image_labels"][start:stop] = labels[:m]
        out["text_labels"][start * cpi : stop * cpi] = np.repeat(labels[:m], cpi, axis=0)
        out["caption_to_image"][start * cpi : stop * cpi] = np.repeat(
            np.arange(start, stop, dtype=np.int64), cpi
        )
    if directory is not None:
        for array in out.values():
            array.flush()
        # Reopen read-only so callers cannot scribble on the files by accident.
        out = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in shapes}
    params = cfg.as_dict()
    params.update(n_images=n_images, n_test=n_test)
    return PairedDataset(
        image_features=out["image_features"],
        text_features=out["text_features"],
        caption_to_image=out["caption_to_image"],
        image_labels=out["image_labels"],
        text_labels=out["text_labels"],
        n_train=n_images - n_test,
        captions_per_image=cpi,
        params=params,
    )


def iter_paired(
    n_images: int,
    captions_per_image: int = 5,
    n_categories: int = 24,
    seed: int = 0,
    *,
    chunk_size: int = 8192,
    start: int = 0,
    d_image: int = 512,
    d_text: int = 300,
    d_latent: int = 64,
    hidden_image: int = 256,
    hidden_text: int = 128,
    category_weight: float = 0.5,
    labels_per_item: float = 2.0,
    label_skew: float = 1.0,
    image_noise: float = 0.3,
    text_noise: float = 0.5,
    feature_noise: float = 0.3,
    nonlinearity: float = 4.0,
) -> Iterator[PairedChunk]:
    """Stream the dataset of :func:`make_paired` in chunks of ``chunk_size`` images.

    Same parameters and same data as :func:`make_paired` (byte for byte, for any
    ``chunk_size``); the split is not applied (the test split is the last
    ``n_test`` images).  ``start`` skips to image ``start`` without generating the
    images before it.  Peak memory is about one chunk plus one internal block.
    """
    n_images = check_int(n_images, "n_images", minimum=1)
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    start = check_int(start, "start", minimum=0, maximum=n_images)
    cfg = _make_config(
        captions_per_image, n_categories, seed, d_image, d_text, d_latent, hidden_image,
        hidden_text, category_weight, labels_per_item, label_skew, image_noise, text_noise,
        feature_noise, nonlinearity,
    )
    _check_sizes(n_images, cfg)
    return _iter_chunks(_PairedGenerator(cfg), n_images, chunk_size, start)


def _iter_chunks(
    generator: _PairedGenerator, n_images: int, chunk_size: int, first: int
) -> Iterator[PairedChunk]:
    cpi = generator.config.captions_per_image
    cached_index, cached = -1, None
    for chunk_start in range(first, n_images, chunk_size):
        chunk_stop = min(chunk_start + chunk_size, n_images)
        images, texts, labels = [], [], []
        position = chunk_start
        while position < chunk_stop:
            block = position // BLOCK_IMAGES
            # A chunk boundary inside a block would otherwise regenerate it.
            if block != cached_index:
                cached_index, cached = block, generator.block(block)
            image, text, label = cached
            lo = position - block * BLOCK_IMAGES
            hi = min(chunk_stop - block * BLOCK_IMAGES, BLOCK_IMAGES)
            images.append(image[lo:hi])
            texts.append(text[lo * cpi : hi * cpi])
            labels.append(label[lo:hi])
            position = block * BLOCK_IMAGES + hi
        image_labels = np.concatenate(labels)
        yield PairedChunk(
            start=chunk_start,
            stop=chunk_stop,
            image_features=np.concatenate(images),
            text_features=np.concatenate(texts),
            caption_to_image=np.repeat(np.arange(chunk_start, chunk_stop, dtype=np.int64), cpi),
            image_labels=image_labels,
            text_labels=np.repeat(image_labels, cpi, axis=0),
        )



"""Datasets for cofisearch, one module per source, all NumPy only:

* :mod:`.synthetic` -- :func:`make_paired` / :func:`iter_paired`: a seeded synthetic
  image-text dataset shaped like the FiCo-ITR study's test sets, scaling to millions of
  items in bounded memory.
* :mod:`.fico` -- :func:`load_fico`: precomputed model outputs (embeddings, similarity
  matrices, labels) in the file layout of the ``fico-itr`` paper tutorial, for
  :mod:`cofisearch.metrics`.
* :mod:`.fashion_mnist` -- :func:`load_fashion_mnist`: real images and labels from
  Debian's ``dataset-fashion-mnist`` package, with the IDX reader :func:`read_idx`.
* :mod:`.debian` -- :func:`load_debian_descriptions`: Debian's package summaries,
  long descriptions and sections from apt's lists (real text, offline).

A new source is a new module here whose public names are re-exported below.
"""

from __future__ import annotations

from .debian import (
    APT_LISTS_DIR,
    APT_UPDATE_COMMAND,
    DebianDescriptions,
    load_debian_descriptions,
)
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FashionMNIST,
    load_fashion_mnist,
    read_idx,
)
from .fico import FicoDirectory, FicoOutput, load_fico
from .synthetic import (
    BLOCK_IMAGES,
    PairedChunk,
    PairedDataset,
    PairedSplit,
    iter_paired,
    make_paired,
)

__all__ = [
    "BLOCK_IMAGES",
    "PairedDataset",
    "PairedSplit",
    "PairedChunk",
    "make_paired",
    "iter_paired",
    "FicoOutput",
    "FicoDirectory",
    "load_fico",
    "FashionMNIST",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "read_idx",
    "DebianDescriptions",
    "APT_LISTS_DIR",
    "APT_UPDATE_COMMAND",
    "load_debian_descriptions",
]

"""Fashion-MNIST: real images and labels from Debian's ``dataset-fashion-mnist`` package
(gzip IDX files), and :func:`read_idx` for IDX files in general."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from .._checks import check_bool, check_path

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FashionMNIST",
    "load_fashion_mnist",
    "read_idx",
]


#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Class names in label order (from the Fashion-MNIST README).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data is big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class FashionMNIST(NamedTuple):
    """Fashion-MNIST: uint8 images (n, 28, 28), or (n, 784) when flattened, and
    uint8 class labels 0..9 (names in :data:`FASHION_MNIST_CLASSES`)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (as used by MNIST / Fashion-MNIST), gzip-compressed or not.

    Returns a writable array in native byte order with the file's shape and type.
    Raises ValueError when the header is not IDX or the payload size does not
    match the header.
    """
    path = check_path(path, "path")
    with open(path, "rb") as handle:
        magic = handle.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: expected the header 0x00 0x00 <type code in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)}> <ndim>, got {data[:4].hex(' ') or 'nothing'}"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{str(path)!r} is truncated: expected {ndim} dimension sizes, got {len(data)} bytes"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{str(path)!r} has {len(data) - header} bytes of data, expected {expected} "
            f"for shape {shape} of {dtype.str}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_file(directory: Path, stem: str) -> Optional[Path]:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(
    directory: Optional[str | os.PathLike[str]] = None, *, flatten: bool = False
) -> FashionMNIST:
    """Load Fashion-MNIST (60,000 train / 10,000 test images, 10 classes).

    Parameters
    ----------
    directory : folder with ``train-images-idx3-ubyte.gz``,
        ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
        ``t10k-labels-idx1-ubyte.gz`` (uncompressed files without ``.gz`` also
        work).  Default: :data:`FASHION_MNIST_DIR`, where Debian's
        ``dataset-fashion-mnist`` package puts them.
    flatten : return images as (n, 784) rows instead of (n, 28, 28).

    Returns
    -------
    FashionMNIST with uint8 images (pixel values 0..255) and uint8 labels.

    Raises
    ------
    FileNotFoundError : a file is missing; the message names the package and
        how to install it.
    ValueError : a file is not valid IDX, or images and labels disagree.
    """
    path = FASHION_MNIST_DIR if directory is None else check_path(directory, "directory")
    flatten = check_bool(flatten, "flatten")
    files = {key: _find_file(path, stem) for key, stem in _FILES.items()}
    missing = [f"{_FILES[key]}.gz" for key, file in files.items() if file is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {str(path)!r}: missing {', '.join(missing)}. "
            "They come from the Debian package dataset-fashion-mnist; install it with "
            "`sudo apt-get install dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DIR}) or pass directory= pointing at the IDX files"
        )
    arrays = {key: read_idx(file) for key, file in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{files[split + '_images'].name} must hold uint8 images (n, rows, cols), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{files[split + '_labels'].name} must hold {images.shape[0]} labels (one per "
                f"image), got shape {labels.shape}"
            )
        if flatten:
            arrays[f"{split}_images"] = images.reshape(images.shape[0], -1)
    return FashionMNIST(**arrays)

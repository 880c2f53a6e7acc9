"""FiCo-ITR model outputs: precomputed embeddings, similarity matrices and labels in the
file layout of the ``fico-itr`` paper tutorial, so real model outputs can be evaluated
with :mod:`cofisearch.metrics`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .._checks import check_choice, check_path

__all__ = ["FicoDirectory", "FicoOutput", "load_fico"]

# Suffixes of the per-model files in the fico-itr paper tutorial
# (paper_tutorial/demo.py: f"{model}_{dataset}_{modality}.npy").
_SUFFIXES = ("sim_i2t", "sim_t2i", "img", "txt", "sim")
# Label files are named after the dataset's long name
# ("flickr30k-karpathy-test-labels.npy", "coco-karpathy-testall-labels.npy");
# model files use the short one ("f30k", "coco").
_DATASET_ALIASES = {"flickr30k": "f30k", "mscoco": "coco"}
_LABELS_SUFFIX = "-labels.npy"
_INDICES_SUFFIX = "_test_indices.npy"
_MMAP_MODES = (None, "r", "r+", "c")


@dataclass(frozen=True, eq=False)
class FicoOutput:
    """One model's outputs on one dataset, as found by :func:`load_fico`.

    Exactly one of three forms is usually present:

    * embeddings: ``image_embeddings`` (n_images, d) and ``text_embeddings``
      (n_captions, d), from ``{model}_{dataset}_img.npy`` / ``_txt.npy``
      (the study computes cosine similarity from them; ADV's are binary);
    * one similarity matrix ``similarity`` from ``{model}_{dataset}_sim.npy``
      (query-time attention and no-fusion models: IMRAM, SCAN, ``*(nf)``);
    * per-direction matrices ``similarity_i2t`` / ``similarity_t2i`` from
      ``_sim_i2t.npy`` / ``_sim_t2i.npy`` (fusion rerankers: BLIP-2, X-VLM).

    Arrays are exactly as stored: some tutorial files are square image-duplicated
    (VSRN, UCCH: 5000 x 5000 on F30K) or transposed (DADH), which
    ``fico_itr`` / :mod:`cofisearch.metrics` handle.  ``labels`` are the
    dataset's multi-hot image labels when a label file was found.
    ``caption_to_image`` is the dataset's caption map (``mscoco_test_indices.npy``)
    when its length matches this output's captions (COCO models that keep all
    25,010 captions), else ``None`` meaning a fixed number of captions per image.
    """

    model: str
    dataset: str
    image_embeddings: Optional[np.ndarray] = None
    text_embeddings: Optional[np.ndarray] = None
    similarity: Optional[np.ndarray] = None
    similarity_i2t: Optional[np.ndarray] = None
    similarity_t2i: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    caption_to_image: Optional[np.ndarray] = None
    files: Tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``"embeddings"``, ``"similarity"`` or ``"directional"``."""
        if self.image_embeddings is not None:
            return "embeddings"
        if self.similarity is not None:
            return "similarity"
        return "directional"


@dataclass(frozen=True, eq=False)
class FicoDirectory:
    """What :func:`load_fico` found in a directory.

    ``outputs`` maps ``(model, dataset)`` to :class:`FicoOutput`; ``labels`` and
    ``caption_to_image`` map a dataset's short name (``"f30k"``, ``"coco"``) to
    its arrays.
    """

    directory: Path
    outputs: Dict[Tuple[str, str], FicoOutput]
    labels: Dict[str, np.ndarray]
    caption_to_image: Dict[str, np.ndarray]

    @property
    def models(self) -> Tuple[str, ...]:
        return tuple(sorted({model for model, _ in self.outputs}))

    @property
    def datasets(self) -> Tuple[str, ...]:
        return tuple(sorted({dataset for _, dataset in self.outputs}))

    def __getitem__(self, key: Tuple[str, str]) -> FicoOutput:
        try:
            return self.outputs[key]
        except KeyError:
            raise KeyError(
                f"no outputs for (model, dataset) = {key!r}; found {sorted(self.outputs)}"
            ) from None


def _dataset_name(prefix: str) -> str:
    return _DATASET_ALIASES.get(prefix.lower(), prefix)


def _parse_name(name: str) -> Optional[Tuple[str, str, str]]:
    if not name.endswith(".npy"):
        return None
    stem = name[: -len(".npy")]
    for suffix in _SUFFIXES:
        if stem.endswith("_" + suffix):
            head = stem[: -len(suffix) - 1]
            model, sep, dataset = head.rpartition("_")
            if sep and model and dataset:
                return model, dataset, suffix
    return None


def _as_name_filter(value: Any, name: str) -> Optional[frozenset]:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset([value])
    try:
        items = list(value)
    except TypeError:
        raise TypeError(
            f"{name} must be None, a str or an iterable of str, got {type(value).__name__}"
        ) from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold str, got {type(item).__name__} ({item!r})")
    return frozenset(items)


def load_fico(
    directory: str | os.PathLike[str],
    *,
    models: Optional[Union[str, Sequence[str]]] = None,
    datasets: Optional[Union[str, Sequence[str]]] = None,
    mmap_mode: Optional[str] = "r",
) -> FicoDirectory:
    """Load precomputed model outputs stored in the FiCo-ITR file layout.

    The layout is the one of the fico-itr paper tutorial (``results_data/``):

    * ``{model}_{dataset}_img.npy`` and ``{model}_{dataset}_txt.npy`` --
      image / text embeddings (BEiT-3, VSRN, UCCH, DADH, ADV);
    * ``{model}_{dataset}_sim.npy`` -- an images x captions similarity matrix
      (IMRAM, SCAN, BLIP-2 NF, X-VLM NF);
    * ``{model}_{dataset}_sim_i2t.npy`` and ``{model}_{dataset}_sim_t2i.npy`` --
      per-direction matrices (BLIP-2, X-VLM);
    * ``{name}-karpathy-{split}-labels.npy`` or ``{name}-labels.npy`` --
      multi-hot image labels, e.g. ``flickr30k-karpathy-test-labels.npy``
      (dataset ``f30k``) and ``coco-karpathy-testall-labels.npy`` (dataset
      ``coco``); ``flickr30k`` and ``mscoco`` map to the short names;
    * ``{name}_test_indices.npy`` -- a caption -> image map, e.g.
      ``mscoco_test_indices.npy`` for COCO's 25,010 captions.

    Model names are the study's (``beit3``, ``adv(64bit)``, ``blip2(nf)``, ...);
    the dataset is the last ``_``-separated token before the suffix (``f30k``,
    ``coco``).  Older ``.mat`` label files are not read (convert them with
    ``scipy.io.loadmat(path)["LAll"]`` and ``numpy.save``).

    Parameters
    ----------
    directory : the folder holding the files (not searched recursively).
    models, datasets : keep only these names (str or iterable of str).
    mmap_mode : passed to ``numpy.load``; the default ``"r"`` maps the files
        read-only instead of reading them (similarity matrices reach gigabytes).

    Raises
    ------
    FileNotFoundError : the directory does not exist.
    ValueError : no model files match (after filtering), a pair of files is
        incomplete (``_img`` without ``_txt``, ``_sim_i2t`` without ``_sim_t2i``),
        arrays are not 2-D or embedding widths differ, or two label files map to
        the same dataset.
    """
    path = check_path(directory, "directory")
    model_filter = _as_name_filter(models, "models")
    dataset_filter = _as_name_filter(datasets, "datasets")
    check_choice(mmap_mode, "mmap_mode", _MMAP_MODES)
    if not path.is_dir():
        raise FileNotFoundError(f"directory {str(path)!r} does not exist or is not a directory")

    def load(file: Path) -> np.ndarray:
        return np.load(file, mmap_mode=mmap_mode, allow_pickle=False)

    found: Dict[Tuple[str, str], Dict[str, Path]] = {}
    label_files: Dict[str, Path] = {}
    index_files: Dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        name = file.name
        if name.endswith(_LABELS_SUFFIX):
            # "flickr30k-karpathy-test-labels.npy" -> "flickr30k" -> "f30k".
            stem = name[: -len(_LABELS_SUFFIX)]
            dataset = _dataset_name(stem.split("-karpathy", 1)[0])
            if dataset in label_files:
                raise ValueError(
                    f"directory {str(path)!r} holds two label files for dataset {dataset!r}: "
                    f"{label_files[dataset].name} and {name}; expected one"
                )
            label_files[dataset] = file
            continue
        if name.endswith(_INDICES_SUFFIX):
            index_files[_dataset_name(name[: -len(_INDICES_SUFFIX)])] = file
            continue
        parsed = _parse_name(name)
        if parsed is None:
            continue
        model, dataset, suffix = parsed
        if model_filter is not None and model not in model_filter:
            continue
        if dataset_filter is not None and dataset not in dataset_filter:
            continue
        found.setdefault((model, dataset), {})[suffix] = file

    if not found:
        wanted = ""
        if model_filter is not None or dataset_filter is not None:
            wanted = (
                f" for models={'any' if model_filter is None else sorted(model_filter)}, "
                f"datasets={'any' if dataset_filter is None else sorted(dataset_filter)}"
            )
        raise ValueError(
            f"directory {str(path)!r} holds no FiCo-ITR model outputs{wanted}: expected files "
            "named {model}_{dataset}_img.npy + {model}_{dataset}_txt.npy, "
            "{model}_{dataset}_sim.npy, or {model}_{dataset}_sim_i2t.npy + "
            "{model}_{dataset}_sim_t2i.npy (e.g. beit3_f30k_img.npy), with labels in "
            "*-labels.npy (e.g. flickr30k-karpathy-test-labels.npy)"
        )

    def wanted_dataset(dataset: str) -> bool:
        return dataset_filter is None or dataset in dataset_filter

    labels = {name: load(file) for name, file in label_files.items() if wanted_dataset(name)}
    caption_maps = {
        name: load(file) for name, file in index_files.items() if wanted_dataset(name)
    }
    for name, caption_map in caption_maps.items():
        if caption_map.ndim != 1 or caption_map.dtype.kind not in "iu":
            raise ValueError(
                f"{index_files[name].name} must hold a 1-D integer caption -> image map, got "
                f"{caption_map.dtype} with shape {caption_map.shape}"
            )
    outputs: Dict[Tuple[str, str], FicoOutput] = {}
    for (model, dataset), files in sorted(found.items()):
        for first, second in (("img", "txt"), ("sim_i2t", "sim_t2i")):
            if (first in files) != (second in files):
                have, missing = (first, second) if first in files else (second, first)
                raise ValueError(
                    f"directory {str(path)!r} holds {files[have].name} but not "
                    f"{model}_{dataset}_{missing}.npy; expected both"
                )
        arrays = {suffix: load(file) for suffix, file in files.items()}
        for suffix, array in arrays.items():
            if array.ndim != 2:
                raise ValueError(
                    f"{files[suffix].name} must hold a 2-D array, got shape {array.shape}"
                )
        if "img" in arrays and arrays["img"].shape[1] != arrays["txt"].shape[1]:
            raise ValueError(
                f"{files['img'].name} and {files['txt'].name} must have the same width, got "
                f"{arrays['img'].shape} and {arrays['txt'].shape}"
            )
        n_captions = _caption_count(arrays)
        caption_map = caption_maps.get(dataset)
        if caption_map is not None and caption_map.shape[0] != n_captions:
            caption_map = None
        outputs[(model, dataset)] = FicoOutput(
            model=model,
            dataset=dataset,
            image_embeddings=arrays.get("img"),
            text_embeddings=arrays.get("txt"),
            similarity=arrays.get("sim"),
            similarity_i2t=arrays.get("sim_i2t"),
            similarity_t2i=arrays.get("sim_t2i"),
            labels=labels.get(dataset),
            caption_to_image=caption_map,
            files=tuple(sorted(file.name for file in files.values())),
        )
    return FicoDirectory(
        directory=path, outputs=outputs, labels=labels, caption_to_image=caption_maps
    )


def _caption_count(arrays: Dict[str, np.ndarray]) -> int:
    # Matrices may be stored either way round (DADH is transposed); captions are
    # the longer side, as fico-itr assumes when it auto-transposes.
    if "txt" in arrays:
        return int(arrays["txt"].shape[0])
    matrix = arrays["sim"] if "sim" in arrays else arrays["sim_i2t"]
    return int(max(matrix.shape))


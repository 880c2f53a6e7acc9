"""``DualEncoder``: the fine-grained dual encoder, two MLP towers into one L2-normalised
float space for a ``FloatIndex``."""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_float, check_int
from ._arrays import check_hidden, check_labels
from ._model import TwoTowerModel
from ._torch import multi_positive_nce, towers

__all__ = ["DualEncoder"]


class DualEncoder(TwoTowerModel):
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
        self.image_dim = check_int(image_dim, "image_dim", minimum=1)
        self.text_dim = check_int(text_dim, "text_dim", minimum=1)
        self.embed_dim = check_int(embed_dim, "embed_dim", minimum=1)
        self.hidden = check_hidden(hidden)
        self.dropout = check_float(dropout, "dropout", minimum=0, below=1)
        self.temperature = check_float(temperature, "temperature", above=0)
        self.learn_temperature = bool(learn_temperature)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: towers().TwoTowers(
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
        img_t, txt_t, c2i = self._pair_data(image_features, text_features, caption_to_image)
        if labels is not None:
            check_labels(labels, img_t.shape[0])
        self._set_stats_once(img_t, txt_t)
        net = self.net
        max_log_scale = math.log(100.0)

        def step_loss(ids, gen):
            image_ids = c2i[ids]
            zi = torch.nn.functional.normalize(net.image(img_t[image_ids]), dim=-1)
            zt = torch.nn.functional.normalize(net.text(txt_t[ids]), dim=-1)
            # CLIP's clamp: an unbounded learned scale can blow up the logits.
            logits = net.log_scale.clamp(max=max_log_scale).exp() * zi @ zt.T
            positive = image_ids[:, None] == image_ids[None, :]
            return 0.5 * (multi_positive_nce(logits, positive, 1)
                          + multi_positive_nce(logits, positive, 0))

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

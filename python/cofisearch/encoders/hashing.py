"""``HashEncoder``: cross-modal hashing, two MLP towers ending in relaxed bits, giving
packed binary codes for a ``BinaryIndex``."""

from __future__ import annotations

import numpy as np

from .._checks import check_choice, check_float, check_int, check_nbits
from ._arrays import check_hidden, check_labels, pack_signs, signs_pm1
from ._model import TwoTowerModel
from ._torch import multi_positive_nce, towers

__all__ = ["HashEncoder"]


_LOSSES = ("instance", "category")


def _label_similarity(labels_t, a, b):
    """S[i, j] = items a[i] and b[j] share a label (1-D ids: equal; multi-hot: overlap)."""
    if labels_t.dim() == 1:
        return labels_t[a][:, None] == labels_t[b][None, :]
    return (labels_t[a] @ labels_t[b].T) > 0


class HashEncoder(TwoTowerModel):
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
        self.image_dim = check_int(image_dim, "image_dim", minimum=1)
        self.text_dim = check_int(text_dim, "text_dim", minimum=1)
        self.nbits = check_nbits(nbits)
        if not isinstance(loss, str):
            raise TypeError(f"loss must be a str, one of {_LOSSES}, got "
                            f"{type(loss).__name__}")
        self.loss = check_choice(loss, "loss", _LOSSES)
        self.hidden = check_hidden(hidden)
        self.dropout = check_float(dropout, "dropout", minimum=0, below=1)
        self.temperature = check_float(temperature, "temperature", above=0)
        self.balance_weight = check_float(balance_weight, "balance_weight", minimum=0)
        self.quantization_weight = check_float(quantization_weight, "quantization_weight",
                                               minimum=0)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: towers().TwoTowers(
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
        img_t, txt_t, c2i = self._pair_data(image_features, text_features, caption_to_image)
        labels_t = None
        if labels is not None:
            lab = check_labels(labels, img_t.shape[0])
            labels_t = torch.from_numpy(
                lab.astype(np.int64) if lab.ndim == 1 else (lab != 0).astype(np.float32))
        if self.loss == "category" and labels_t is None:
            raise ValueError('loss="category" needs labels (n_images,) or '
                             '(n_images, n_classes) in fit(); got labels=None')
        self._set_stats_once(img_t, txt_t)
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
                main = 0.5 * (multi_positive_nce(logits, positive, 1)
                              + multi_positive_nce(logits, positive, 0))
            else:
                theta = 0.5 * inner
                similar = _label_similarity(labels_t, image_ids, image_ids).to(theta.dtype)
                main = (torch.nn.functional.softplus(theta) - similar * theta).mean()
            return main + regularisers(hi) + regularisers(ht)

        return self._train(txt_t.shape[0], batch_size, epochs, lr, weight_decay, step_loss,
                           show_progress_bar)

    def _encode(self, tower, x, name, dim, batch_size, packed, show_progress_bar):
        if packed:
            width, dtype, post = self.nbits // 8, np.uint8, lambda z: pack_signs(z >= 0)
        else:
            width, dtype, post = self.nbits, np.int8, lambda z: signs_pm1(z >= 0)
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

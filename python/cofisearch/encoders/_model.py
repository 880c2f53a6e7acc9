"""The base of the torch models: argument handling, the training loop, batched inference
and the saved file format; and the base of the two-tower models (dual encoder, hashing),
which validates (image, caption) pairs."""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_float, check_int
from ._arrays import check_features, check_finite, check_index_map
from ._torch import as_tensor, progress, require_torch, torch_scope

__all__ = ["TorchModel", "TwoTowerModel"]

# The saved file format: a torch.save'd dict (see TorchModel.save). Files written before
# the encoders became a package carry the same tag and version and load unchanged.
_FORMAT = "cofisearch.encoders"
_FORMAT_VERSION = 1


class TorchModel:
    """Shared config handling, training loop, batched inference and persistence."""

    def _init_common(self, seed, num_threads):
        self.seed = check_int(seed, "seed", minimum=0)
        if num_threads is not None:
            num_threads = check_int(num_threads, "num_threads", minimum=1)
        self.num_threads = num_threads
        self._n_fits = 0
        self._torch = require_torch("cofisearch.encoders")

    def _build(self, factory):
        with torch_scope(self._torch, self.seed, self.num_threads):
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
        epochs = check_int(epochs, "epochs", minimum=1)
        batch_size = check_int(batch_size, "batch_size", minimum=2)
        lr = check_float(lr, "lr", above=0)
        weight_decay = check_float(weight_decay, "weight_decay", minimum=0)
        batch_size = min(batch_size, n_examples)
        # Drop the ragged last batch: a tiny batch gives a noisy contrastive loss with
        # almost no negatives.
        steps_per_epoch = max(1, n_examples // batch_size)
        total = epochs * steps_per_epoch
        warmup = max(1, min(total // 20, 200))
        params = [p for p in self.net.parameters() if p.requires_grad]
        seed = self.seed + 7919 * (self._n_fits + 1)
        history = []
        with torch_scope(torch, seed, self.num_threads):
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt,
                lambda s: min(1.0, (s + 1) / warmup)
                * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)),
            )
            self.net.train()
            try:
                with progress(total, f"{type(self).__name__}.fit",
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
        arr = check_features(x, name, dim)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        torch = self._torch
        n = arr.shape[0]
        out = np.empty((n, out_width), dtype=out_dtype)
        steps = -(-n // batch_size)
        with torch_scope(torch, self.seed, self.num_threads), torch.inference_mode(), \
                progress(steps, f"{type(self).__name__}.{name}", show_progress_bar) as bar:
            for start in range(0, n, batch_size):
                chunk = as_tensor(torch, arr[start : start + batch_size])
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
        torch = require_torch(f"{cls.__name__}.load")
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


class TwoTowerModel(TorchModel):
    """A model with an image tower ``net.image`` and a text tower ``net.text`` over
    features of widths ``image_dim`` and ``text_dim``, trained on (image, caption) pairs."""

    def _pair_data(self, image_features, text_features, caption_to_image):
        """Validated float32 tensors and the caption -> image map (identity when None)."""
        img = check_features(image_features, "image_features", self.image_dim, min_rows=1)
        txt = check_features(text_features, "text_features", self.text_dim, min_rows=2)
        check_finite(img, "image_features")
        check_finite(txt, "text_features")
        if caption_to_image is None:
            if img.shape[0] != txt.shape[0]:
                raise ValueError(
                    f"image_features and text_features have {img.shape[0]} and "
                    f"{txt.shape[0]} rows; pass caption_to_image (text row -> image row) "
                    f"when images have several captions"
                )
            c2i = np.arange(txt.shape[0], dtype=np.int64)
        else:
            c2i = check_index_map(caption_to_image, "caption_to_image", txt.shape[0],
                                  img.shape[0], "image_features rows")
        torch = self._torch
        img_t = as_tensor(torch, img)
        txt_t = as_tensor(torch, txt)
        return img_t, txt_t, torch.from_numpy(c2i)

    def _set_stats_once(self, img_t, txt_t):
        """Input standardisation from the first training set; later fits keep it."""
        if not self._n_fits:
            with self._torch.no_grad():
                self.net.image.set_stats(img_t)
                self.net.text.set_stats(txt_t)

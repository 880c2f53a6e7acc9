"""Torch plumbing shared by the encoders: the lazy import, the seeded deterministic scope
of one call, the progress bar, array-to-tensor conversion, the contrastive loss and the
MLP towers. Importing this module does not import torch; calling into it does."""

from __future__ import annotations

import contextlib
import functools
import types

import numpy as np

__all__ = [
    "as_tensor",
    "multi_positive_nce",
    "progress",
    "require_torch",
    "torch_scope",
    "towers",
]

_INSTALL_HINT = 'pip install "cofisearch[torch]"'


def require_torch(what):
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"{what} needs PyTorch, an optional dependency of cofisearch; "
            f"install it with: {_INSTALL_HINT}"
        ) from exc
    return torch


def progress(total, desc, enabled):
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
def torch_scope(torch, seed, num_threads):
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
@functools.lru_cache(maxsize=None)
def towers():
    """The tower nn.Module classes, defined on first use so that importing the encoders
    does not import torch."""
    torch = require_torch("cofisearch.encoders")
    nn = torch.nn

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


    return types.SimpleNamespace(Tower=Tower, TwoTowers=TwoTowers)


def multi_positive_nce(logits, positive, dim):
    """-log( sum of exp over positives / sum of exp over all ) along `dim`, averaged.

    Several captions of one image can land in a batch; counting them as negatives of each
    other would push apart items the data says match.
    """
    masked = logits.masked_fill(~positive, float("-inf"))
    return (logits.logsumexp(dim) - masked.logsumexp(dim)).mean()


def as_tensor(torch, arr):
    """float32 C-contiguous tensor sharing memory with `arr` where that is safe."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if not a.flags.writeable:
        # torch.from_numpy warns on read-only arrays (memory-mapped features are).
        a = a.copy()
    return torch.from_numpy(a)


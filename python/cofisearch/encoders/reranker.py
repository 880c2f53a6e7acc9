"""``CrossAttentionReranker``: a small fusion model scoring (query, candidate) pairs
jointly, the example for a cascade's optional third stage."""

from __future__ import annotations

import functools
import math

import numpy as np

from .._checks import check_float, check_int
from ._arrays import check_features, check_finite, check_index_map
from ._model import TorchModel
from ._torch import as_tensor, multi_positive_nce, progress, require_torch, torch_scope, towers

__all__ = ["CrossAttentionReranker"]


@functools.lru_cache(maxsize=None)
def _fusion_class():
    """The Fusion nn.Module, defined on first use so that importing the encoders does not
    import torch."""
    torch = require_torch("cofisearch.encoders")
    nn = torch.nn
    F = torch.nn.functional
    Tower = towers().Tower

    class Fusion(nn.Module):
        """Query and candidate as token sets; cross-attention both ways; MLP on the result.

        Attention is written out with einsum instead of nn.MultiheadAttention so that the
        query/key/value projections run once per query and once per candidate, and only
        the T x T token attention and a small MLP run per (query, candidate) pair.
        """

        def __init__(self, query_dim, candidate_dim, d_model, n_tokens, n_heads, hidden,
                     dropout, input_cosine):
            super().__init__()
            self.n_tokens, self.n_heads, self.d_model = n_tokens, n_heads, d_model
            self.input_cosine = input_cosine
            self.q_in = Tower(query_dim, (), n_tokens * d_model, 0.0)
            self.c_in = Tower(candidate_dim, (), n_tokens * d_model, 0.0)
            self.q_norm = nn.LayerNorm(d_model)
            self.c_norm = nn.LayerNorm(d_model)
            self.q_qkv = nn.Linear(d_model, 3 * d_model)
            self.c_qkv = nn.Linear(d_model, 3 * d_model)
            self.head = nn.Sequential(
                nn.Linear(4 * d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                nn.Linear(hidden, 1),
            )
            # A bilinear shortcut gives a usable score from the first steps; the
            # attention path learns the corrections on top of it.
            self.q_lin = nn.Linear(d_model, d_model, bias=False)
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            # When both inputs are first-stage embeddings, their cosine is the first
            # stage's score: starting from it, the model can only learn corrections and
            # does not have to rediscover what the dual encoder already knows.
            self.cosine_weight = nn.Parameter(torch.tensor(10.0 if input_cosine else 0.0),
                                              requires_grad=input_cosine)
            if input_cosine:
                # ... and start exactly there: the learned terms begin at zero.
                nn.init.zeros_(self.head[-1].weight)
                nn.init.zeros_(self.head[-1].bias)
                self.log_scale.data.fill_(-8.0)

        def _tokens(self, tower, norm, qkv, x):
            lead = x.shape[:-1]
            tok = norm(tower(x).view(*lead, self.n_tokens, self.d_model))
            q, k, v = qkv(tok).chunk(3, dim=-1)
            split = (*lead, self.n_tokens, self.n_heads, self.d_model // self.n_heads)
            return (tok.mean(-2), q.reshape(split), k.reshape(split), v.reshape(split),
                    F.normalize(x, dim=-1))

        def encode_queries(self, queries):
            return self._tokens(self.q_in, self.q_norm, self.q_qkv, queries)

        def encode_candidates(self, candidates):
            return self._tokens(self.c_in, self.c_norm, self.c_qkv, candidates)

        def pair_scores(self, enc_q, enc_c):
            # enc_q from (B, dq) queries, enc_c from (B, C, dc) candidates -> (B, C).
            # Only the pooled attention output is used, and mean_t(softmax(A) V) equals
            # mean_t(softmax(A)) V, so each direction costs one T x S score block and one
            # S-term weighted sum per pair; query tensors are never copied per candidate.
            qbar, qq, qk, qv, q_unit = enc_q
            cbar, cq, ck, cv, c_unit = enc_c
            scale = 1.0 / math.sqrt(qq.shape[-1])
            w_q = (torch.einsum("bthd,bcshd->bchts", qq, ck) * scale).softmax(-1).mean(3)
            q_att = torch.einsum("bchs,bcshd->bchd", w_q, cv).flatten(-2)
            w_c = (torch.einsum("bcthd,bshd->bchts", cq, qk) * scale).softmax(-1).mean(3)
            c_att = torch.einsum("bchs,bshd->bchd", w_c, qv).flatten(-2)
            qb = qbar.unsqueeze(1).expand_as(cbar)
            fused = torch.cat([qb * c_att, cbar * q_att, q_att * c_att, qb * cbar], -1)
            bilinear = (F.normalize(self.q_lin(qbar), dim=-1).unsqueeze(1)
                        * F.normalize(cbar, dim=-1)).sum(-1)
            score = self.head(fused).squeeze(-1) + self.log_scale.exp() * bilinear
            if self.input_cosine:
                score = score + self.cosine_weight * (q_unit.unsqueeze(1) * c_unit).sum(-1)
            return score

        def forward(self, queries, candidates):
            return self.pair_scores(self.encode_queries(queries),
                                    self.encode_candidates(candidates))

    return Fusion


class CrossAttentionReranker(TorchModel):
    """A small fusion model that scores (query, candidate) pairs jointly.

    Calling contract (what a cascade's stage 3 calls)::

        scores = reranker(query_vectors, candidate_vectors)
        # query_vectors: float (nq, query_dim); candidate_vectors: float (nq, c, candidate_dim)
        # scores: float32 (nq, c), higher = better match

    Each vector is projected to ``n_tokens`` tokens of width ``d_model``; query tokens
    attend to candidate tokens and candidate tokens to query tokens (``n_heads`` heads),
    and an MLP on the pooled, multiplied results (plus a learned bilinear shortcut) gives
    the score. Unlike a dual encoder the score cannot be precomputed per item: it costs one
    fusion pass per pair, which is why it only reranks a short list.

    ``input_cosine`` adds ``w * cos(query_vector, candidate_vector)`` with a learned ``w``
    (starting at 10), so that on first-stage embeddings (a ``DualEncoder``'s output, the
    vectors a ``FloatIndex`` holds) the model starts from the first stage's ranking and
    learns corrections. ``None`` turns it on when ``query_dim == candidate_dim``. Train the
    reranker on pairs the first stage was not trained on where you can: on its own
    training pairs a first stage is nearly perfect, and the reranker learns little.

    ``fit(queries, candidates, query_to_candidate=...)`` trains it with a listwise
    contrastive loss: each query's matching candidate against the other candidates of the
    batch and, if given, sampled ``hard_negatives`` (the list a first stage returns, the
    negatives a reranker actually faces).
    """

    def __init__(self, query_dim, candidate_dim, *, d_model=64, n_tokens=4, n_heads=4,
                 hidden=64, dropout=0.0, input_cosine=None, seed=0, num_threads=None):
        self.query_dim = check_int(query_dim, "query_dim", minimum=1)
        self.candidate_dim = check_int(candidate_dim, "candidate_dim", minimum=1)
        if input_cosine is None:
            input_cosine = self.query_dim == self.candidate_dim
        elif not isinstance(input_cosine, bool):
            raise TypeError(f"input_cosine must be a bool or None, got "
                            f"{type(input_cosine).__name__}")
        elif input_cosine and self.query_dim != self.candidate_dim:
            raise ValueError(f"input_cosine=True needs query_dim == candidate_dim, got "
                             f"{self.query_dim} and {self.candidate_dim}")
        self.input_cosine = input_cosine
        self.n_heads = check_int(n_heads, "n_heads", minimum=1)
        self.d_model = check_int(d_model, "d_model", minimum=1)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be a multiple of n_heads={self.n_heads}, "
                             f"got {self.d_model}")
        self.n_tokens = check_int(n_tokens, "n_tokens", minimum=1)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        self.dropout = check_float(dropout, "dropout", minimum=0, below=1)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: _fusion_class()(
            self.query_dim, self.candidate_dim, self.d_model, self.n_tokens, self.n_heads,
            self.hidden, self.dropout, self.input_cosine))

    def _config(self):
        return dict(query_dim=self.query_dim, candidate_dim=self.candidate_dim,
                    d_model=self.d_model, n_tokens=self.n_tokens, n_heads=self.n_heads,
                    hidden=self.hidden, dropout=self.dropout,
                    input_cosine=self.input_cosine, seed=self.seed)

    def fit(self, queries, candidates, *, query_to_candidate=None, hard_negatives=None,
            n_hard=8, n_random=8, epochs=3, batch_size=128, lr=1e-3, weight_decay=1e-4,
            show_progress_bar=False):
        """Train on (queries[j], candidates[query_to_candidate[j]]) matching pairs.

        ``queries`` (n_queries, query_dim), ``candidates`` (n_candidates, candidate_dim);
        ``query_to_candidate`` (n_queries,) int, identity when None (e.g. captions as
        queries and the caption->image map for text-to-image reranking).

        Each step scores every query against its match, ``n_hard`` candidates sampled from
        its row of ``hard_negatives`` (n_queries, m) int, e.g. a first stage's top-m (not
        used when ``hard_negatives`` is None), and ``n_random`` candidates sampled from
        the other queries' matches in the batch; sampled entries equal to the match count
        as positives. The loss is
        the softmax cross-entropy of the match over that list. Returns self.
        """
        torch = self._torch
        q = check_features(queries, "queries", self.query_dim, min_rows=2)
        c = check_features(candidates, "candidates", self.candidate_dim, min_rows=1)
        check_finite(q, "queries")
        check_finite(c, "candidates")
        if query_to_candidate is None:
            if q.shape[0] != c.shape[0]:
                raise ValueError(
                    f"queries and candidates have {q.shape[0]} and {c.shape[0]} rows; pass "
                    f"query_to_candidate (query row -> candidate row)")
            q2c = np.arange(q.shape[0], dtype=np.int64)
        else:
            q2c = check_index_map(query_to_candidate, "query_to_candidate", q.shape[0],
                                   c.shape[0], "candidates rows")
        hard_t = None
        n_hard = check_int(n_hard, "n_hard", minimum=0)
        n_random = check_int(n_random, "n_random", minimum=0)
        has_hard = hard_negatives is not None
        if n_random + (n_hard if has_hard else 0) < 1:
            raise ValueError(
                f"fit needs at least one negative per query: n_random={n_random}, "
                f"n_hard={n_hard}, hard_negatives {'given' if has_hard else 'None'}")
        if hard_negatives is not None:
            hard = hard_negatives if isinstance(hard_negatives, np.ndarray) \
                else np.asarray(hard_negatives)
            if hard.dtype.kind not in "iu":
                raise TypeError(f"hard_negatives must be an integer array, got dtype "
                                f"{hard.dtype}")
            if hard.ndim != 2 or hard.shape[0] != q.shape[0] or hard.shape[1] == 0:
                raise ValueError(f"hard_negatives must have shape ({q.shape[0]}, m) with "
                                 f"m >= 1, got shape {hard.shape}")
            if hard.min() < 0 or hard.max() >= c.shape[0]:
                raise ValueError(f"hard_negatives values must index candidates rows "
                                 f"(0 <= value < {c.shape[0]}), got range "
                                 f"[{hard.min()}, {hard.max()}]")
            hard_t = torch.from_numpy(hard.astype(np.int64))
        q_t = as_tensor(torch, q)
        c_t = as_tensor(torch, c)
        q2c_t = torch.from_numpy(q2c)
        if not self._n_fits:
            with torch.no_grad():
                self.net.q_in.set_stats(q_t)
                self.net.c_in.set_stats(c_t)
        net = self.net

        def step_loss(ids, gen):
            targets = q2c_t[ids]
            n = len(ids)
            # Random negatives are drawn from the batch's own matches, so the candidate
            # tower runs once per batch row plus once per hard negative, not per pair.
            pool = [targets]
            rows = [torch.arange(n)[:, None]]
            if hard_t is not None and n_hard:
                cols = torch.randint(hard_t.shape[1], (n, n_hard), generator=gen)
                pool.append(hard_t[ids].gather(1, cols).reshape(-1))
                rows.append(n + torch.arange(n * n_hard).view(n, n_hard))
            if n_random:
                rows.append(torch.randint(n, (n, n_random), generator=gen))
            pool, rows = torch.cat(pool), torch.cat(rows, 1)
            # A sampled "negative" can be the query's own match (another caption of the
            # same image, or a hard list that contains it); it then counts as a positive.
            positive = pool[rows] == targets[:, None]
            enc_c = tuple(t[rows] for t in net.encode_candidates(c_t[pool]))
            scores = net.pair_scores(net.encode_queries(q_t[ids]), enc_c)
            return multi_positive_nce(scores, positive, 1)

        return self._train(q.shape[0], batch_size, epochs, lr, weight_decay, step_loss,
                           show_progress_bar)

    def score(self, query_vectors, candidate_vectors, *, batch_size=256,
              show_progress_bar=False):
        """Scores float32 (nq, c) for queries (nq, query_dim), candidates (nq, c, cand_dim)."""
        self._require_fitted()
        q = check_features(query_vectors, "query_vectors", self.query_dim)
        c = candidate_vectors if isinstance(candidate_vectors, np.ndarray) \
            else np.asarray(candidate_vectors)
        if c.dtype.kind != "f":
            raise TypeError(f"candidate_vectors must be a floating-point array, got dtype "
                            f"{c.dtype}")
        if c.ndim != 3 or c.shape[0] != q.shape[0] or c.shape[2] != self.candidate_dim:
            raise ValueError(
                f"candidate_vectors must have shape ({q.shape[0]}, c, {self.candidate_dim}) "
                f"to match query_vectors {q.shape}, got shape {c.shape}")
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        torch = self._torch
        nq, n_cand = c.shape[0], c.shape[1]
        out = np.empty((nq, n_cand), dtype=np.float32)
        if nq == 0 or n_cand == 0:
            return out
        steps = -(-nq // batch_size)
        with torch_scope(torch, self.seed, self.num_threads), torch.inference_mode(), \
                progress(steps, "CrossAttentionReranker.score", show_progress_bar) as bar:
            for start in range(0, nq, batch_size):
                qb = as_tensor(torch, q[start : start + batch_size])
                cb = as_tensor(torch, c[start : start + batch_size])
                if not torch.isfinite(qb).all():
                    raise ValueError("query_vectors contains NaN or infinite values")
                if not torch.isfinite(cb).all():
                    raise ValueError("candidate_vectors contains NaN or infinite values")
                out[start : start + batch_size] = self.net(qb, cb).numpy()
                if bar is not None:
                    bar.update(1)
        return out

    __call__ = score

    def __repr__(self):
        return (f"CrossAttentionReranker(query_dim={self.query_dim}, "
                f"candidate_dim={self.candidate_dim}, d_model={self.d_model}, "
                f"n_tokens={self.n_tokens}, n_heads={self.n_heads})")

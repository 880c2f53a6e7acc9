"""``CrossAttentionReranker``: a small fusion model scoring (query, candidate) pairs
jointly, the example for a cascade's optional third stage."""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from .._checks import check_choice, check_float, check_int
from ._arrays import check_features, check_finite, check_index_map
from ._model import TorchModel
from ._torch import (
    as_tensor,
    multi_positive_nce,
    progress,
    require_torch,
    torch_scope,
    towers,
)

__all__ = ["NEGATIVES", "CrossAttentionReranker", "cascade_negatives"]

# How fit finds the hard negatives of each query.
NEGATIVES = ("random", "cascade")

# Pairs per block of a cached stage 3 call (measured: 2048 at 32 candidates a list
# ran 1.2x faster than 8192).
_PAIR_BLOCK = 2048


@functools.cache
def _fusion_class():
    """The Fusion nn.Module, defined on first use so that importing the encoders does not
    import torch."""
    torch = require_torch("cofisearch.encoders")
    nn = torch.nn
    F = torch.nn.functional
    Tower = towers().Tower

    def _softmax_last(x):
        # torch's softmax over a last axis of a few tokens took 38% of the scoring time;
        # the same arithmetic from elementwise kernels takes a fraction of that.
        e = (x - x.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    class Fusion(nn.Module):
        """Query and candidate as token sets; cross-attention both ways; MLP on the result.

        Attention is written out with einsum instead of nn.MultiheadAttention so that the
        query/key/value projections run once per query and once per candidate, and only
        the T x T token attention and a small MLP run per (query, candidate) pair.
        """

        def __init__(self, query_dim, candidate_dim, d_model, n_tokens, n_heads, hidden,
                     dropout, input_cosine, candidate_tokens):
            super().__init__()
            self.n_tokens, self.n_heads, self.d_model = n_tokens, n_heads, d_model
            self.candidate_tokens = candidate_tokens
            self.input_cosine = input_cosine
            self.q_in = Tower(query_dim, (), n_tokens * d_model, 0.0)
            self.c_in = Tower(candidate_dim, (), candidate_tokens * d_model, 0.0)
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

        def _tokens(self, tower, norm, qkv, x, n_tokens):
            lead = x.shape[:-1]
            tok = norm(tower(x).view(*lead, n_tokens, self.d_model))
            q, k, v = qkv(tok).chunk(3, dim=-1)
            split = (*lead, n_tokens, self.n_heads, self.d_model // self.n_heads)
            return (tok.mean(-2), q.reshape(split), k.reshape(split), v.reshape(split),
                    F.normalize(x, dim=-1))

        def encode_queries(self, queries):
            return self._tokens(self.q_in, self.q_norm, self.q_qkv, queries, self.n_tokens)

        def encode_candidates(self, candidates):
            return self._tokens(self.c_in, self.c_norm, self.c_qkv, candidates,
                                self.candidate_tokens)

        def pair_scores(self, enc_q, enc_c):
            # enc_q from (B, dq) queries, enc_c from (B, C, dc) candidates -> (B, C).
            # Only the pooled attention output is used, and mean_t(softmax(A) V) equals
            # mean_t(softmax(A)) V, so each direction costs one T x S score block and one
            # S-term weighted sum per pair; query tensors are never copied per candidate.
            qbar, qq, qk, qv, q_unit = enc_q
            cbar, cq, ck, cv, c_unit = enc_c
            scale = 1.0 / math.sqrt(qq.shape[-1])
            w_q = _softmax_last(torch.einsum("bthd,bcshd->bchts", qq, ck) * scale).mean(3)
            q_att = torch.einsum("bchs,bcshd->bchd", w_q, cv).flatten(-2)
            w_c = _softmax_last(torch.einsum("bcthd,bshd->bchts", cq, qk) * scale).mean(3)
            c_att = torch.einsum("bchs,bshd->bchd", w_c, qv).flatten(-2)
            qb = qbar.unsqueeze(1).expand_as(cbar)
            fused = torch.cat([qb * c_att, cbar * q_att, q_att * c_att, qb * cbar], -1)
            bilinear = (F.normalize(self.q_lin(qbar), dim=-1).unsqueeze(1)
                        * F.normalize(cbar, dim=-1)).sum(-1)
            score = self.head(fused).squeeze(-1) + self.log_scale.exp() * bilinear
            if self.input_cosine:
                score = score + self.cosine_weight * (q_unit.unsqueeze(1) * c_unit).sum(-1)
            return score

        def pack_candidates(self, enc_c):
            """The cached candidate side of :meth:`fast_scores`: (n, S, 3 d) tokens, each
            [query | key | value], so that one gather brings a candidate's three and the
            keys of a query's whole list are one (c S, d) matrix; and (n, e) extras
            [pooled token, its unit vector, unit input]. With one candidate token, one
            (n, w) block instead (see :meth:`_pooled_scores`)."""
            cbar, cq, ck, cv, c_unit = enc_c
            n = cbar.shape[0]
            if self.candidate_tokens == 1:
                return (self._pooled_pack(cbar, cq.reshape(n, -1), cv.reshape(n, -1),
                                          c_unit),)
            tokens = torch.cat([t.reshape(n, self.candidate_tokens, self.d_model)
                                for t in (cq, ck, cv)], -1)
            extras = [cbar, F.normalize(cbar, dim=-1)]
            if self.input_cosine:
                extras.append(c_unit)
            return tokens.contiguous(), torch.cat(extras, -1).contiguous()

        def _block(self, x):
            # (B, T, H, dh) -> (B, H T, H dh), row (h, t) holding x[t, h] in head h's
            # columns: a query's per-head products with every candidate token become one
            # dense matrix product.
            b, t, h, dh = x.shape
            eye = torch.eye(h, dtype=x.dtype)
            return torch.einsum("bthd,hg->bhtgd", x, eye).reshape(b, h * t, h * dh)

        def query_side(self, enc_q):
            """What :meth:`fast_scores` needs of each query, computed once per query: its
            tokens as block matrices (scaled queries, scaled keys, values), its pooled
            token, the head's first layer folded with its values and pooled token, and the
            weights of the bilinear and cosine shortcuts."""
            if self.candidate_tokens == 1:
                return self._pooled_side(enc_q)
            qbar, qq, qk, qv, q_unit = enc_q
            scale = 1.0 / math.sqrt(self.d_model // self.n_heads)
            v_blk = self._block(qv)
            lin1 = self.head[0]
            wa = lin1.weight[:, : self.d_model]
            # The (pooled query x candidate attention) block of the head's first layer is
            # linear in the candidate's attention weights over the query tokens.
            w_a = torch.matmul(v_blk * qbar.unsqueeze(1), wa.t())            # (B, H T, hidden)
            return (self._block(qq * scale), self._block(qk * scale), v_blk, qbar, w_a,
                    self._shortcuts(qbar, q_unit))

        def _shortcuts(self, qbar, q_unit):
            # Per query: the weights of the bilinear and cosine shortcuts, applied to each
            # candidate's [unit pooled token, unit input].
            u = [self.log_scale.exp() * F.normalize(self.q_lin(qbar), dim=-1)]
            if self.input_cosine:
                u.append(self.cosine_weight * q_unit)
            return torch.cat(u, -1)

        # One candidate token: the query tokens' attention over it is 1, so the
        # candidate's half of the fusion (its value, its pooled token times it) is fixed
        # per candidate and folds into the cache; what is left per pair is the
        # candidate token's attention over the query tokens and one product with a
        # per-query matrix.
        def _pooled_pack(self, cbar, cq, cv, c_unit):
            """(n, w) rows [token query | value | pooled | the head's first layer on
            (pooled x value) plus its bias | unit pooled | unit input]."""
            d, lin1 = self.d_model, self.head[0]
            fixed = torch.addmm(lin1.bias, cbar * cv, lin1.weight[:, d : 2 * d].t())
            parts = [cq, cv, cbar, fixed, F.normalize(cbar, dim=-1)]
            if self.input_cosine:
                parts.append(c_unit)
            return torch.cat(parts, -1).contiguous()

        def _pooled_side(self, enc_q):
            """Per query: scaled keys and values as block matrices, the shortcuts' weights,
            and one (H T + 2 d, hidden) matrix taking [attention weights | value x
            attention output | pooled candidate token] to the head's first layer (its
            (pooled query x attention output), (value x attention output) and (pooled query
            x pooled candidate) blocks)."""
            qbar, _, qk, qv, q_unit = enc_q
            d, lin1 = self.d_model, self.head[0]
            scale = 1.0 / math.sqrt(d // self.n_heads)
            v_blk = self._block(qv)
            w = lin1.weight
            mat = torch.cat([
                torch.matmul(v_blk * qbar.unsqueeze(1), w[:, :d].t()),       # (B, H T, hidden)
                w[:, 2 * d : 3 * d].t().expand(qbar.shape[0], d, -1),
                qbar.unsqueeze(-1) * w[:, 3 * d :].t(),                        # (B, d, hidden)
            ], 1)
            return self._block(qk * scale), v_blk, mat, self._shortcuts(qbar, q_unit)

        def _pooled_scores(self, side, rows):
            k_blk, v_blk, mat, u = side
            b, c, _ = rows.shape
            d, h, t = self.d_model, self.n_heads, self.n_tokens
            hidden = self.head[0].out_features
            cq, cv, cbar = rows[..., :d], rows[..., d : 2 * d], rows[..., 2 * d : 3 * d]
            fixed, tail = rows[..., 3 * d : 3 * d + hidden], rows[..., 3 * d + hidden :]
            w_c = _softmax_last(torch.bmm(cq, k_blk.transpose(1, 2)).view(b, c, h, t))
            w_c = w_c.view(b, c, h * t)
            c_att = torch.bmm(w_c, v_blk)
            hid = torch.baddbmm(fixed, torch.cat([w_c, cv * c_att, cbar], -1), mat)
            lin2 = self.head[-1]
            score = torch.addmm(lin2.bias, F.gelu(hid).view(b * c, -1), lin2.weight.t())
            return score.view(b, c) + torch.bmm(tail, u.unsqueeze(-1)).squeeze(-1)

        def fast_scores(self, side, tokens, extras=None):
            """:meth:`pair_scores` at inference, from :meth:`query_side` of B queries and
            their packed candidates (B, C, S, 3 d) and (B, C, e) (one candidate token:
            their (B, C, w) rows): the same arithmetic, regrouped so that the per-pair
            work is a few batched matrix products."""
            if self.candidate_tokens == 1:
                return self._pooled_scores(side, tokens)
            q_blk, k_blk, v_blk, qbar, w_a, u = side
            b, c, s, _ = tokens.shape
            d, h, t = self.d_model, self.n_heads, self.n_tokens
            flat = tokens.view(b, c * s, 3 * d)
            cq, ck, cv = flat[..., :d], flat[..., d : 2 * d], tokens[..., 2 * d :]
            # Query tokens attend to each candidate's tokens: (B, H T, C S) scores.
            w_q = _softmax_last(torch.bmm(q_blk, ck.transpose(1, 2)).view(b, h, t, c, s))
            q_att = (cv.reshape(b, c, s, h, d // h)
                     * w_q.mean(2).permute(0, 2, 3, 1).unsqueeze(-1)).sum(2).reshape(b, c, d)
            # Candidate tokens attend to the query's: (B, C S, H T) scores.
            w_c = _softmax_last(torch.bmm(cq, k_blk.transpose(1, 2)).view(b, c, s, h, t))
            w_c = w_c.mean(2).reshape(b, c, h * t)
            c_att = torch.bmm(w_c, v_blk)
            cbar, tail = extras[..., :d], extras[..., d:]
            lin1, lin2 = self.head[0], self.head[-1]
            fused = torch.cat([cbar * q_att, q_att * c_att, cbar * qbar.unsqueeze(1)], -1)
            hid = torch.baddbmm(torch.addmm(lin1.bias, fused.view(b * c, 3 * d),
                                            lin1.weight[:, d:].t()).view(b, c, -1),
                                w_c, w_a)
            score = torch.addmm(lin2.bias, F.gelu(hid).view(b * c, -1), lin2.weight.t())
            return score.view(b, c) + torch.bmm(tail, u.unsqueeze(-1)).squeeze(-1)

        def forward(self, queries, candidates):
            return self.pair_scores(self.encode_queries(queries),
                                    self.encode_candidates(candidates))

    return Fusion


def cascade_negatives(cascade, cascade_queries, query_to_candidate, n_negatives, *,
                      n_candidates=None, num_threads=None):
    """Hard negatives mined with a cascade: ``(negatives, found)``, each query's best
    ``n_negatives`` results with its match left out, int64 ``(n_queries, n_negatives)``,
    and whether the match was among its best ``n_negatives + 1``, bool ``(n_queries,)``.

    ``cascade`` is anything with the :class:`cofisearch.Cascade` ``search(query_codes,
    query_vectors, k)`` signature and answer (ids best first, ``-1`` as padding), over
    items whose ids are candidate rows; ``cascade_queries`` is ``(query_codes,
    query_vectors)``; ``query_to_candidate`` (n_queries,) the match of each query. Where
    the cascade returns fewer results (a short screen, a small database) the row ends in
    ``-1``. ``n_candidates``, when given, is the number of candidate rows the ids must
    index.
    """
    n_negatives = check_int(n_negatives, "n_negatives", minimum=1)
    if not callable(getattr(cascade, "search", None)):
        raise TypeError(f"cascade must have a search(query_codes, query_vectors, k) method "
                        f"(a cofisearch.Cascade), got {type(cascade).__name__}")
    if not isinstance(cascade_queries, (tuple, list)) or len(cascade_queries) != 2:
        raise TypeError("cascade_queries must be a pair (query_codes, query_vectors), got "
                        f"{type(cascade_queries).__name__}")
    q2c = np.asarray(query_to_candidate)
    if q2c.dtype.kind not in "iu" or q2c.ndim != 1:
        raise TypeError(f"query_to_candidate must be a 1-D integer array, got dtype "
                        f"{q2c.dtype} and shape {q2c.shape}")
    found = cascade.search(cascade_queries[0], cascade_queries[1], n_negatives + 1,
                           num_threads=num_threads)
    ids = np.asarray(found[1], dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] != q2c.shape[0]:
        raise ValueError(f"cascade_queries must hold one row per training query "
                         f"({q2c.shape[0]}), the cascade answered {ids.shape[0]} rows")
    if n_candidates is not None and ids.size and ids.max() >= n_candidates:
        raise ValueError(f"the cascade returned id {ids.max()}, but candidates has "
                         f"{n_candidates} rows: its items must be the candidates, in order")
    # Drop the match (wherever it ranks) and keep the order of the rest; a row whose
    # match was not found loses its last result instead.
    keep = ids != q2c[:, None].astype(np.int64)
    found = ~keep.all(axis=1)
    keep[~found, -1] = False
    return np.ascontiguousarray(ids[keep].reshape(ids.shape[0], ids.shape[1] - 1)), found


def _cosine_scale(queries, candidates, query_to_candidate, negatives, rows=4096):
    """The weight ``w`` for which ``w * cos(query, candidate)`` alone has the lowest
    listwise loss over the lists (match, negatives), ``-1`` negatives left out."""
    grid = np.geomspace(1.0, 1000.0, 61)
    loss = np.zeros_like(grid)
    for start in range(0, queries.shape[0], rows):
        q = queries[start : start + rows].astype(np.float64)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        lists = np.concatenate([query_to_candidate[start : start + rows, None],
                                negatives[start : start + rows]], axis=1)
        c = candidates[np.maximum(lists, 0)].astype(np.float64)
        c /= np.maximum(np.linalg.norm(c, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("nd,nkd->nk", q, c)
        for i, w in enumerate(grid):
            logits = np.where(lists >= 0, w * cos, -np.inf)
            top = logits.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            loss[i] += (lse - logits[:, 0]).sum()
    return float(grid[int(np.argmin(loss))])


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

    ``candidate_tokens`` (default ``n_tokens``) sets the candidate side's token count on
    its own. At 1, a pooled candidate token attends to the query's tokens and the query
    tokens' attention over it is trivial: on the synthetic data (2 query tokens of width
    32, 2 heads, one torch thread) a cached pair cost 1.7 us against 3.0 at 2 tokens a
    side, and R@1 behind the cascade rose as much (+3.50 over the cascade against +3.24,
    both trained on 20,000 held-out images; issue 16).

    ``input_cosine`` adds ``w * cos(query_vector, candidate_vector)`` with a learned ``w``
    (starting at 10), so that on first-stage embeddings (a ``DualEncoder``'s output, the
    vectors a ``FloatIndex`` holds) the model starts from the first stage's ranking and
    learns corrections. ``None`` turns it on when ``query_dim == candidate_dim``. Train the
    reranker on pairs the first stage was not trained on where you can: on its own
    training pairs a first stage is nearly perfect, and the reranker learns little (on
    the synthetic data of issue 16, R@1 +1.26 over the cascade trained on the dual
    encoder's 5,000 training images, +3.5 on 20,000 images it never saw).

    ``fit(queries, candidates, query_to_candidate=...)`` trains it with a listwise
    contrastive loss: each query's matching candidate against the other candidates of the
    batch and hard negatives, the list a first stage returns (the negatives a reranker
    actually faces): sampled from a given ``hard_negatives`` array, or, with
    ``negatives="cascade"``, mined with the cascade the reranker will serve.
    ``for_candidates(features)`` caches the database items' encodings once and returns
    the cascade's stage 3, which then pays only the per-pair attention.

    Example (text-to-image stage 3 on a dual encoder's embeddings)::

        rr = CrossAttentionReranker(dim, dim)
        rr.fit(train_txt, train_img, query_to_candidate=c2i, negatives="cascade",
               cascade=train_cascade, cascade_queries=(train_txt_codes, train_txt),
               n_negatives=31)
        cascade = Cascade(coarse, fine, 256, reranker=rr.for_candidates(img), n_rerank=32)
    """

    def __init__(self, query_dim, candidate_dim, *, d_model=64, n_tokens=4, n_heads=4,
                 hidden=64, dropout=0.0, input_cosine=None, candidate_tokens=None, seed=0,
                 num_threads=None):
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
        self.candidate_tokens = self.n_tokens if candidate_tokens is None else check_int(
            candidate_tokens, "candidate_tokens", minimum=1)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        self.dropout = check_float(dropout, "dropout", minimum=0, below=1)
        self._init_common(seed, num_threads)
        self.net = self._build(lambda: _fusion_class()(
            self.query_dim, self.candidate_dim, self.d_model, self.n_tokens, self.n_heads,
            self.hidden, self.dropout, self.input_cosine, self.candidate_tokens))

    def _config(self):
        return {"query_dim": self.query_dim, "candidate_dim": self.candidate_dim,
                    "d_model": self.d_model, "n_tokens": self.n_tokens,
                    "candidate_tokens": self.candidate_tokens, "n_heads": self.n_heads,
                    "hidden": self.hidden, "dropout": self.dropout,
                    "input_cosine": self.input_cosine, "seed": self.seed}

    def fit(self, queries, candidates, *, query_to_candidate=None, negatives="random",
            cascade=None, cascade_queries=None, n_negatives=31, hard_negatives=None,
            n_hard=8, n_random=8, epochs=3, batch_size=128, lr=1e-3, weight_decay=1e-4,
            show_progress_bar=False):
        """Train on (queries[j], candidates[query_to_candidate[j]]) matching pairs.

        ``queries`` (n_queries, query_dim), ``candidates`` (n_candidates, candidate_dim);
        ``query_to_candidate`` (n_queries,) int, identity when None (e.g. captions as
        queries and the caption->image map for text-to-image reranking).

        Each step scores every query against a list: its match, its hard negatives and
        ``n_random`` candidates sampled from the other queries' matches in the batch;
        sampled entries equal to the match count as positives. The loss is the softmax
        cross-entropy of the match over that list (listwise). The hard negatives:

        - ``negatives="random"`` (the default): ``n_hard`` candidates sampled per step
          from the query's row of ``hard_negatives`` (n_queries, m) int, e.g. a first
          stage's top-m; none when ``hard_negatives`` is None.
        - ``negatives="cascade"``: mined with the cascade the reranker will serve, as
          fusion rerankers are trained on what their first stages retrieve:
          ``cascade.search(*cascade_queries, n_negatives + 1)`` over the candidates (its
          ids are ``candidates`` rows; ``cascade_queries`` is the pair
          ``(query_codes, query_vectors)`` of the training queries), the match left out;
          all ``n_negatives`` of them are in every list (see :func:`cascade_negatives`).
          Queries whose match the cascade does not return in that list are left out:
          at search time the reranker never sees such a list with its match in it, and
          a match from below the cascade's best teaches the model to prefer what the
          first stages rank low (in one trial on held-out synthetic pairs, R@1 34.4
          with those queries in, 36.2 without). Set ``n_negatives`` to the cascade's
          ``n_rerank - 1`` so that training lists are the lists it reranks. When
          ``input_cosine`` is on, the first fit starts the cosine weight at the value
          that minimises the loss of the cosine alone over these lists.

        Returns self.
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
        n_random = check_int(n_random, "n_random", minimum=0)
        hard_t, n_hard, kept = self._hard_negatives(
            negatives, cascade, cascade_queries, n_negatives, hard_negatives, n_hard,
            n_random, q2c, c.shape[0])
        mined = kept is not None
        if mined:
            q, q2c = q[kept], q2c[kept]
        q_t = as_tensor(torch, q)
        c_t = as_tensor(torch, c)
        q2c_t = torch.from_numpy(q2c)
        if not self._n_fits:
            with torch.no_grad():
                self.net.q_in.set_stats(q_t)
                self.net.c_in.set_stats(c_t)
                if mined and self.input_cosine:
                    # The fused first-stage score starts at its own best temperature:
                    # left at its default, most of the loss is in that one scale, and
                    # the attention head bent the ranking to make up for it (R@1 fell
                    # 52.9 -> 51.9 after one epoch on the synthetic data; 52.9 with this).
                    self.net.cosine_weight.fill_(
                        _cosine_scale(q, c, q2c, hard_t.numpy()))
        net = self.net

        def step_loss(ids, gen):
            targets = q2c_t[ids]
            n = len(ids)
            # Random negatives are drawn from the batch's own matches, so the candidate
            # tower runs once per batch row plus once per hard negative, not per pair.
            pool = [targets]
            rows = [torch.arange(n)[:, None]]
            if hard_t is not None and n_hard:
                if mined:
                    hard = hard_t[ids]
                else:
                    cols = torch.randint(hard_t.shape[1], (n, n_hard), generator=gen)
                    hard = hard_t[ids].gather(1, cols)
                pool.append(hard.reshape(-1))
                rows.append(n + torch.arange(n * n_hard).view(n, n_hard))
            if n_random:
                rows.append(torch.randint(n, (n, n_random), generator=gen))
            pool, rows = torch.cat(pool), torch.cat(rows, 1)
            # A sampled "negative" can be the query's own match (another caption of the
            # same image, or a hard list that contains it); it then counts as a positive.
            # A mined list shorter than n_negatives is padded with -1: out of the softmax.
            listed = pool[rows]
            positive = listed == targets[:, None]
            enc_c = tuple(t[rows] for t in net.encode_candidates(c_t[pool.clamp(min=0)]))
            scores = net.pair_scores(net.encode_queries(q_t[ids]), enc_c)
            scores = scores.masked_fill(listed < 0, float("-inf"))
            return multi_positive_nce(scores, positive, 1)

        return self._train(q.shape[0], batch_size, epochs, lr, weight_decay, step_loss,
                           show_progress_bar)

    def _hard_negatives(self, negatives, cascade, cascade_queries, n_negatives,
                        hard_negatives, n_hard, n_random, q2c, n_candidates):
        """(tensor of hard negative ids or None, how many per list, and for mined lists the
        training queries kept, else None)."""
        if not isinstance(negatives, str):
            raise TypeError(f"negatives must be a str, got {type(negatives).__name__}")
        check_choice(negatives, "negatives", NEGATIVES)
        n_hard = check_int(n_hard, "n_hard", minimum=0)
        if negatives == "cascade":
            if hard_negatives is not None:
                raise ValueError("hard_negatives is for negatives='random'; with "
                                 "negatives='cascade' the cascade mines them")
            if cascade is None or cascade_queries is None:
                raise ValueError("negatives='cascade' needs cascade=... (searching the "
                                 "candidates) and cascade_queries=(query_codes, "
                                 "query_vectors) of the training queries")
            mined, found = cascade_negatives(cascade, cascade_queries, q2c, n_negatives,
                                             n_candidates=n_candidates)
            if found.sum() < 2:
                raise ValueError(
                    f"the cascade found the match of {found.sum()} of {found.size} training "
                    f"queries in its top {n_negatives + 1}; fit needs at least 2 (is "
                    f"cascade searching the candidates, in order?)")
            return self._torch.from_numpy(mined[found]), mined.shape[1], found
        if cascade is not None or cascade_queries is not None:
            raise ValueError("cascade and cascade_queries only apply with "
                             "negatives='cascade'")
        has_hard = hard_negatives is not None
        if n_random + (n_hard if has_hard else 0) < 1:
            raise ValueError(
                f"fit needs at least one negative per query: n_random={n_random}, "
                f"n_hard={n_hard}, hard_negatives {'given' if has_hard else 'None'}")
        if not has_hard:
            return None, n_hard, None
        hard = hard_negatives if isinstance(hard_negatives, np.ndarray) \
            else np.asarray(hard_negatives)
        if hard.dtype.kind not in "iu":
            raise TypeError(f"hard_negatives must be an integer array, got dtype "
                            f"{hard.dtype}")
        if hard.ndim != 2 or hard.shape[0] != q2c.shape[0] or hard.shape[1] == 0:
            raise ValueError(f"hard_negatives must have shape ({q2c.shape[0]}, m) with "
                             f"m >= 1, got shape {hard.shape}")
        if hard.min() < 0 or hard.max() >= n_candidates:
            raise ValueError(f"hard_negatives values must index candidates rows "
                             f"(0 <= value < {n_candidates}), got range "
                             f"[{hard.min()}, {hard.max()}]")
        return self._torch.from_numpy(hard.astype(np.int64)), n_hard, None

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

    def for_candidates(self, candidate_features, *, batch_size=4096):
        """A cascade stage 3 over a fixed set of candidates: ``rerank(queries,
        candidate_ids)`` (the :class:`cofisearch.Cascade` ``reranker`` contract).

        ``candidate_features`` (n, candidate_dim) are the database items in index order.
        Their tokens, keys and values are computed here, once, as an image encoder's output
        is computed once per image; each call then computes only the queries' tokens and
        the per-pair attention and MLP, the part of a fusion model that cannot be cached.
        The scores equal :meth:`score` on the gathered features (to float rounding).
        """
        return _CandidateCache(self, candidate_features, batch_size)

    def _encode_candidates(self, candidates, batch_size):
        self._require_fitted()
        c = check_features(candidates, "candidate_features", self.candidate_dim)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        torch = self._torch
        parts = []
        with torch_scope(torch, self.seed, self.num_threads), torch.inference_mode():
            for start in range(0, c.shape[0], batch_size):
                chunk = as_tensor(torch, c[start : start + batch_size])
                if not torch.isfinite(chunk).all():
                    raise ValueError("candidate_features contains NaN or infinite values")
                parts.append(self.net.encode_candidates(chunk))
            if not parts:
                parts.append(self.net.encode_candidates(
                    torch.zeros((0, self.candidate_dim))))
            return tuple(torch.cat(t) for t in zip(*parts))

    def __repr__(self):
        return (f"CrossAttentionReranker(query_dim={self.query_dim}, "
                f"candidate_dim={self.candidate_dim}, d_model={self.d_model}, "
                f"n_tokens={self.n_tokens}, candidate_tokens={self.candidate_tokens}, "
                f"n_heads={self.n_heads})")


class _CandidateCache:
    """What :meth:`CrossAttentionReranker.for_candidates` returns: the candidates'
    encodings, computed once, and the per-pair scoring of a cascade's stage 3."""

    def __init__(self, model, candidate_features, batch_size):
        started = time.perf_counter()
        self._model = model
        with model._torch.inference_mode():
            self._packed = model.net.pack_candidates(
                model._encode_candidates(candidate_features, batch_size))
        self.n_candidates = int(self._packed[0].shape[0])
        #: Seconds spent encoding the candidates (the cost a cascade pays at index time).
        self.encode_seconds = time.perf_counter() - started

    def __repr__(self):
        return f"<{self._model!r} over {self.n_candidates} cached candidates>"

    def __call__(self, queries, candidate_ids, *, batch_size=256):
        """Scores float32 (nq, c) of queries (nq, query_dim) against candidate ids (nq, c);
        ``-1`` (padding) scores as candidate 0 and is meant to be ignored."""
        model = self._model
        q = check_features(queries, "queries", model.query_dim)
        ids = candidate_ids if isinstance(candidate_ids, np.ndarray) \
            else np.asarray(candidate_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"candidate_ids must be an integer array, got dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[0] != q.shape[0]:
            raise ValueError(f"candidate_ids must have shape ({q.shape[0]}, c) to match "
                             f"queries {q.shape}, got shape {ids.shape}")
        if ids.size and (ids.min() < -1 or ids.max() >= self.n_candidates):
            raise ValueError(f"candidate_ids must be -1 (padding) or index the "
                             f"{self.n_candidates} cached candidates, got range "
                             f"[{ids.min()}, {ids.max()}]")
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        torch, net = model._torch, model.net
        out = np.empty(ids.shape, dtype=np.float32)
        if not out.size:
            return out
        # Queries are encoded batch_size at a time (the per-query work amortises its
        # call overhead); the pairs run in blocks of about _PAIR_BLOCK, whose
        # intermediates stay in cache.
        pair_rows = max(1, _PAIR_BLOCK // ids.shape[1])
        with torch_scope(torch, model.seed, model.num_threads), torch.inference_mode():
            for start in range(0, q.shape[0], batch_size):
                qb = as_tensor(torch, q[start : start + batch_size])
                if not torch.isfinite(qb).all():
                    raise ValueError("queries contains NaN or infinite values")
                side = net.query_side(net.encode_queries(qb))
                for sub in range(0, qb.shape[0], pair_rows):
                    rows = torch.from_numpy(np.maximum(
                        ids[start + sub : start + min(sub + pair_rows, qb.shape[0])],
                        0).astype(np.int64))
                    # index_select on rows of the flat cache gathers at copy speed;
                    # tensor indexing of the (n, S, 3 d) cache ran at a fraction of it.
                    flat = rows.reshape(-1)
                    packed = [t.flatten(1).index_select(0, flat).view(
                        *rows.shape, *t.shape[1:]) for t in self._packed]
                    out[start + sub : start + sub + rows.shape[0]] = net.fast_scores(
                        [x[sub : sub + pair_rows] for x in side], *packed).numpy()
        return out

"""The study's Table 6 on cofisearch: what a fusion reranker costs over all pairs and
behind a cascade, and what it buys.

FiCo-ITR's Table 6 times query-time attention at 1K/5K and 10K/50K images/captions:
fusion rerankers bounded by a first stage's k = 128 candidates grow x10.2 (BLIP-2) and
x10.0 (X-VLM), linear in the queries; cross-attention over every pair grows x64 (IMRAM)
and x73 (SCAN), towards the x100 of n x m. :func:`rerank_cost` measures the same two
regimes for :class:`cofisearch.encoders.CrossAttentionReranker` on the synthetic data:

- all pairs, O(n x m): every caption query against every image; timed whole up to
  ``max_pairs`` pairs and otherwise on a slice of the queries, the rest extrapolated
  (the table says which);
- cascade-bounded, O(n x k): a Hamming screen (ITQ codes of the dual encoder's
  embeddings), the exact float rerank, then the reranker on the best ``n_rerank``,
  with each stage's time per query from the cascade's own timings;

with the encoding time beside them (the dual encoder over every item, and the reranker's
cached candidate encodings) and the growth factor from one scale to the next next to the
study's. :func:`rerank_quality` gives R@1/5/10 of the dual encoder alone, the cascade and
the cascade with the reranker at each ``n_rerank``, the reranker trained on negatives
mined with the cascade itself.

:func:`run_table6` runs both at a named scale (``tiny`` in seconds for CI; ``quick``,
``default`` and ``full`` train on 5,000 images and time 1K/5K and 10K/50K, ``full`` adds
100K/500K); ``bench/rerank_scale.py`` writes its tables to ``bench/results``.

Direction: text to image (queries are captions, candidates images), the pairing the
reranker is trained on; at 1K/5K there are 5,000 queries and 1,000 candidates. Nothing
here depends on a trained model being good: the timings are those of the model's shape.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import datasets, metrics
from .._checks import check_choice
from .._index import BinaryIndex, FloatIndex
from ..cascade import Cascade
from .data import SEED
from .measure import CLOCKS, compare, measure
from .plans import check_scale

__all__ = [
    "MODEL_SIZES",
    "STUDY_TABLE6",
    "TABLE6_SIZES",
    "RerankModels",
    "RerankTable",
    "rerank_cost",
    "rerank_quality",
    "run_table6",
    "train_rerank_models",
]

# Table 6 of the study (seconds for the whole query set), as printed.
STUDY_TABLE6 = {
    "BLIP-2 (fusion rerank, k=128)": {(1_000, 5_000): 2376.89, (10_000, 50_000): 24314.27},
    "X-VLM (fusion rerank, k=128)": {(1_000, 5_000): 370.48, (10_000, 50_000): 3707.37},
    "IMRAM (cross-attention, all pairs)": {(1_000, 5_000): 190.67, (10_000, 50_000): 12200.28},
    "SCAN (cross-attention, all pairs)": {(1_000, 5_000): 17.51, (10_000, 50_000): 1285.34},
}

# Keyword arguments of rerank_cost per named scale (bench/rerank_scale.py, and the
# sizes `cofisearch bench` is meant to use). ``scales`` are (images, captions) pairs.
TABLE6_SIZES = {
    "tiny": {"scales": ((100, 500), (200, 1_000)), "n_rerank": (16, 32), "max_pairs": 20_000,
                 "max_queries": 200, "repeats": 1, "min_sample_s": 0.0},
    "quick": {"scales": ((1_000, 5_000), (10_000, 50_000)), "max_pairs": 500_000,
                  "max_queries": 2_000, "repeats": 2},
    "default": {"scales": ((1_000, 5_000), (10_000, 50_000)), "max_pairs": 1_000_000,
                    "max_queries": 2_000, "repeats": 3},
    "full": {"scales": ((1_000, 5_000), (10_000, 50_000), (100_000, 500_000)),
                 "max_pairs": 5_000_000, "max_queries": 20_000, "repeats": 3},
}


# Per named scale: train_rerank_models' arguments and rerank_quality's data.
# The reranker: 2 query tokens of width 32, 2 heads, one pooled candidate token; a cached
# pair costs 1.7 us against 3.0 with 2 candidate tokens and 6.2 at 4 x 64 with 4 heads (one
# torch thread), the only one of them inside issue 16's stage-3 budget of 5x stages 1+2.
# It trains on 20,000 images the dual encoder never saw, after the quality test split
# (images 5,000-5,999): on the dual encoder's own 5,000, whose embeddings match far better
# than new items' do, R@1 rose only +1.26 over the cascade; on 20,000 new ones, +3.5
# (bench/results/rerank_scale.variants.md).
_STUDY_MODELS = {"train_images": 5_000, "embed_dim": 128, "hidden": 256, "epochs": 4, "nbits": 128,
                     "d_model": 32, "n_tokens": 2, "candidate_tokens": 1, "n_heads": 2,
                     "rerank_hidden": 32, "rerank_epochs": 2, "rerank_images": 20_000,
                     "rerank_start": 6_000}
MODEL_SIZES = {
    "tiny": {"train_images": 300, "embed_dim": 32, "hidden": 32, "epochs": 1, "nbits": 32,
                 "candidate_tokens": 1, "rerank_epochs": 1, "rerank_images": 300,
                 "rerank_start": 400},
    "quick": _STUDY_MODELS,
    "default": _STUDY_MODELS,
    "full": _STUDY_MODELS,
}
QUALITY_SIZES = {"tiny": {"n_images": 400, "n_test": 100},
                 **{s: {"n_images": 6_000, "n_test": 1_000} for s in ("quick", "default", "full")}}


def run_table6(scale="default", *, quality=True, torch_threads=1, num_threads=1):
    """The whole experiment at a named scale: ``(models, tables)``, the tables being
    :func:`rerank_quality` (unless ``quality=False``) then :func:`rerank_cost`."""
    check_scale(scale)
    models = train_rerank_models(**MODEL_SIZES[scale], torch_threads=torch_threads,
                                 num_threads=num_threads)
    tables = []
    if quality:
        tables.append(rerank_quality(models, **QUALITY_SIZES[scale], num_threads=num_threads))
    tables.append(rerank_cost(models, **TABLE6_SIZES[scale], num_threads=num_threads))
    return models, tables


@dataclass
class RerankModels:
    """The models of the experiment: dual encoder, ITQ codes of its embeddings, reranker."""

    dual: object
    itq: object
    reranker: object
    train_seconds: float
    config: dict


@dataclass
class RerankTable:
    """Rows (flat dicts), the columns to show, notes; ``to_markdown()`` renders them."""

    title: str
    columns: list
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_markdown(self):
        lines = [f"### {self.title}", ""]
        if self.config:
            lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in self.config.items()), ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        for row in self.rows:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in self.columns) + " |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self):
        return {"title": self.title, "columns": self.columns, "rows": self.rows,
                "notes": self.notes, "config": self.config}


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def train_rerank_models(train_images=5_000, *, embed_dim=128, hidden=256, epochs=4,
                        nbits=128, n_candidates=256, n_rerank=32, d_model=64, n_tokens=4,
                        n_heads=4, candidate_tokens=None, rerank_hidden=64,
                        rerank_epochs=3, rerank_images=None,
                        rerank_start=None, seed=SEED, torch_threads=1, num_threads=1):
    """Trains the dual encoder on the first ``train_images`` synthetic images (5
    captions each), fits ITQ codes on its embeddings, and trains the reranker on the
    ``rerank_images`` images from ``rerank_start`` on (the same generator, images the
    dual encoder never saw; by default the dual encoder's own), with negatives mined by
    a cascade over their embeddings (``n_rerank - 1`` per caption, the lists it will
    rerank).

    A reranker learns the first stage's mistakes from lists like those it will rerank;
    on its own training pairs a dual encoder makes fewer and different ones.
    """
    from ..encoders import CrossAttentionReranker, DualEncoder, ITQBinarizer

    started = time.perf_counter()
    train = datasets.make_paired(train_images, 5, seed=seed, n_test=0).train
    d_img, d_txt = train.image_features.shape[1], train.text_features.shape[1]
    dual = DualEncoder(d_img, d_txt, embed_dim=embed_dim, hidden=hidden, seed=seed,
                       num_threads=torch_threads)
    dual.fit(train.image_features, train.text_features,
             caption_to_image=train.caption_to_image, epochs=epochs)
    img = dual.encode_image(train.image_features)
    txt = dual.encode_text(train.text_features)
    itq = ITQBinarizer(nbits, seed=seed).fit(np.concatenate([img, txt[::5]]))
    if rerank_start is not None:
        # The data is a pure function of the seed and the image index: images from
        # rerank_start on are new to the dual encoder and to any test split before it.
        count = train_images if rerank_images is None else rerank_images
        fresh = next(datasets.iter_paired(rerank_start + count, 5, seed=seed,
                                          start=rerank_start, chunk_size=count))
        img = dual.encode_image(fresh.image_features)
        txt = dual.encode_text(fresh.text_features)
        c2i = np.repeat(np.arange(count, dtype=np.int64), 5)
    else:
        c2i = train.caption_to_image
    cascade = _cascade(itq.transform(img), img, n_candidates)
    reranker = CrossAttentionReranker(embed_dim, embed_dim, d_model=d_model,
                                      n_tokens=n_tokens, n_heads=n_heads,
                                      candidate_tokens=candidate_tokens,
                                      hidden=rerank_hidden, seed=seed,
                                      num_threads=torch_threads)
    reranker.fit(txt, img, query_to_candidate=c2i, negatives="cascade",
                 cascade=cascade, cascade_queries=(itq.transform(txt), txt),
                 n_negatives=n_rerank - 1, n_random=0, epochs=rerank_epochs)
    config = {"train_images": train_images, "embed_dim": embed_dim, "hidden": hidden,
                  "epochs": epochs, "nbits": nbits, "train_n_candidates": n_candidates,
                  "train_n_rerank": n_rerank, "d_model": d_model, "n_tokens": n_tokens,
                  "candidate_tokens": reranker.candidate_tokens,
                  "n_heads": n_heads, "rerank_hidden": rerank_hidden, "rerank_epochs": rerank_epochs,
                  "rerank_images": img.shape[0],
                  "rerank_start": 0 if rerank_start is None else rerank_start,
                  "seed": seed, "torch_threads": torch_threads, "search_threads": num_threads}
    return RerankModels(dual, itq, reranker, time.perf_counter() - started, config)


def _cascade(codes, vectors, n_candidates, reranker=None, n_rerank=None):
    coarse = BinaryIndex(8 * codes.shape[1])
    coarse.add(codes)
    fine = FloatIndex(vectors.shape[1], metric="cosine")
    fine.add(vectors)
    return Cascade(coarse, fine, n_candidates=n_candidates, reranker=reranker,
                   n_rerank=n_rerank)


def _encode(models, n_images, seed):
    """Embeddings, codes and the reranker's cache of one scale, and the seconds each took."""
    data = datasets.make_paired(n_images, 5, seed=seed, n_test=0).train
    t0 = time.perf_counter()
    img = models.dual.encode_image(data.image_features)
    txt = models.dual.encode_text(data.text_features)
    t1 = time.perf_counter()
    img_codes, txt_codes = models.itq.transform(img), models.itq.transform(txt)
    t2 = time.perf_counter()
    cache = models.reranker.for_candidates(img)
    return {"img": img, "txt": txt, "img_codes": img_codes, "txt_codes": txt_codes, "cache": cache,
                "c2i": data.caption_to_image, "dual_s": t1 - t0, "codes_s": t2 - t1,
                "cache_s": cache.encode_seconds}


def rerank_cost(models, *, scales=((1_000, 5_000), (10_000, 50_000)),
                n_rerank=(16, 32, 64, 128), n_candidates=256, max_pairs=5_000_000,
                max_queries=50_000, repeats=3, num_threads=1, clock="cpu", min_sample_s=0.2,
                seed=SEED + 1):
    """The Table 6 analogue: a :class:`RerankTable` with one row per scale and regime.

    ``scales`` are (images, captions) pairs (captions = 5 x images); queries are the
    captions. All pairs: timed on the first ``max_pairs // images`` queries (all of them
    when they fit), then scaled to every query. Cascade-bounded: the first
    ``max_queries`` queries go through the cascade at each ``n_rerank`` (screen depth
    ``n_candidates``); stages 1+2 and stage 3 are timed in turn, sample by sample, so
    that both see the same load (medians of ``repeats`` samples of at least
    ``min_sample_s`` seconds each), and scaled to every query. Encoding: the dual encoder over every image
    and caption, the ITQ codes, and the reranker's candidate cache, each timed once.
    """
    check_choice(clock, "clock", CLOCKS)
    n_rerank = tuple(sorted(set(n_rerank)))
    if max(n_rerank) > n_candidates:
        raise ValueError(f"n_rerank must be <= n_candidates={n_candidates}, got {n_rerank}")
    rows = []
    for n_img, n_cap in scales:
        if n_cap != 5 * n_img:
            raise ValueError(f"scales are (images, captions) with 5 captions per image, "
                             f"got {(n_img, n_cap)}")
        enc = _encode(models, n_img, seed)
        label = f"{_short(n_img)}/{_short(n_cap)}"
        encoding = enc["dual_s"] + enc["codes_s"] + enc["cache_s"]
        base = {"scale": label, "images": n_img, "queries": n_cap, "encode_s": encoding,
                    "cache_s": enc["cache_s"]}

        # All pairs: each query against every image, in blocks of candidates so that
        # the gathered encodings stay small.
        m = n_img
        n_q = max(1, min(n_cap, max_pairs // m))
        all_ids = np.broadcast_to(np.arange(m, dtype=np.int64), (n_q, m))
        batch = max(1, 8192 // m)
        timing = measure(lambda cache=enc["cache"], q=enc["txt"][:n_q], ids=all_ids, b=batch:
                         cache(q, ids, batch_size=b),
                         repeat=repeats, min_sample_s=0.0)
        per_q = {c: timing.value(c) / n_q for c in CLOCKS}
        rows.append(dict(base, regime="all pairs", k="all", pairs=n_cap * m,
                         rerank_s=per_q[clock] * n_cap, rerank_us_q=1e6 * per_q[clock],
                         rerank_wall_us_q=1e6 * per_q["wall"],
                         stages12_us_q=None, stages12_wall_us_q=None, ratio=None,
                         timed="whole" if n_q == n_cap else f"{n_q} queries, extrapolated"))

        # Cascade-bounded: stages 1+2 as Cascade.search runs them (screen, then the float
        # rerank keeping n_rerank), then the reranker on what they kept, timed apart with
        # the same timer (CPU time is steady on a shared machine; the wall clock is kept),
        # their samples interleaved: the ratio of two timings taken minutes apart moved
        # with the other sessions' load (stages 1+2 at 11-17 us a query in one run).
        n_s = min(n_cap, max_queries)
        qc, qv = enc["txt_codes"][:n_s], enc["txt"][:n_s]
        first = _cascade(enc["img_codes"], enc["img"], n_candidates)
        for depth in n_rerank:
            kept = first.search(qc, qv, depth, num_threads=num_threads).ids
            timed = compare({
                "stages12": lambda c=first, a=qc, b=qv, d=depth:
                    c.search(a, b, d, num_threads=num_threads),
                "stage3": lambda cache=enc["cache"], q=qv, ids=kept: cache(q, ids),
            }, repeat=repeats, min_sample_s=min_sample_s)
            t12, t3 = timed["stages12"], timed["stage3"]
            s12 = {c: t12.value(c) / n_s for c in CLOCKS}
            s3 = {c: t3.value(c) / n_s for c in CLOCKS}
            rows.append(dict(base, regime="cascade-bounded", k=depth, pairs=n_cap * depth,
                             rerank_s=s3[clock] * n_cap, rerank_us_q=1e6 * s3[clock],
                             rerank_wall_us_q=1e6 * s3["wall"],
                             stages12_us_q=1e6 * s12[clock],
                             stages12_wall_us_q=1e6 * s12["wall"],
                             ratio=s3[clock] / s12[clock],
                             timed="whole" if n_s == n_cap
                             else f"{n_s} queries, extrapolated"))
    _add_growth(rows)
    table = RerankTable(
        "Table 6 analogue: reranker time, all pairs against cascade-bounded",
        ["scale", "regime", "k", "pairs", "rerank_s", "rerank_us_q", "stages12_us_q",
         "ratio", "growth", "study growth", "encode_s", "timed"],
        rows,
        config=dict(models.config, n_candidates=n_candidates, max_pairs=max_pairs,
                    max_queries=max_queries, repeats=repeats, clock=clock,
                    min_sample_s=min_sample_s),
    )
    table.notes += [
        ("rerank_s: reranker seconds for every caption query of the scale; rerank_us_q: "
         "per query; stages12_us_q: the cascade's Hamming screen and float rerank per "
         "query; ratio: stage 3 over stages 1+2 (all by the clock in the settings; the "
         "JSON rows also hold the wall-clock figures); encode_s: dual encoder over every item, "
         "ITQ codes and the reranker's cached candidate encodings (timed once)."),
        ("growth: rerank_s over the same regime (and k) at the previous scale; the "
         "study's: " + _study_growth_text() + "."),
        ("Candidate encodings are cached once per image (for_candidates), as a fusion "
         "model's image encoder output is; only the per-pair attention and MLP run per "
         "pair, as batched matrix products over each query's list."),
    ]
    return table


def _short(n):
    return f"{n // 1000}K" if n % 1000 == 0 else str(n)


def _study_growth_text():
    parts = []
    for name, times in STUDY_TABLE6.items():
        a, b = times[(1_000, 5_000)], times[(10_000, 50_000)]
        parts.append(f"{name.split(' (')[0]} x{b / a:.1f}")
    return ", ".join(parts)


def _add_growth(rows):
    previous = {}
    for row in rows:
        key = (row["regime"], row["k"])
        if key in previous:
            prev = previous[key]
            row["growth"] = f"x{row['rerank_s'] / prev['rerank_s']:.1f}"
            ideal = row["pairs"] / prev["pairs"]
            row["study growth"] = (
                f"x{ideal:.0f} ideal; IMRAM x64, SCAN x73" if row["regime"] == "all pairs"
                else f"x{ideal:.0f} ideal; BLIP-2 x10.2, X-VLM x10.0")
        previous[key] = row


def rerank_quality(models, *, n_images=6_000, n_test=1_000, n_rerank=(16, 32, 64, 128),
                   n_candidates=256, num_threads=1):
    """R@1/5/10 (text to image, %) on the test split of ``make_paired(n_images, seed)``
    with ``models``' seed (images the models never saw when ``n_images - n_test`` is
    their ``train_images``): the dual encoder alone (exhaustive cosine), the cascade
    (ITQ screen of ``n_candidates``, exact rerank) and the cascade with the reranker on
    its best ``n_rerank``. Returns a :class:`RerankTable`."""
    seed = models.config["seed"]
    cfg = models.config
    first, stop = cfg.get("rerank_start", 0), cfg.get("rerank_start", 0) + cfg.get(
        "rerank_images", cfg["train_images"])
    if first < n_images and stop > n_images - n_test:
        raise ValueError(f"the reranker trained on images [{first}, {stop}), which overlap "
                         f"the test split [{n_images - n_test}, {n_images})")
    test = datasets.make_paired(n_images, 5, seed=seed, n_test=n_test).test
    img = models.dual.encode_image(test.image_features)
    txt = models.dual.encode_text(test.text_features)
    img_codes, txt_codes = models.itq.transform(img), models.itq.transform(txt)
    c2i = test.caption_to_image
    ks = (1, 5, 10)

    def quality(ids):
        found = metrics.ranking_metrics(ids, c2i, direction="t2i", ks=ks, map_at=())
        return {f"R@{k}": found[f"R@{k}"] for k in ks}

    rows = []
    fine = FloatIndex(img.shape[1], metric="cosine")
    fine.add(img)
    rows.append(dict(method="dual encoder (exhaustive cosine)",
                     **quality(fine.search(txt, 10, num_threads=num_threads).ids)))
    cascade = _cascade(img_codes, img, n_candidates)
    rows.append(dict(method=f"cascade ({models.itq.nbits}-bit ITQ screen of {n_candidates}, "
                     f"float rerank)",
                     **quality(cascade.search(txt_codes, txt, 10,
                                              num_threads=num_threads).ids)))
    cache = models.reranker.for_candidates(img)
    for depth in sorted(set(n_rerank)):
        staged = _cascade(img_codes, img, n_candidates, reranker=cache, n_rerank=depth)
        found = staged.search(txt_codes, txt, 10, num_threads=num_threads)
        rows.append(dict(method=f"cascade + reranker, n_rerank={depth}",
                         **quality(found.ids)))
    base = rows[1]["R@1"]
    for row in rows:
        row["R@1 vs cascade"] = row["R@1"] - base
    table = RerankTable(
        "Stage 3 quality: text to image R@K (%) on held-out synthetic pairs",
        ["method", "R@1", "R@5", "R@10", "R@1 vs cascade"], rows,
        config=dict(models.config, n_images=n_images, n_test=n_test,
                    n_candidates=n_candidates),
    )
    best = max(rows[2:], key=lambda r: r["R@1"], default=None)
    if best is not None:
        table.notes.append(
            f"Best stage 3: {best['method']}, R@1 {best['R@1 vs cascade']:+.2f} points over "
            f"the cascade (issue 16 asks for +2 at n_rerank=32). The reranker scores the "
            f"dual encoder's embeddings with its cosine fused in, trained on "
            f"{_rerank_data(cfg)} with the {cfg['train_n_rerank'] - 1} best non-matching "
            f"images the cascade returns for each of their captions; the cascade's own "
            f"score (the cosine) enters with learned weight "
            f"{_cosine_weight(models.reranker):.1f}.")
    return table


def _rerank_data(cfg):
    start, count = cfg.get("rerank_start", 0), cfg.get("rerank_images", cfg["train_images"])
    if start >= cfg["train_images"]:
        return (f"{count:,} images the dual encoder never saw (images {start:,}-"
                f"{start + count - 1:,} of the generator, after the test split)")
    return f"the dual encoder's own {count:,} training images"


def _cosine_weight(reranker):
    """The weight the reranker gives the first stage's cosine (NaN when it has none)."""
    if not reranker.input_cosine:
        return float("nan")
    return float(reranker.net.cosine_weight.detach())

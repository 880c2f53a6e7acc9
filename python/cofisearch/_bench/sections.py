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
5. :class:`Table7`: the FiCo-ITR study's Table 7 comparison, :func:`table7`, which
   ``bench/targets.py`` runs too.
6. :class:`CodeWidths`: one database size at every code width from 192 to 2048 bits,
   the widths real embeddings have (384: MiniLM's ``ubinary``; 768: BERT-base sized
   models) beside the powers of two, so that a width off the fast path shows.
7. :class:`AllVsAll`: the evaluation shape, a database searched by itself (codes and
   d = 384 floats), beside a large batch of the same width.
"""

from __future__ import annotations

import numpy as np

from .. import datasets
from .._index import BinaryIndex, FloatIndex
from .._reference import unit_rows
from ..cascade import Cascade
from ..encoders import RandomRotationBinarizer
from .contenders import BINARY, FLOAT, open_engines
from .data import SEED, make_codes, make_vectors
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
    "Table7",
    "table7",
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
        return 2

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

"""IVFBinaryIndex at scale: build time, search time and recall@10 against exhaustive
search and faiss's IndexBinaryIVF, on make_paired-style cross-modal data.

Issue 13, steps 1 and 2: the baseline the later steps (asymmetric screening, the recall
tuner) improve on. The data is :func:`cofisearch.datasets.iter_paired` with one caption
per image at ``--dim`` (256) dimensions: the database is the images' features scaled to
unit length; the queries are captions of the last images (never used for fitting),
mapped into the image space by a ridge regression fitted on the first ``--train`` pairs
(the cross-modal step an encoder makes) and scaled to unit length. Codes are 256-bit ITQ
codes of the image space (fitted on the training images); a query's code is the ITQ code
of its mapped vector. The ground truth is the exact float top-10 (``FloatIndex``).

Rows, all on the same data in this process, ``--threads`` threads each:

- ``float``: exhaustive float search (the ground truth's cost);
- ``hamming``: exhaustive ``BinaryIndex``;
- ``ivf-codes`` / ``ivf-vectors``: ``IVFBinaryIndex`` routed by the codes / by the
  vectors (``nlist`` lists), at each ``--nprobe``;
- ``faiss-ivf``: faiss ``IndexBinaryIVF`` with the same ``nlist``, at each ``nprobe``.

For each: build seconds (train + add), seconds per query for a batch of ``--queries``
and for single queries, recall@10 of its Hamming top-10 against the float top-10,
``found@10`` (the fraction of the exhaustive Hamming top-10 it returns: what the probe
loses), and for each ``--candidates`` depth C the cascade's recall@10 and time (the
screen's top C reranked exactly with the float vectors; for faiss, its ids reranked by
``FloatIndex``).

    python bench/ivf_scale.py                      # 1M images, nlist 1024
    python bench/ivf_scale.py --scale quick        # 100k images, nlist 256
    python bench/ivf_scale.py --scale tiny         # seconds: every path, checked
    python bench/ivf_scale.py --json ivf.json      # raw numbers too
    python bench/ivf_scale.py --asymmetric --images 200000 --nlist 1024   # step 3

``--asymmetric`` (issue 13, step 3) compares whole searches instead, each ending in the
top-10 ids, recall@10 against the float top-10 and ms per query for the batch and for
single queries, at each of ``--thread-list`` (default 2 and 1) in the same run:

- ``sym-ivf``: the IVF cascade as it was (``ivf-vectors`` screen of C, exact rerank), at
  each ``--nprobe`` x ``--candidates``;
- ``asym-ivf`` / ``asym-ivf-256``: :class:`~cofisearch.Cascade` over an
  ``IVFBinaryIndex(screen="asymmetric")`` with the default 512-bit (and 256-bit) screen
  codes, same grid; ``asym-flat``: the same screen with one list (no probe: every item);
- faiss ``rabitq-refine`` (IndexIVFRaBitQ, 1-bit, 4-bit queries, in IndexRefineFlat with
  k_factor C / 10), ``ivf-flat`` (IndexIVFFlat) at each ``--nprobe``, ``hnsw-flat``
  (IndexHNSWFlat, M 32) at each ``--ef``, all inner product.

It ends with, for recall targets 0.95 and 0.99, the fastest setting of each contender
that reaches it and the ratio of each to the fastest asymmetric cascade. (The screen's
kernels agree bit for bit at every SIMD level, tests/test_asym.py; the routing's float
scores, like every float search's, may round differently from level to level.)

Times are medians of ``--repeats`` samples after a warm-up (``cofisearch._bench.measure``).
Checked on every run (a failure ends with status 1): each IVF index probing every list
returns exactly the exhaustive ``BinaryIndex`` result, and faiss probing every list finds
the same distances.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import cofisearch
from cofisearch import datasets
from cofisearch._bench.data import SEED
from cofisearch._bench.machine import faiss_available, format_machine, machine_info
from cofisearch._bench.measure import measure
from cofisearch._bench.plans import SCALES
from cofisearch._reference import unit_rows
from cofisearch.encoders import ITQBinarizer

_LARGE = {"images": 1_000_000, "train": 20_000, "queries": 1_000, "nlist": 1024,
          "nprobe": "1,4,16,64", "candidates": "100,1000", "repeats": 3, "single": 100,
          "dim": 256, "nbits": 256}
SIZES = {
    "tiny": {"images": 3_000, "train": 600, "queries": 20, "nlist": 16, "nprobe": "1,4,16",
             "candidates": "10,50", "repeats": 1, "single": 5, "dim": 64, "nbits": 64},
    "quick": {**_LARGE, "images": 100_000, "nlist": 256},
    "default": _LARGE,
    "full": _LARGE,
}
K = 10


def make_data(args):
    """(database vectors, query vectors, database codes, query codes), all unit/ITQ."""
    n, dim = args.images, args.dim
    db = np.empty((n, dim), np.float32)
    train_text = np.empty((args.train, dim), np.float32)
    query_text = np.empty((args.queries, dim), np.float32)
    first_query = n - args.queries
    for chunk in datasets.iter_paired(n, 1, seed=args.seed, chunk_size=16_384, d_image=dim,
                                      d_text=dim):
        a, b = chunk.start, chunk.stop
        db[a:b] = chunk.image_features
        if a < args.train:
            train_text[a:min(b, args.train)] = chunk.text_features[: min(b, args.train) - a]
        if b > first_query:
            lo = max(a, first_query)
            query_text[lo - first_query : b - first_query] = chunk.text_features[lo - a :]
    # Ridge from text features to image features, then both sides on the unit sphere.
    x, y = train_text.astype(np.float64), db[: args.train].astype(np.float64)
    gram = x.T @ x
    w = np.linalg.solve(gram + 1e-2 * np.trace(gram) / dim * np.eye(dim), x.T @ y)
    queries = unit_rows((query_text @ w).astype(np.float32))
    for a in range(0, n, 65_536):
        db[a : a + 65_536] = unit_rows(db[a : a + 65_536])
    itq = ITQBinarizer(args.nbits, seed=args.seed).fit(db[: args.train])
    db_codes = np.concatenate([itq.transform(db[a : a + 65_536]) for a in range(0, n, 65_536)])
    return db, queries, db_codes, itq.transform(queries)


def recall(ids, truth):
    """Mean fraction of each query's true top-10 among its returned ids."""
    return float(np.mean([np.intersect1d(a[a >= 0], t).size / t.size for a, t in zip(ids, truth)]))


def timed(fn, repeats):
    """(median seconds of a call, the result of an untimed call)."""
    out = fn()
    return measure(fn, repeat=repeats, min_sample_s=0.0).median, out


def per_single_query(fn, queries, repeats):
    """Median seconds per query of ``fn(i)`` called for each query index in turn."""
    return measure(lambda: [fn(i) for i in range(queries)], repeat=repeats,
                   min_sample_s=0.0).median / queries


class Rows:
    def __init__(self):
        self.rows = []

    def add(self, **row):
        self.rows.append(row)
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in row.items())
        print(shown, flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def run_screen(rows, name, *, build_s, screen, nprobes, fine, queries, q_vectors, truth,
               exact10, depths, args):
    """Times ``screen(nprobe, k, i)`` (i: a query index, or None for the batch) for top-10
    and, reranked by ``fine``, for each depth."""
    nq = queries
    for nprobe in nprobes:
        t10, (_, ids10) = timed(lambda nprobe=nprobe: screen(nprobe, K, None), args.repeats)
        single = per_single_query(lambda i, nprobe=nprobe: screen(nprobe, K, i),
                                  min(args.single, nq), args.repeats)
        row = {"index": name, "nprobe": nprobe, "build_s": build_s,
               "batch_ms_per_query": 1e3 * t10 / nq, "single_ms": 1e3 * single,
               "recall10": recall(ids10, truth), "found10": recall(ids10, exact10)}
        for c in depths:
            def cascade(c=c, nprobe=nprobe):
                _, cand = screen(nprobe, c, None)
                return fine.search(q_vectors, K, candidates=cand, num_threads=args.threads)
            tc, (_, ids) = timed(cascade, args.repeats)
            row[f"cascade{c}_recall10"] = recall(ids, truth)
            row[f"cascade{c}_ms_per_query"] = 1e3 * tc / nq
        rows.add(**row)


def _timed_search(rows, name, setting, build_s, search, threads_list, args, truth, **extra):
    """One row per thread count: ``search(threads, i)`` returns top-10 ids (i: a query
    index, or None for the batch)."""
    for threads in threads_list:
        t, ids = timed(lambda threads=threads: search(threads, None), args.repeats)
        single = per_single_query(lambda i, threads=threads: search(threads, i),
                                  min(args.single, args.queries), args.repeats)
        rows.add(index=name, setting=setting, threads=threads, build_s=build_s,
                 recall10=recall(ids, truth), batch_ms_per_query=1e3 * t / args.queries,
                 single_ms=1e3 * single, **extra)


def run_asymmetric(rows, args, db, qv, db_codes, qc, fine, nprobes, depths):
    """The rows of ``--asymmetric``; returns the problems found."""
    threads_list = [int(v) for v in args.thread_list.split(",")]
    problems = []
    truth = fine.search(qv, K, num_threads=max(threads_list)).ids

    def q_of(a, i):
        return a if i is None else a[i : i + 1]

    def build_ivf(nlist, **kw):
        index = cofisearch.IVFBinaryIndex(args.nbits, nlist, seed=args.seed, **kw)
        t0 = time.perf_counter()
        index.train(db_codes, db, num_threads=max(threads_list))
        index.add(db_codes, db, num_threads=max(threads_list))
        return index, time.perf_counter() - t0

    def coarse_bytes(index):
        lists = index._state[1]
        return sum(a.nbytes for a in lists.rows())

    ours = [("sym-ivf", args.nlist, {}), ("asym-ivf", args.nlist, {"screen": "asymmetric"}),
            ("asym-ivf-256", args.nlist, {"screen": "asymmetric", "screen_bits": max(64, -(-args.dim // 64) * 64)}),
            ("asym-flat", 1, {"screen": "asymmetric"})]
    for name, nlist, kw in ours:
        index, build = build_ivf(nlist, **kw)
        print(f"{name}: trained and added in {build:.1f} s; coarse stage {coarse_bytes(index) / 2**20:.0f} MiB",
              flush=True)
        for nprobe in nprobes if nlist > 1 else [1]:
            index.nprobe = nprobe
            for c in depths:
                cascade = cofisearch.Cascade(index, fine, c)

                def search(threads, i, cascade=cascade):
                    return cascade.search(q_of(qc, i), q_of(qv, i), K, num_threads=threads).ids

                _timed_search(rows, name, f"nprobe={nprobe} C={c}", build, search, threads_list, args,
                              truth, coarse_mib=coarse_bytes(index) / 2**20)
        del index

    if faiss_available() and not args.no_faiss:
        problems += _faiss_rows(rows, args, db, qv, nprobes, depths, threads_list, truth, q_of)
    _summary(rows.rows)
    return problems


def _faiss_rows(rows, args, db, qv, nprobes, depths, threads_list, truth, q_of):
    import faiss

    faiss.omp_set_num_threads(max(threads_list))
    ip = faiss.METRIC_INNER_PRODUCT

    def build(make):
        t0 = time.perf_counter()
        index = make()
        if not index.is_trained:
            index.train(db)
        index.add(db)
        return index, time.perf_counter() - t0

    def faiss_search(index, params):
        def search(threads, i):
            faiss.omp_set_num_threads(threads)
            return index.search(q_of(qv, i), K, params=params)[1]
        return search

    rabitq, build_s = build(lambda: faiss.IndexRefineFlat(
        faiss.IndexIVFRaBitQ(faiss.IndexFlatIP(args.dim), args.dim, args.nlist, ip)))
    print(f"rabitq-refine: trained and added in {build_s:.1f} s", flush=True)
    for nprobe in nprobes:
        for c in depths:
            base = faiss.IVFRaBitQSearchParameters()
            base.nprobe, base.qb = nprobe, 4
            params = faiss.IndexRefineSearchParameters()
            params.k_factor, params.base_index_params = c / K, base
            _timed_search(rows, "rabitq-refine", f"nprobe={nprobe} C={c}", build_s,
                          faiss_search(rabitq, params), threads_list, args, truth)
    del rabitq

    ivf, build_s = build(lambda: faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, args.nlist, ip))
    print(f"ivf-flat: trained and added in {build_s:.1f} s", flush=True)
    for nprobe in nprobes:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        _timed_search(rows, "ivf-flat", f"nprobe={nprobe}", build_s, faiss_search(ivf, params),
                      threads_list, args, truth)
    del ivf

    hnsw, build_s = build(lambda: faiss.IndexHNSWFlat(args.dim, 32, ip))
    print(f"hnsw-flat: trained and added in {build_s:.1f} s; {faiss.serialize_index(hnsw).nbytes / 2**20:.0f} MiB "
          f"serialised (vectors included, {db.nbytes / 2**20:.0f} MiB of them)", flush=True)
    for ef in (int(v) for v in args.ef.split(",")):
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        _timed_search(rows, "hnsw-flat", f"ef={ef}", build_s, faiss_search(hnsw, params), threads_list,
                      args, truth)
    return []


def _summary(all_rows):
    """For each recall target and thread count: each contender's fastest setting reaching
    it (batch and single), and its time over the fastest asymmetric cascade's."""
    for target in (0.95, 0.99):
        for threads in sorted({r["threads"] for r in all_rows}, reverse=True):
            best = {}
            for r in all_rows:
                if r["threads"] != threads or r["recall10"] < target:
                    continue
                for mode in ("batch_ms_per_query", "single_ms"):
                    key = (r["index"], mode)
                    if key not in best or r[mode] < best[key][mode]:
                        best[key] = r
            print(f"recall@10 >= {target}, {threads} thread(s): fastest setting of each")
            for mode in ("batch_ms_per_query", "single_ms"):
                ours = [best[k][mode] for k in best if k[1] == mode and k[0].startswith("asym")]
                ref = min(ours) if ours else None
                for (name, m), r in sorted(best.items(), key=lambda kv: kv[1][kv[0][1]]):
                    if m != mode:
                        continue
                    ratio = f"  {r[mode] / ref:.2f}x ours" if ref else ""
                    print(f"  {mode:<19} {name:<14} {r['setting']:<18} recall {r['recall10']:.4f}  "
                          f"{r[mode]:.4g} ms{ratio}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=SCALES, default="default",
                   help="sizes: tiny (seconds, checks only), quick (100k), default and full "
                   "(1M); 256-d, 256 bits but tiny (64) (default: %(default)s)")
    for name in ("images", "train", "queries", "nlist", "repeats", "single", "dim", "nbits"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--nprobe", help="comma-separated nprobe values")
    p.add_argument("--candidates", help="comma-separated cascade depths")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for every contender (default 1)")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--asymmetric", action="store_true",
                   help="step 3: asymmetric screening against the symmetric cascade and "
                   "faiss's ANN indexes (see the module's documentation)")
    p.add_argument("--thread-list", default="2,1",
                   help="with --asymmetric: comma-separated thread counts (default %(default)s)")
    p.add_argument("--ef", default="16,32,64,128,256,512",
                   help="with --asymmetric: HNSW efSearch values (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for key, value in SIZES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    nprobes = [int(v) for v in args.nprobe.split(",")]
    depths = [int(v) for v in args.candidates.split(",")]
    threads = args.threads
    problems = []

    t0 = time.perf_counter()
    db, qv, db_codes, qc = make_data(args)
    print(f"data: {args.images} x {args.dim} unit vectors, {args.nbits}-bit ITQ codes, "
          f"{args.queries} cross-modal queries ({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = Rows()
    fine = cofisearch.FloatIndex(args.dim)
    fine.add(db)
    if args.asymmetric:
        problems += run_asymmetric(rows, args, db, qv, db_codes, qc, fine, nprobes, depths)
        return finish(rows, args, problems)
    t_float, (_, truth) = timed(lambda: fine.search(qv, K, num_threads=threads), args.repeats)
    rows.add(index="float", batch_ms_per_query=1e3 * t_float / args.queries, recall10=1.0)

    flat = cofisearch.BinaryIndex(args.nbits)
    flat.add(db_codes)
    exact10 = flat.search(qc, K, num_threads=threads).ids

    def flat_screen(nprobe, k, i):
        q = qc if i is None else qc[i : i + 1]
        return flat.search(q, k, num_threads=threads)

    run_screen(rows, "hamming", build_s=0.0, screen=flat_screen, nprobes=[0], fine=fine,
               queries=args.queries, q_vectors=qv, truth=truth, exact10=exact10, depths=depths,
               args=args)

    for routing in ("codes", "vectors"):
        index = cofisearch.IVFBinaryIndex(args.nbits, args.nlist, seed=args.seed)
        vectors = db if routing == "vectors" else None
        t0 = time.perf_counter()
        index.train(db_codes, vectors, num_threads=threads)
        index.add(db_codes, vectors, num_threads=threads)
        build = time.perf_counter() - t0
        sizes = index.list_sizes
        print(f"ivf-{routing}: trained and added in {build:.1f} s; list sizes {sizes.min()} .. "
              f"{sizes.max()} (mean {sizes.mean():.0f})", flush=True)

        def ivf_screen(nprobe, k, i, index=index, routing=routing):
            q = qc if i is None else qc[i : i + 1]
            v = None if routing == "codes" else (qv if i is None else qv[i : i + 1])
            return index.search(q, k, nprobe=nprobe, vectors=v, num_threads=threads)

        full = ivf_screen(args.nlist, K, None)
        exact = flat.search(qc, K, num_threads=threads)
        if not (np.array_equal(full.ids, exact.ids) and np.array_equal(full.distances, exact.distances)):
            problems.append(f"ivf-{routing} probing every list differs from BinaryIndex")
        run_screen(rows, f"ivf-{routing}", build_s=build, screen=ivf_screen, nprobes=nprobes,
                   fine=fine, queries=args.queries, q_vectors=qv, truth=truth, exact10=exact10,
                   depths=depths, args=args)
        del index

    if faiss_available() and not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(threads)
        quantizer = faiss.IndexBinaryFlat(args.nbits)
        ivf = faiss.IndexBinaryIVF(quantizer, args.nbits, args.nlist)
        ivf.cp.seed = args.seed
        t0 = time.perf_counter()
        ivf.train(db_codes)
        ivf.add(db_codes)
        build = time.perf_counter() - t0
        print(f"faiss-ivf: trained and added in {build:.1f} s", flush=True)

        def faiss_screen(nprobe, k, i):
            ivf.nprobe = nprobe
            return ivf.search(qc if i is None else qc[i : i + 1], k)

        d_full, _ = faiss_screen(args.nlist, K, None)
        if not np.array_equal(d_full, flat.search(qc, K, num_threads=threads).distances):
            problems.append("faiss-ivf probing every list finds other distances than BinaryIndex")
        run_screen(rows, "faiss-ivf", build_s=build, screen=faiss_screen, nprobes=nprobes,
                   fine=fine, queries=args.queries, q_vectors=qv, truth=truth, exact10=exact10,
                   depths=depths, args=args)

    return finish(rows, args, problems)


def finish(rows, args, problems):
    machine = machine_info()
    print(format_machine(machine))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("checks passed" if not problems else f"{len(problems)} checks failed")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows.rows, "problems": problems,
                       "machine": machine}, f, indent=2, default=str)
            f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

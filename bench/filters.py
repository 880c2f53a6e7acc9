"""Filtered search and removal, measured (issue 15): an ``allowed`` filter keeping 50% /
10% / 1% (and less) of the items, against the unfiltered search and against faiss's
``IDSelectorBatch`` search on the same data, in one run; and ``remove`` of 1% of the
codes.

    python bench/filters.py                       # 1M 64-bit codes, 200k 512-d floats
    python bench/filters.py --codes 100000 --floats 20000 --queries 200   # quicker

For each filter the fused scan (a row bitmap checked where a row would enter the top k),
the scan of a packed copy of the allowed rows and the gather of them are timed (the gather
only where it is close), which places the crossovers the index uses
(``cofisearch._rows.GATHER_ROWS``, ``_PACK_*``). Then ``remove`` of 1% of the codes from
a ``BinaryIndex`` and from an ``IVFBinaryIndex``. Medians of ``--repeats`` runs; nothing
is checked against a threshold here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import cofisearch
import numpy as np
from cofisearch import _rows
from cofisearch._bench.machine import format_machine, machine_info

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_KNOBS = ("GATHER_ROWS", "_GATHER_FRACTION", "PACK_BYTES", "_PACK_MOST", "_PACK_FEW",
          "PACK_QUERIES")


class forced_path:
    """Makes every filtered search scan every row with the bitmap ("scan"), scan a packed
    copy of its rows ("pack") or gather them ("gather"); "auto" keeps the index's own
    choice."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.saved = [getattr(_rows, name) for name in _KNOBS]
        if self.path in ("scan", "pack"):
            _rows.GATHER_ROWS = -1
            _rows._GATHER_FRACTION = {"binary": 1 << 62, "float": 1 << 62}
            if self.path == "scan":
                _rows.PACK_BYTES = -1
            else:
                _rows._PACK_MOST = _rows._PACK_FEW = 1.0
                _rows.PACK_BYTES = 1 << 62
        elif self.path == "gather":
            _rows.GATHER_ROWS = _rows.PACK_QUERIES = 1 << 62

    def __exit__(self, *exc):
        for name, value in zip(_KNOBS, self.saved):
            setattr(_rows, name, value)


def faiss_filtered(faiss, index, queries, k, allowed, threads):
    if faiss is None:
        return None
    faiss.omp_set_num_threads(threads)
    sel = faiss.IDSelectorBatch(allowed)
    params = faiss.SearchParameters(sel=sel)
    try:
        index.search(queries[:1], k, params=params)
    except (RuntimeError, TypeError):
        return None  # this faiss index does not take a selector
    return lambda: index.search(queries, k, params=params)


def run_kind(kind, n, width, nq, k, fractions, repeats, threads, faiss):
    rng = np.random.default_rng(0)
    if kind == "binary":
        data = rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
        queries = rng.integers(0, 256, (nq, width // 8), dtype=np.uint8)
        index = cofisearch.BinaryIndex(width)
        peer = faiss.IndexBinaryFlat(width) if faiss else None
    else:
        data = rng.standard_normal((n, width), dtype=np.float32)
        queries = rng.standard_normal((nq, width), dtype=np.float32)
        index = cofisearch.FloatIndex(width)
        peer = faiss.IndexFlatIP(width) if faiss else None
    index.add(data)
    if peer is not None:
        peer.add(data)
    base = median_time(lambda: index.search(queries, k, num_threads=threads), repeats)
    rows = []
    for frac in fractions:
        allowed = np.sort(rng.choice(n, max(1, int(frac * n)), replace=False)).astype(np.int64)
        row = {"kind": kind, "n": n, "width": width, "keep": frac, "allowed": int(allowed.size),
               "unfiltered_s": base}
        for path in ("auto", "scan", "pack", "gather"):
            if path == "gather" and allowed.size > n // 8:
                continue  # far past the crossover, and slow
            with forced_path(path):
                row[f"{path}_s"] = median_time(
                    lambda a=allowed: index.search(queries, k, allowed=a, num_threads=threads),
                    repeats)
        run = faiss_filtered(faiss, peer, queries, k, allowed, threads)
        row["faiss_s"] = median_time(run, repeats) if run else None
        row["vs_unfiltered"] = row["auto_s"] / base
        row["faiss_over_ours"] = row["faiss_s"] / row["auto_s"] if row["faiss_s"] else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_remove(n, width, repeats):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
    times = []
    for _ in range(repeats):
        index = cofisearch.BinaryIndex(width)
        index.add(data)
        gone = rng.choice(n, n // 100, replace=False)
        start = time.perf_counter()
        index.remove(gone)
        times.append(time.perf_counter() - start)
    compact = []
    for _ in range(repeats):
        start = time.perf_counter()
        index.compact()
        compact.append(time.perf_counter() - start)
        index.remove(index.ids[:: 100])
    return {"n": n, "removed": n // 100, "remove_s": statistics.median(times),
            "compact_s": statistics.median(compact)}


def run_ivf_remove(n, width, repeats):
    """An IVF index rewrites the lists that lose items at once: 1% of them (every list),
    and one item (one list, into the buffers' free room)."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
    nlist = max(1, min(1024, n // 64))
    index = cofisearch.IVFBinaryIndex(width, nlist)
    index.train(data)
    index.add(data)
    bulk, one = [], []
    for _ in range(repeats):
        ids = index.ids
        gone = rng.choice(ids, ids.size // 100, replace=False)
        start = time.perf_counter()
        index.remove(gone)
        bulk.append(time.perf_counter() - start)
        start = time.perf_counter()
        index.remove(index.ids[:1])
        one.append(time.perf_counter() - start)
    return {"n": n, "nlist": nlist, "removed": n // 100, "remove_s": statistics.median(bulk),
            "remove_one_s": statistics.median(one)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codes", type=int, default=1_000_000)
    p.add_argument("--nbits", type=int, default=64)
    p.add_argument("--floats", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--fractions", default="0.5,0.1,0.01,0.003,0.001")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    try:
        import faiss
    except ImportError:
        faiss = None
    fractions = [float(f) for f in args.fractions.split(",")]
    rows = run_kind("binary", args.codes, args.nbits, args.queries, args.k, fractions,
                    args.repeats, args.threads, faiss)
    if args.floats:
        rows += run_kind("float", args.floats, args.dim, args.queries, args.k, fractions,
                         args.repeats, args.threads, faiss)
    removal = run_remove(args.codes, args.nbits, args.repeats)
    print(json.dumps(removal), flush=True)
    ivf = run_ivf_remove(args.codes, args.nbits, args.repeats)
    print(json.dumps(ivf), flush=True)
    info = machine_info()
    command = " ".join(argv or sys.argv[1:])
    lines = ["## Filtered search and removal (issue 15)", "",
             (f"`python bench/filters.py {command}`: {args.queries} queries, k = {args.k}, "
              f"{args.threads} thread(s), SIMD level {cofisearch.simd_level()}, medians of "
              f"{args.repeats}. Times in seconds; ratios in the same run."), "",
             ("| data | keep | allowed | unfiltered | filtered (auto) | x unfiltered | fused scan "
              "| packed scan | gather | faiss IDSelectorBatch | faiss / ours |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    for r in rows:
        lines.append(
            f"| {r['n']:,} x {r['width']} {r['kind']} | {r['keep']:.1%} | {r['allowed']:,} | "
            f"{fmt(r['unfiltered_s'])} | {fmt(r['auto_s'])} | {fmt(r['vs_unfiltered'], '.2f')} | "
            f"{fmt(r.get('scan_s'))} | {fmt(r.get('pack_s'))} | {fmt(r.get('gather_s'))} | "
            f"{fmt(r['faiss_s'])} | "
            f"{fmt(r['faiss_over_ours'], '.1f')} |")
    lines += ["", (f"BinaryIndex: remove of {removal['removed']:,} of {removal['n']:,} codes: "
                   f"{removal['remove_s'] * 1e3:.2f} ms; compact: {removal['compact_s'] * 1e3:.1f} ms"),
              "", (f"IVFBinaryIndex ({ivf['nlist']} lists): remove of {ivf['removed']:,} of "
                   f"{ivf['n']:,} codes: {ivf['remove_s'] * 1e3:.1f} ms (every list rewritten); "
                   f"of one code: {ivf['remove_one_s'] * 1e3:.2f} ms (one list)"),
              "", "Machine:", "", "```", format_machine(info), "```", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "filters.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(args.out, "filters.json"), "w") as f:
        json.dump({"args": vars(args), "machine": info, "rows": rows, "remove": removal,
                   "ivf_remove": ivf}, f,
                  indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

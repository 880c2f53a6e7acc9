"""Measures the targets of issues 3 and 12 on this machine and prints them as one table.

    python bench/targets.py                # the issues' sizes (about ten minutes, ~5 GB RAM)
    python bench/targets.py --quick        # smaller float sizes and batches (a few minutes)
    python bench/targets.py --scale tiny   # seconds: every path and check, no real timing
    python bench/targets.py --json out.json --sections hamming,float
    python bench/targets.py --sections widths,shapes   # issue 12's rows alone
    python bench/targets.py --sections sublinear --sub-data debian   # issue 13 on real text

Sections: ``bandwidth``, ``hamming``, ``float``, ``study`` (issue 3), ``widths``
(cost per code at widths off the power-of-two path against the next power of two;
384 and 768 bits against faiss) and ``shapes`` (all-vs-all at several sizes against a
large batch's rate; one query on two threads against one) of issue 12, and
``sublinear`` (issue 13: the fastest cofisearch setting against the fastest of faiss's
ANN indexes at recall@10 0.95 and 0.99 on cross-modal data, two threads; build times and
the coarse stage's memory). Every size is in the table's setting
column and in ``--json``.

Every figure is the median of ``--repeat`` (default 5) samples after a warm-up, taken in
one process on the same data with the same thread count as the peer it is compared
with; contenders are sampled in interleaved rounds so that load from other processes
falls on all of them. The table gives each target, the measured value and pass/fail,
followed by the machine's description. On a shared machine treat single runs as
indicative: rerun on a quiet one before quoting them.

Why the bandwidth figure is measured the way it is: see
``cofisearch._bench.measure.memory_reader`` (NumPy reductions are compute-bound and would
flatter the scan). The one-query
scan and the readers both run with caches flushed before every sample: 80 MB of 10M
codes is only a few times a server's L3, and a warm repeated scan would partly hit it.
Every contender's results are checked (as in ``cofisearch bench``); a failed check ends
the run with status 1. The study row is the Table 7 experiment of ``cofisearch bench``
(``cofisearch._bench.sections.table7``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional

from cofisearch._bench.checks import group_problems
from cofisearch._bench.contenders import (
    BINARY,
    FLOAT,
    CofiFlat,
    CofiIVFCascade,
    FaissHNSW,
    FaissIVF,
    asymmetric_coarse,
    capturing,
    open_engine,
    open_engines,
)
from cofisearch._bench.data import make_codes, make_vectors
from cofisearch._bench.machine import blas_warnings, faiss_available, format_machine, machine_info
from cofisearch._bench.measure import CLOCKS, compare, flush_caches, read_bandwidth
from cofisearch._bench.plans import SCALES
from cofisearch._bench.report import markdown_table
from cofisearch._bench.sections import (
    STUDY_RATIO_TEXT,
    cross_modal_data,
    debian_ann_data,
    matched_recall,
    table7,
)

SECTIONS = ("bandwidth", "hamming", "float", "study", "widths", "shapes", "sublinear")


@dataclass(frozen=True)
class Sizes:
    hamming_n: int
    hamming_batch: int
    bandwidth_n: int
    float_dim: int
    float_ns: tuple
    float_nqs: tuple
    study_dim: int
    study_n: int
    study_nq: int
    # widths: cost per code of each width against the next power of two (width_n codes,
    # width_nq queries), and 384/768 bits against faiss (faiss_width_n codes).
    width_n: int
    width_nq: int
    faiss_width_n: int
    faiss_width_nq: int
    # shapes: all-vs-all over each of shape_ns (the first for information only) against
    # the rate of a batch of (n, queries) shape_batch (float: shape_float_batch), and one
    # query over thread_n codes on two threads against one.
    shape_ns: tuple
    shape_float_ns: tuple
    shape_batch: tuple
    shape_float_batch: tuple
    shape_dim: int
    thread_n: int
    # sublinear (issue 13): cross-modal data of sub_n items, sub_nq queries (recall and
    # batch timing) of which the first sub_single also run one at a time; our IVF lists,
    # faiss's IVF lists (IVFFlat, IVFRaBitQ).
    sub_n: int = 1_000_000
    sub_nq: int = 1000
    sub_single: int = 100
    sub_dim: int = 256
    sub_nbits: int = 256
    sub_nlist: int = 1024
    sub_faiss_nlist: int = 2048
    # "synthetic" (cross_modal_data) or "debian": real MiniLM embeddings of Debian's
    # descriptions (summaries against descriptions, ~58k items; sub_n and sub_dim then
    # come from the data, and the lists are scaled to it).
    sub_data: str = "synthetic"
    sub_max_items: Optional[int] = None  # a seeded subset of the Debian corpus
    # The contenders of the section (SUB_CONTENDERS' keys); None: all of them.
    sub_contenders: Optional[tuple] = None


# The issue's sizes.
ISSUE = Sizes(
    hamming_n=1_000_000,
    hamming_batch=1000,
    bandwidth_n=10_000_000,
    float_dim=512,
    float_ns=(200_000, 1_000_000),
    float_nqs=(1, 10, 100, 1000),
    study_dim=2048,
    study_n=100_000,
    study_nq=500,
    # 500k codes keep the eleven widths to a few minutes and are still far out of cache
    # (24-128 MB); the comparison with faiss is the issue's 1M.
    width_n=500_000,
    width_nq=1000,
    faiss_width_n=1_000_000,
    faiss_width_nq=1000,
    shape_ns=(1000, 5000, 25_000),
    shape_float_ns=(1000, 5000, 25_000),
    shape_batch=(1_000_000, 1000),
    # 1M x 1,000 at d = 384 is 0.8 TFLOP a call; 200k is the same regime (the database
    # is 300 MB, far out of cache) at a fifth of the time.
    shape_float_batch=(200_000, 1000),
    shape_dim=384,
    thread_n=1_000_000,
)
# Hamming stays at 1M codes (the one-query case must not fit in the caches); the float
# databases and the batches shrink, which keeps every regime but costs a tenth.
_QUICK = Sizes(
    hamming_n=1_000_000,
    hamming_batch=200,
    bandwidth_n=10_000_000,
    float_dim=512,
    float_ns=(100_000,),
    float_nqs=(1, 10, 100, 1000),
    study_dim=2048,
    study_n=50_000,
    study_nq=200,
    width_n=200_000,
    width_nq=200,
    faiss_width_n=1_000_000,
    faiss_width_nq=200,
    shape_ns=(1000, 5000, 25_000),
    shape_float_ns=(1000, 5000),
    shape_batch=(1_000_000, 1000),
    shape_float_batch=(100_000, 1000),
    shape_dim=384,
    thread_n=1_000_000,
    sub_n=200_000,
    sub_nlist=512,
    sub_faiss_nlist=1024,
)

# Per named scale; the issue's sizes are already the largest this table asks for.
SIZES = {
    "tiny": Sizes(
        hamming_n=2_000,
        hamming_batch=20,
        bandwidth_n=20_000,
        float_dim=64,
        float_ns=(2_000,),
        float_nqs=(1, 10),
        study_dim=2048,
        study_n=1_000,
        study_nq=20,
        width_n=2_000,
        width_nq=20,
        faiss_width_n=2_000,
        faiss_width_nq=20,
        shape_ns=(100, 300, 600),
        shape_float_ns=(100, 300, 600),
        shape_batch=(2_000, 20),
        shape_float_batch=(2_000, 20),
        shape_dim=384,
        thread_n=2_000,
        sub_n=3_000,
        sub_nq=40,
        sub_single=5,
        sub_dim=64,
        sub_nbits=64,
        sub_nlist=16,
        sub_faiss_nlist=16,
    ),
    "quick": _QUICK,
    "default": ISSUE,
    "full": ISSUE,
}
# Samples per median when --repeat is not given: one at the tiny scale, whose timings
# mean nothing anyway.
DEFAULT_REPEAT = {"tiny": 1, "quick": 5, "default": 5, "full": 5}
K = 10


@dataclass
class Row:
    target: str
    setting: str
    cofisearch: str
    reference: str
    measured: Optional[float]
    required: str
    passed: Optional[bool]  # None: information only, no target

    @property
    def verdict(self):
        return "-" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass
class Report:
    repeat: int
    clock: str = "wall"
    rows: List[Row] = field(default_factory=list)
    raw: List[dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def timings(self, label, params, fns, *, setup=None):
        """Interleaved medians of ``fns`` (name -> zero-argument callable)."""
        progress(f"  {label}")
        out = compare(fns, repeat=self.repeat, warmup=1, setup=setup)
        self.raw.append(
            {"label": label, "params": params, "timings": {n: t.as_dict() for n, t in out.items()}}
        )
        return out

    def searches(self, label, params, searches, kind, database, queries, k, *, setup=None):
        """Times ``search(queries, k)`` of every entry of ``searches`` (name -> search) and
        checks their answers (recorded in ``problems``)."""
        results = {}
        fns = {name: capturing(s, queries, k, results, name) for name, s in searches.items()}
        out = self.timings(label, params, fns, setup=setup)
        self.problems += [f"{label}: {p}" for p in
                          group_problems(kind, database, queries, k, results)]
        return out

    def runs(self, label, params, runs, k, *, setup=None):
        """Times every entry of ``runs`` (name -> ``(search, kind, database, queries)``),
        each on its own data, in one set of interleaved rounds, and checks each answer
        (recorded in ``problems``)."""
        results = {}
        fns = {name: capturing(s, q, k, results, name) for name, (s, _, _, q) in runs.items()}
        out = self.timings(label, params, fns, setup=setup)
        for name, (_, kind, database, queries) in runs.items():
            self.problems += [f"{label}, {name}: {p}" for p in
                              group_problems(kind, database, queries, k, {name: results[name]})]
        return out

    def add(self, target, setting, cofi, reference, measured, required, passed):
        self.rows.append(Row(target, setting, cofi, reference, measured, required, passed))


def progress(message):
    print(message, file=sys.stderr, flush=True)


def _ms(seconds):
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _n(n):
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# ---- sections -------------------------------------------------------------------------------


def bandwidth_section(report, sizes):
    """One query over `bandwidth_n` 64-bit codes against the read bandwidth of those bytes."""
    progress(f"bandwidth: {_n(sizes.bandwidth_n)} x 64-bit codes")
    codes = make_codes(sizes.bandwidth_n, 64)
    query = make_codes(1, 64, stream=1)
    bw, detail = read_bandwidth(codes, repeat=report.repeat, cold=True, clock=report.clock)
    report.raw.append({"label": "read bandwidth, cold, 1 thread", **detail})
    readers = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in detail["bytes_per_s"].items())
    report.add(
        "single-thread read bandwidth (reference)",
        f"{codes.nbytes / 1e6:.0f} MB, caches flushed",
        "",
        f"GB/s: {readers}",
        bw / 1e9,
        "",
        None,
    )
    engines = _open(BINARY, codes)
    with _running(engines, 1) as search:
        t = report.searches(
            "1 query, cold",
            {"n": sizes.bandwidth_n, "bits": 64, "nq": 1, "k": K, "threads": 1,
             "caches": "flushed"},
            search, BINARY, codes, query, K, setup=flush_caches,
        )
    rate = codes.nbytes / t["cofisearch"].value(report.clock)
    reference = f"faiss {_ms(t['faiss'].value(report.clock))}" if "faiss" in t else ""
    report.add(
        "1 query over 10M codes: share of read bandwidth",
        f"n={_n(sizes.bandwidth_n)} 64 bits k={K} 1 thread, cold",
        f"{_ms(t['cofisearch'].value(report.clock))} ({rate / 1e9:.1f} GB/s)",
        reference,
        rate / bw,
        ">= 0.80",
        rate / bw >= 0.80,
    )


def hamming_section(report, sizes):
    """N = 1M, k = 10, one thread, against faiss IndexBinaryFlat; k and thread scaling."""
    n, batch = sizes.hamming_n, sizes.hamming_batch
    required = {(64, 1): 3.0, (64, batch): 10.0, (256, 1): 1.0, (256, batch): 2.5}
    for bits in (64, 256):
        progress(f"hamming: {_n(n)} x {bits}-bit codes")
        db = make_codes(n, bits)
        queries = make_codes(batch, bits, stream=1)
        engines = _open(BINARY, db)
        for nq in (1, batch):
            q = queries[:nq]
            setting = f"n={_n(n)} {bits} bits nq={nq} k={K} 1 thread"
            with _running(engines, 1) as search:
                t = report.searches(
                    f"{bits} bits, {nq} queries",
                    {"n": n, "bits": bits, "nq": nq, "k": K, "threads": 1},
                    search, BINARY, db, q, K,
                )
            cofi = t["cofisearch"].value(report.clock)
            codes_per_s = f"{n * nq / cofi / 1e9:.2f} G codes/s"
            if "faiss" in t:
                peer = t["faiss"].value(report.clock)
                ratio = peer / cofi
                report.add(
                    f"Hamming {bits} bits, {nq} {'query' if nq == 1 else 'queries'} vs faiss",
                    setting,
                    f"{_ms(cofi)} ({codes_per_s})",
                    f"faiss {_ms(peer)} ({n * nq / peer / 1e9:.2f} G codes/s)",
                    ratio,
                    f">= {required[(bits, nq)]:g}x",
                    ratio >= required[(bits, nq)],
                )
            else:
                report.add(f"Hamming {bits} bits, {nq} queries vs faiss", setting,
                           f"{_ms(cofi)} ({codes_per_s})", "faiss not installed", None,
                           f">= {required[(bits, nq)]:g}x", None)

        if bits == 256:
            # 1M x 256 bits is 32 MB: the issue asks for >= 90 % of read bandwidth here.
            bw, detail = read_bandwidth(db, repeat=report.repeat, cold=True, clock=report.clock)
            report.raw.append({"label": "read bandwidth 256-bit db, cold", **detail})
            with engines["cofisearch"].running(1) as search:
                t = report.searches(
                    f"{bits} bits, 1 query, cold",
                    {"n": n, "bits": bits, "nq": 1, "k": K, "threads": 1, "caches": "flushed"},
                    {"cofisearch": search}, BINARY, db, queries[:1], K, setup=flush_caches,
                )
            rate = db.nbytes / t["cofisearch"].value(report.clock)
            report.add(
                "Hamming 256 bits, 1 query: share of read bandwidth",
                f"n={_n(n)} 256 bits k={K} 1 thread, cold",
                f"{_ms(t['cofisearch'].value(report.clock))} ({rate / 1e9:.1f} GB/s)",
                f"read {bw / 1e9:.1f} GB/s ({detail['reader']})",
                rate / bw,
                ">= 0.90",
                rate / bw >= 0.90,
            )

        cofi = engines["cofisearch"]
        for nq in (1, batch):
            q = queries[:nq]
            with cofi.running(1) as search:
                t = report.timings(
                    f"{bits} bits, {nq} queries, k=100 vs k=10",
                    {"n": n, "bits": bits, "nq": nq, "threads": 1, "k": [10, 100]},
                    {"k=10": lambda: search(q, 10), "k=100": lambda: search(q, 100)},
                )
            ratio = t["k=100"].value(report.clock) / t["k=10"].value(report.clock)
            report.add(
                f"Hamming {bits} bits: k=100 cost / k=10 cost",
                f"n={_n(n)} nq={nq} 1 thread",
                f"k=100 {_ms(t['k=100'].value(report.clock))}",
                f"k=10 {_ms(t['k=10'].value(report.clock))}",
                ratio,
                "<= 1.3x",
                ratio <= 1.3,
            )

        with cofi.running(1) as one, cofi.running(2) as two:
            t = report.searches(
                f"{bits} bits, {batch} queries, 2 threads vs 1",
                {"n": n, "bits": bits, "nq": batch, "k": K, "threads": [1, 2]},
                {"1 thread": one, "2 threads": two}, BINARY, db, queries, K,
            )
        # Wall time whatever --clock says: CPU time cannot show a speed-up from threads.
        ratio = t["1 thread"].median / t["2 threads"].median
        report.add(
            f"Hamming {bits} bits: 2 threads speed-up on a batch",
            f"n={_n(n)} nq={batch} k={K}",
            f"2 threads {_ms(t['2 threads'].median)}",
            f"1 thread {_ms(t['1 thread'].median)}",
            ratio,
            ">= 1.7x",
            ratio >= 1.7,
        )
        del engines, cofi, db


def float_section(report, sizes):
    """Inner product, d = 512, k = 10, one thread, against faiss IndexFlatIP."""
    d = sizes.float_dim
    required = {1: 1.0, 10: 3.0, 100: 3.0, 1000: 1.0}
    queries = make_vectors(max(sizes.float_nqs), d, stream=1)
    for n in sizes.float_ns:
        progress(f"float: {_n(n)} x {d}-d vectors")
        db = make_vectors(n, d)
        engines = _open(FLOAT, db)
        for nq in sizes.float_nqs:
            q = queries[:nq]
            with _running(engines, 1) as search:
                t = report.searches(
                    f"float d={d} n={n}, {nq} queries",
                    {"n": n, "dim": d, "nq": nq, "k": K, "threads": 1},
                    search, FLOAT, db, q, K,
                )
            need = required.get(nq, 1.0)
            cofi = t["cofisearch"].value(report.clock)
            target = f"float IP d={d}, {nq} {'query' if nq == 1 else 'queries'} vs faiss"
            setting = f"n={_n(n)} d={d} nq={nq} k={K} 1 thread"
            if "faiss" not in t:
                report.add(target, setting, f"{_ms(cofi)} ({_float_rate(n, d, nq, cofi)})",
                           "faiss not installed", None, f">= {need:g}x", None)
                continue
            peer = t["faiss"].value(report.clock)
            report.add(
                target,
                setting,
                f"{_ms(cofi)} ({_float_rate(n, d, nq, cofi)})",
                f"faiss {_ms(peer)} ({_float_rate(n, d, nq, peer)})",
                peer / cofi,
                f">= {need:g}x",
                peer / cofi >= need,
            )
        del engines, db


def _float_rate(n, d, nq, seconds):
    # One query streams the database (a bandwidth figure); batches are compute (GFLOP/s).
    if nq == 1:
        return f"{n * d * 4 / seconds / 1e9:.1f} GB/s"
    return f"{2.0 * n * d * nq / seconds / 1e9:.0f} GFLOP/s"


def study_section(report, sizes):
    """FiCo-ITR's Table 7 comparison on our engine: exhaustive 2048-d float vs 64-bit."""
    n, nq, d = sizes.study_n, sizes.study_nq, sizes.study_dim
    progress(f"study: {nq} queries over {_n(n)} candidates, {d}-d float vs 64-bit codes")
    setting = f"n={_n(n)} nq={nq} k={K} 1 thread"

    def time_group(kind, engines, database, queries):
        what = {"bits": 64} if kind == BINARY else {"dim": d}
        label = "study: 64-bit Hamming" if kind == BINARY else f"study: {d}-d float"
        with _running(engines, 1) as search:
            t = report.searches(label, {"n": n, **what, "nq": nq, "k": K, "threads": 1},
                                search, kind, database, queries, K)
        return {name: x.value(report.clock) for name, x in t.items()}

    table = table7(time_group, n=n, nq=nq, dim=d)
    for name, e in table["engines"].items():
        f, b = e["float_s"], e["binary_s"]
        is_target = name == "cofisearch"
        report.add(
            f"study: {d}-d float / 64-bit Hamming time ({name})",
            setting,
            f"float {_ms(f)}" if is_target else "",
            f"binary {_ms(b)}" if is_target else f"float {_ms(f)}, binary {_ms(b)}",
            e["ratio"],
            ">= 200x" if is_target else f"(study: {STUDY_RATIO_TEXT})",
            e["ratio"] >= 200 if is_target else None,
        )


# Widths off the power-of-two path, each judged against the next power of two.
WIDTHS = (192, 320, 384, 448, 640, 768, 1536)
WIDTH_SLACK = 1.15
FAISS_WIDTHS = {384: (4.0, 1.5), 768: (4.0, 1.5)}  # bits -> required x faiss (batch, 1 query)


def _next_power_of_two(bits):
    return 1 << (bits - 1).bit_length()


def widths_section(report, sizes):
    """Cost linear in bits at every width (one thread), and 384/768 bits against faiss."""
    n, nq = sizes.width_n, sizes.width_nq
    by_power = {}
    for w in WIDTHS:
        by_power.setdefault(_next_power_of_two(w), []).append(w)
    setting = f"n={_n(n)} nq={nq} k={K} 1 thread"
    for p, widths in sorted(by_power.items()):
        # Each width in the same rounds as its power of two, so the ratio is of
        # neighbouring samples.
        progress(f"widths: {_n(n)} x {', '.join(map(str, widths))} and {p}-bit codes")
        runs = {}
        with contextlib.ExitStack() as stack:
            for bits in (*widths, p):
                db = make_codes(n, bits)
                q = make_codes(nq, bits, stream=1)
                engine = open_engines(BINARY, db, ["cofisearch"])["cofisearch"]
                runs[f"{bits} bits"] = (stack.enter_context(engine.running(1)), BINARY, db, q)
            t = report.runs(f"widths {widths} against {p} bits",
                            {"n": n, "bits": [*widths, p], "nq": nq, "k": K, "threads": 1},
                            runs, K)
        base = t[f"{p} bits"].value(report.clock)
        for w in widths:
            cofi = t[f"{w} bits"].value(report.clock)
            ratio = (cofi / base) / (w / p)
            report.add(
                f"Hamming {w} bits: time per code / linear in bits from {p} bits",
                setting,
                f"{_ms(cofi)} ({n * nq / cofi / 1e9:.2f} G codes/s)",
                f"{p} bits {_ms(base)} ({n * nq / base / 1e9:.2f} G codes/s)",
                ratio,
                f"<= {WIDTH_SLACK:g}",
                ratio <= WIDTH_SLACK,
            )

    n, batch = sizes.faiss_width_n, sizes.faiss_width_nq
    for bits, (need_batch, need_one) in FAISS_WIDTHS.items():
        progress(f"widths: {_n(n)} x {bits}-bit codes against faiss")
        db = make_codes(n, bits)
        queries = make_codes(batch, bits, stream=1)
        engines = _open(BINARY, db)
        # One query with caches flushed, as a user's first query over a database meets it.
        for nq, need, setup in ((batch, need_batch, None), (1, need_one, flush_caches)):
            cold = ", cold" if setup else ""
            with _running(engines, 1) as search:
                t = report.searches(
                    f"{bits} bits, {_queries(nq)}{cold}",
                    {"n": n, "bits": bits, "nq": nq, "k": K, "threads": 1,
                     "caches": "flushed" if setup else "warm"},
                    search, BINARY, db, queries[:nq], K, setup=setup,
                )
            _add_vs_faiss(report, t, f"Hamming {bits} bits, {_queries(nq)}{cold} vs faiss",
                          f"n={_n(n)} {bits} bits nq={nq} k={K} 1 thread{cold}",
                          n * nq, need)
        del engines, db


def _queries(nq):
    return f"{nq} {'query' if nq == 1 else 'queries'}"


def _add_vs_faiss(report, t, target, setting, codes, need):
    cofi = t["cofisearch"].value(report.clock)
    mine = f"{_ms(cofi)} ({codes / cofi / 1e9:.2f} G codes/s)"
    if "faiss" not in t:
        report.add(target, setting, mine, "faiss not installed", None, f">= {need:g}x", None)
        return
    peer = t["faiss"].value(report.clock)
    report.add(target, setting, mine, f"faiss {_ms(peer)} ({codes / peer / 1e9:.2f} G codes/s)",
               peer / cofi, f">= {need:g}x", peer / cofi >= need)


ALL_VS_ALL_SHARE = 0.5
THREAD_SPEEDUP = {64: 1.0, 256: 1.5}  # bits -> required 2-thread speed-up, one query


def shapes_section(report, sizes):
    """All-vs-all (each database searched by itself) against a large batch's rate, and
    one query on two threads against one."""
    n_ref, nq_ref = sizes.shape_batch
    for bits in (64, 256):
        progress(f"shapes: {bits}-bit all-vs-all at {', '.join(map(_n, sizes.shape_ns))}")
        ref_db = make_codes(n_ref, bits)
        ref_q = make_codes(nq_ref, bits, stream=1)
        _all_vs_all(report, BINARY, bits, ref_db, ref_q,
                    {n: make_codes(n, bits, stream=2) for n in sizes.shape_ns})
        del ref_db, ref_q

    d = sizes.shape_dim
    n_ref, nq_ref = sizes.shape_float_batch
    progress(f"shapes: {d}-d float all-vs-all at {', '.join(map(_n, sizes.shape_float_ns))}")
    ref_db = make_vectors(n_ref, d)
    ref_q = make_vectors(nq_ref, d, stream=1)
    _all_vs_all(report, FLOAT, d, ref_db, ref_q,
                {n: make_vectors(n, d, stream=2) for n in sizes.shape_float_ns})
    del ref_db, ref_q

    n = sizes.thread_n
    for bits, need in THREAD_SPEEDUP.items():
        progress(f"shapes: 1 query over {_n(n)} {bits}-bit codes, 2 threads against 1")
        db = make_codes(n, bits)
        query = make_codes(1, bits, stream=1)
        cofi = open_engines(BINARY, db, ["cofisearch"])["cofisearch"]
        # Warm caches: the per-call cost of splitting work, which is what this row is
        # about, shows most on the shortest scan.
        with cofi.running(1) as one, cofi.running(2) as two:
            t = report.searches(
                f"{bits} bits, 1 query, 2 threads vs 1",
                {"n": n, "bits": bits, "nq": 1, "k": K, "threads": [1, 2]},
                {"1 thread": one, "2 threads": two}, BINARY, db, query, K,
            )
        # Wall time whatever --clock says: CPU time cannot show a speed-up from threads.
        ratio = t["1 thread"].median / t["2 threads"].median
        report.add(
            f"Hamming {bits} bits, 1 query: 2 threads speed-up",
            f"n={_n(n)} k={K}, warm caches",
            f"2 threads {_ms(t['2 threads'].median)}",
            f"1 thread {_ms(t['1 thread'].median)}",
            ratio,
            f">= {need:g}x",
            ratio >= need,
        )
        del cofi, db


def _all_vs_all(report, kind, width, ref_db, ref_q, databases):
    """Times cofisearch on the reference batch and on each database searched by itself,
    all in the same rounds, then faiss on each for information; adds one row per
    database."""
    binary = kind == BINARY
    what = f"{width} bits" if binary else f"float d={width}"
    unit = "G codes/s" if binary else "GFLOP/s"

    def rate(n, nq, seconds):
        # Codes compared per second, or multiply-adds (2 flops) per second.
        return n * nq / seconds / 1e9 if binary else 2.0 * n * nq * width / seconds / 1e9

    n_ref, nq_ref = ref_db.shape[0], ref_q.shape[0]
    runs = {}
    with contextlib.ExitStack() as stack:
        engine = open_engines(kind, ref_db, ["cofisearch"])["cofisearch"]
        runs["batch"] = (stack.enter_context(engine.running(1)), kind, ref_db, ref_q)
        for n, db in databases.items():
            engine = open_engines(kind, db, ["cofisearch"])["cofisearch"]
            runs[n] = (stack.enter_context(engine.running(1)), kind, db, db)
        t = report.runs(
            f"{what}: all-vs-all at {list(databases)} and {n_ref} x {nq_ref}",
            {"kind": kind, "width": width, "all_vs_all_n": list(databases),
             "batch": [n_ref, nq_ref], "k": K, "threads": 1},
            runs, K,
        )
    peers = _peer_all_vs_all(report, kind, what, databases)
    base = rate(n_ref, nq_ref, t["batch"].value(report.clock))
    first = min(databases)
    for n in databases:
        cofi = t[n].value(report.clock)
        reference = f"{_n(n_ref)} x {nq_ref}: {base:.3g} {unit}"
        peer = peers.get(n)
        if isinstance(peer, str):
            reference += f"; {peer}"
        elif peer is not None:
            reference += f"; faiss {rate(n, n, peer):.3g} {unit}"
        share = rate(n, n, cofi) / base
        judged = n != first
        report.add(
            f"all-vs-all {what}, n={_n(n)}: rate / {_n(n_ref)} x {nq_ref} batch's",
            f"{_n(n)} queries x {_n(n)} items, k={K} 1 thread",
            f"{_ms(cofi)} ({rate(n, n, cofi):.3g} {unit})",
            reference,
            share,
            f">= {ALL_VS_ALL_SHARE:g}" if judged else "",
            share >= ALL_VS_ALL_SHARE if judged else None,
        )


# faiss's all-vs-all times are information only; one predicted to take longer a call
# (faiss's float path at 25k x 25k takes 20 s with OpenBLAS's generic kernels) is left
# out rather than double the section's time.
PEER_BUDGET_S = 5.0


def _peer_all_vs_all(report, kind, what, databases):
    """faiss's seconds per all-vs-all call for each database (smallest first), or the
    reason there is none."""
    if not faiss_available():
        return {}
    out, last = {}, None
    for n, db in sorted(databases.items()):
        if last is not None:
            predicted = last[1] * (n / last[0]) ** 2  # the work grows as n squared
            if predicted > PEER_BUDGET_S:
                out[n] = f"faiss left out (predicted {predicted:.0f} s a call)"
                continue
        with open_engine("faiss", kind, db).running(1) as search:
            t = report.searches(f"{what}: faiss all-vs-all at {n}",
                                {"kind": kind, "n": n, "nq": n, "k": K, "threads": 1},
                                {"faiss": search}, kind, db, db, K)
        out[n] = t["faiss"].value(report.clock)
        last = (n, out[n])
    return out


# ---- sub-linear search at matched recall (issue 13) -----------------------------------------

SUB_TARGETS = (0.95, 0.99)
SUB_THREADS = 2
SUB_SPEEDUP = 2.0  # cofisearch's fastest setting against each peer's, at the same recall
SUB_BUILD_SHARE = 0.2  # our train + add against IndexHNSWFlat's build
SUB_MEMORY_SHARE = 0.25  # our coarse stage's resident bytes against IndexHNSWFlat's
# The deepest screen the tuner tries: an exact rerank of 16k candidates still reads
# only 1/60 of a 1M database.
SUB_MAX_CANDIDATES = 16_384


# The sub-linear section's contenders by key (--sub-contenders): cofisearch's Hamming and
# asymmetric IVF cascades (screen codes of 2 bits a dimension, the default, and of 1.5:
# a fifth fewer bytes to read for a few more candidates to rerank) and exhaustive float
# search; faiss's HNSW, IVFFlat and IVFRaBitQ + RefineFlat.
SUB_OURS = ("ivf", "asym", "asym-short", "flat")
SUB_PEERS = ("hnsw", "ivfflat", "rabitq")
SUB_CONTENDERS = SUB_OURS + SUB_PEERS


def sublinear_contenders(sizes, threads):
    """``(cofisearch's, the peers')`` contenders of the sub-linear section (those of
    ``sizes.sub_contenders``, or all). A new cofisearch screen joins the first list (an
    :class:`~cofisearch._bench.contenders.AnnContender`, e.g. ``CofiIVFCascade(...,
    name=..., make_coarse=...)``); the fastest cofisearch setting at each target is judged
    against every peer."""
    nlist, fnlist = sizes.sub_nlist, sizes.sub_faiss_nlist
    make = {
        "ivf": lambda: CofiIVFCascade(nlist, threads, max_candidates=SUB_MAX_CANDIDATES),
        "asym": lambda: CofiIVFCascade(nlist, threads, max_candidates=SUB_MAX_CANDIDATES,
                                       make_coarse=asymmetric_coarse(nlist),
                                       name=f"cofisearch asymmetric IVF cascade nlist={nlist}"),
        "asym-short": lambda: CofiIVFCascade(
            nlist, threads, max_candidates=SUB_MAX_CANDIDATES,
            make_coarse=asymmetric_coarse(nlist, bits_per_dim=1.5),
            name=f"cofisearch asymmetric IVF cascade nlist={nlist}, 1.5 screen bits a dimension"),
        "flat": lambda: CofiFlat(FLOAT, threads),
        "hnsw": FaissHNSW,
        "ivfflat": lambda: FaissIVF("flat", fnlist),
        "rabitq": lambda: FaissIVF("rabitq", fnlist),
    }
    chosen = sizes.sub_contenders or SUB_CONTENDERS
    ours = [make[key]() for key in SUB_OURS if key in chosen]
    peers = [make[key]() for key in SUB_PEERS if key in chosen] if faiss_available() else []
    return ours, peers


def sublinear_section(report, sizes):
    """Recall@10 >= 0.95 and >= 0.99 against the exact float top-10 on cross-modal data,
    two threads: the fastest cofisearch setting against the fastest setting of each of
    faiss IndexHNSWFlat, IndexIVFFlat and IndexIVFRaBitQ + IndexRefineFlat, batch and
    single queries; build time and the coarse stage's memory against IndexHNSWFlat's."""
    nq, threads = sizes.sub_nq, SUB_THREADS
    if sizes.sub_data == "debian":
        progress(f"sublinear: Debian descriptions (all-MiniLM-L6-v2), {nq} summaries as queries")
        data = debian_ann_data(nq, sizes.sub_nbits, max_items=sizes.sub_max_items)[sizes.sub_nbits]
        n = data.vectors.shape[0]
        # Our lists: 2 sqrt(n) (491 at 60k items: against 4 sqrt(n), half the centroids to
        # route by and half the lists' fixed costs for the same items scanned; at recall
        # 0.95 one query took 0.36-0.44 against 0.47-0.49 ms, interleaved). faiss's: the
        # most within its 39 training points a list.
        sizes = replace(sizes, sub_n=n, sub_dim=data.vectors.shape[1],
                        sub_nlist=max(16, min(sizes.sub_nlist, int(2 * n**0.5))),
                        sub_faiss_nlist=max(16, min(sizes.sub_faiss_nlist, n // 39)))
    else:
        n = sizes.sub_n
        progress(f"sublinear: {_n(n)} x {sizes.sub_dim}-d cross-modal items, {nq} queries, "
                 f"{sizes.sub_nbits}-bit ITQ codes, {threads} threads")
        data = cross_modal_data(n, nq, sizes.sub_dim, sizes.sub_nbits)[sizes.sub_nbits]
    exact = open_engines(FLOAT, data.vectors, ["cofisearch"])["cofisearch"]
    with exact.running(threads) as search:
        truth = search(data.query_vectors, K)[1]
    del exact
    ours, peers = sublinear_contenders(sizes, threads)
    rows = matched_recall([*ours, *peers], data, truth, SUB_TARGETS, k=K, threads=threads,
                          repeat=report.repeat, single=sizes.sub_single, progress=progress)
    params = {"n": n, "nq": nq, "dim": sizes.sub_dim, "nbits": sizes.sub_nbits, "k": K,
              "threads": threads, "nlist": sizes.sub_nlist, "faiss_nlist": sizes.sub_faiss_nlist,
              "single": sizes.sub_single, "data": sizes.sub_data}
    report.raw.append({"label": "sublinear", "params": params, "contenders": rows})
    names = {c.name for c in ours}
    mine = [r for r in rows if r["name"] in names]
    theirs = [r for r in rows if r["name"] not in names]
    setting = f"n={_n(n)} d={sizes.sub_dim} nq={nq} k={K} {threads} threads"
    if sizes.sub_data == "debian":
        setting += " Debian MiniLM"
    for i, target in enumerate(SUB_TARGETS):
        reached = [(r, r["targets"][i]) for r in mine if r["targets"][i]["setting"] is not None]
        best = min(reached, key=lambda x: x[1]["batch_s_per_query"]) if reached else None
        best_one = min(reached, key=lambda x: x[1]["single_s_per_query"]) if reached else None
        for peer in theirs:
            t = peer["targets"][i]
            for what, key, choice in (("batch", "batch_s_per_query", best),
                                      ("1 query", "single_s_per_query", best_one)):
                label = f"sublinear recall@{K} >= {target}: {peer['name']} / cofisearch ({what})"
                if t["setting"] is None:
                    report.add(label, setting, _sub_text(choice, key),
                               f"never reached (best recall {t['best_recall']:.3f})", None,
                               f">= {SUB_SPEEDUP:g}x", choice is not None)
                    continue
                peer_text = _sub_text((peer, t), key)
                if choice is None:
                    top = max(r["targets"][i].get("best_recall", 0.0) for r in mine)
                    report.add(label, setting, f"never reached (best recall {top:.3f})",
                               peer_text, None, f">= {SUB_SPEEDUP:g}x", False)
                    continue
                ratio = t[key] / choice[1][key]
                report.add(label, setting, _sub_text(choice, key), peer_text, ratio,
                           f">= {SUB_SPEEDUP:g}x", ratio >= SUB_SPEEDUP)
    hnsw = next((r for r in theirs if r["name"].startswith("faiss IndexHNSWFlat")), None)
    cascade = next((r for r in mine if r["family"] == "cascade"), None)
    if hnsw and cascade:
        share = cascade["build_s"] / hnsw["build_s"]
        report.add("sublinear: IVF cascade train + add / IndexHNSWFlat build", setting,
                   f"{cascade['build_s']:.3g} s", f"HNSW {hnsw['build_s']:.3g} s", share,
                   f"<= {SUB_BUILD_SHARE:g}", share <= SUB_BUILD_SHARE)
        share = cascade["resident_bytes"] / hnsw["resident_bytes"]
        report.add("sublinear: IVF cascade coarse memory / IndexHNSWFlat memory", setting,
                   f"{cascade['resident_bytes'] / 1e6:.4g} MB",
                   f"HNSW {hnsw['resident_bytes'] / 1e6:.4g} MB", share,
                   f"<= {SUB_MEMORY_SHARE:g}", share <= SUB_MEMORY_SHARE)
    for r in theirs:
        report.add(f"sublinear: {r['name']} build (information)", setting, "",
                   f"{r['build_s']:.3g} s", None, "", None)


def _sub_text(choice, key):
    """``name setting: time (recall)`` of one contender's chosen setting."""
    if choice is None:
        return ""
    row, t = choice
    knobs = ", ".join(f"{k}={v}" for k, v in t["setting"].items()) or "exhaustive"
    return f"{row['name']} {knobs}: {_ms(t[key])}/query (recall {t['recall']:.3f})"


def _open(kind, database):
    """cofisearch and (when installed) faiss, bound to ``database``."""
    return open_engines(kind, database, ["cofisearch", "faiss"])


@contextlib.contextmanager
def _running(engines, threads):
    """Enters ``running(threads)`` of every engine; yields ``{name: search}``."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(e.running(threads)) for name, e in engines.items()}


# ---- output ---------------------------------------------------------------------------------


def format_table(rows):
    header = ("target", "setting", "cofisearch", "reference", "measured", "required", "result")
    body = [
        (
            r.target,
            r.setting,
            r.cofisearch,
            r.reference,
            "" if r.measured is None else f"{r.measured:.3g}",
            r.required,
            r.verdict,
        )
        for r in rows
    ]
    return "\n".join(markdown_table(header, body))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", choices=SCALES, default="default",
                      help="sizes: tiny (seconds, checks only), quick, default (the issue's), "
                      "full (the same) (default: %(default)s)")
    size.add_argument("--quick", action="store_const", const="quick", dest="scale",
                      help="the same as --scale quick")
    parser.add_argument("--repeat", type=int, default=None,
                        help="samples per median (default 5; 1 at the tiny scale)")
    parser.add_argument("--json", metavar="PATH", help="also write every raw timing here")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall (default) or cpu: process CPU time, steadier on a shared machine "
        "(the thread speed-up rows always use wall time)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if a target fails"
    )
    parser.add_argument(
        "--sub-data", choices=("synthetic", "debian"), default="synthetic",
        help="data of the sublinear section: synthetic cross-modal vectors (default) or "
        "the real MiniLM embeddings of Debian's package descriptions (needs the text extra "
        "and apt's Translation-en; cached by bench/debian_study.py)",
    )
    parser.add_argument(
        "--sub-max-items", type=int, default=None,
        help="with --sub-data debian: the seeded subset of the corpus that "
        "bench/debian_study.py --max-items takes (default: the whole corpus)",
    )
    parser.add_argument(
        "--sub-contenders", default=",".join(SUB_CONTENDERS),
        help=f"comma-separated subset of {','.join(SUB_CONTENDERS)}: the sublinear section's "
        "contenders (default: all; the rows of a peer left out are left out)",
    )
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    repeat = DEFAULT_REPEAT[args.scale] if args.repeat is None else args.repeat
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {repeat}")
    if not faiss_available():
        progress("faiss-cpu is not installed: faiss comparisons left out (pip install faiss-cpu)")

    contenders = tuple(c.strip() for c in args.sub_contenders.split(",") if c.strip())
    unknown = sorted(set(contenders) - set(SUB_CONTENDERS))
    if unknown:
        parser.error(f"unknown sub-contender(s) {unknown}; choose from {list(SUB_CONTENDERS)}")
    sizes = replace(SIZES[args.scale], sub_data=args.sub_data, sub_max_items=args.sub_max_items,
                    sub_contenders=contenders)
    before = machine_info()
    report = Report(repeat=repeat, clock=args.clock)
    progress(f"measuring ({args.scale} sizes, median of {repeat})")
    runners = {"bandwidth": bandwidth_section, "hamming": hamming_section,
               "float": float_section, "study": study_section,
               "widths": widths_section, "shapes": shapes_section,
               "sublinear": sublinear_section}
    for name in SECTIONS:
        if name in sections:
            runners[name](report, sizes)
    after = machine_info()

    print(f"cofisearch targets (issues 3 and 12), {args.scale} sizes, "
          f"{args.clock}-clock medians of {repeat} after a warm-up\n")
    print(format_table(report.rows))
    print()
    print(format_machine(before))
    print(f"load after: {after['loadavg']}")
    for warning in blas_warnings(before):
        print(f"warning:    {warning}")
    failed = [r for r in report.rows if r.passed is False]
    print(f"\n{sum(r.passed is True for r in report.rows)} passed, {len(failed)} failed, "
          f"{sum(r.passed is None for r in report.rows)} for information")
    for problem in report.problems:
        print(f"result check FAILED: {problem}")

    if args.json:
        payload = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "scale": args.scale,
            "sizes": asdict(sizes),
            "repeat": repeat,
            "clock": args.clock,
            "machine": before,
            "loadavg_after": after["loadavg"],
            "rows": [{**asdict(r), "result": r.verdict} for r in report.rows],
            "problems": report.problems,
            "measurements": report.raw,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 1 if report.problems or (args.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())

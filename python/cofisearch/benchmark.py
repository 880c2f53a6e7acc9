"""The scalability benchmark behind ``cofisearch bench``.

:func:`run` times exact top-k search on this machine -- cofisearch against faiss-cpu (when
installed) and NumPy, in one process, on the same data, with the same thread count -- and
returns a :class:`BenchReport` that renders as Markdown and saves ``bench.json`` (every raw
timing and the machine's description), ``bench.md`` and PNG plots (with matplotlib).

What it measures (the default scale; ``quick=True`` shrinks every axis):

1. Hamming: 64-bit codes over database sizes 1k, 10k, ... up to ``max_size`` (10M by
   default) for 1, 100 and 1,000 queries; at 1M codes, 128-, 256- and 512-bit codes,
   k = 100 and two threads.
2. Float inner product: d = 512 over 1k ... 1M vectors (1M x 512 float32 is 2 GB, held
   three times: the data, cofisearch's index, faiss's copy; fewer when memory is short);
   at 100k vectors, d = 128 and 2048, k = 100 and two threads.
3. Hamming vs float at equal storage: B bytes per item as an 8B-bit code or a B/4-d
   float32 vector, same database size, same engine.
4. Hamming vs float at equal recall: seeded synthetic image features
   (:func:`cofisearch.datasets.make_paired`), binarised by sign random projection
   (:class:`cofisearch.encoders.RandomRotationBinarizer`) at 64 ... 2048 bits and reduced by
   PCA to 8 ... 256 float dimensions; recall@10 of each against exact 512-d search, and
   the speed of the cheapest code and of the cheapest float that reach each recall target.
5. The cascade (:class:`cofisearch.Cascade`): Hamming screen of ``n_candidates``, exact
   float rerank; recall@10 against exhaustive float search, and time per query.
6. The FiCo-ITR study's Table 7 comparison: exhaustive 2048-d float inner product vs
   exhaustive 64-bit Hamming, 1,000 queries over 100k candidates, one thread, on
   cofisearch and on faiss, beside the study's 6.5-6.8x (faiss, Xeon 8480+).

How it times: every database, query set and index is built before its timings; each
figure is the median of several samples after a warm-up call, the contenders of a group
sampled in interleaved rounds (:func:`cofisearch._measure.compare`) so that load from other
processes falls on all of them; short calls repeat within a sample. Results are checked
(distances recomputed from the returned ids on a few queries, and every contender against
cofisearch). A contender whose predicted time per call (from its own rate on smaller work)
exceeds the scale's budget is skipped and listed, which is what keeps NumPy and faiss
from dominating the run at the largest sizes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import numbers
import os
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ._files import json_default
from . import _measure as ms
from . import simd_level
from ._index import BinaryIndex, FloatIndex
from .cascade import Cascade

__all__ = ["BenchReport", "SCALES", "run"]

SCALES = ("default", "quick", "tiny")
SEED = 20240728
K = 10
# Width of the synthetic image features of the equal-recall and cascade sections.
_RECALL_DIM = 512
MIN_SIZE = 1_000

# FiCo-ITR Table 7 (faiss on a Xeon 8480+): (queries, candidates, IndexFlatIP 2048-d
# seconds, IndexBinaryFlat 64-bit seconds) for the whole query set.
STUDY_TABLE7 = (
    (100_000, 500_000, 57.17, 8.84),
    (500_000, 2_500_000, 1216.75, 181.83),
    (1_000_000, 5_000_000, 4728.18, 692.80),
)
STUDY_RATIO_TEXT = "6.5-6.8x"

# Bytes of working memory a run needs beyond its databases (NumPy's chunked temporaries,
# query sets, the interpreter): kept out of the memory checks' arithmetic below.
_HEADROOM_BYTES = 1 << 30
# The data, cofisearch's index and faiss's copy: every database is held three times.
_COPIES = 3
# Share of the available memory the float databases may take: the machine is shared,
# and a run that pushes others into swap measures nothing useful.
_FLOAT_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class _Plan:
    scale: str
    hamming_top: object  # largest 64-bit database of the size sweep; None: max_size
    hamming_nqs: tuple
    slice_n: int  # Hamming slices: widths, k = 100, two threads
    bits: tuple
    slice_nqs: tuple
    float_dim: int
    float_top: int
    float_nqs: tuple
    float_slice_n: int
    dims: tuple
    float_slice_nqs: tuple
    storage_n: int
    storage_bytes: tuple
    storage_nqs: tuple
    recall_n: int
    recall_nq: int
    recall_bits: tuple
    recall_dims: tuple
    recall_targets: tuple
    cascade_bits: tuple
    cascade_candidates: tuple
    study_n: int
    study_nq: int
    study_dim: int
    repeat: int
    study_repeat: int
    min_sample_s: float
    max_call_s: float  # skip a contender predicted to take longer per call


_PLANS = {
    "default": _Plan(
        scale="default",
        hamming_top=None,
        hamming_nqs=(1, 100, 1000),
        slice_n=1_000_000,
        bits=(64, 128, 256, 512),
        slice_nqs=(1, 1000),
        float_dim=512,
        float_top=1_000_000,
        float_nqs=(1, 100, 1000),
        float_slice_n=100_000,
        dims=(128, 512, 2048),
        float_slice_nqs=(1, 100),
        storage_n=1_000_000,
        storage_bytes=(8, 16, 32, 64, 256),
        storage_nqs=(1, 1000),
        recall_n=100_000,
        recall_nq=1000,
        recall_bits=(64, 128, 256, 512, 1024, 2048),
        recall_dims=(8, 16, 32, 64, 128, 256),
        recall_targets=(0.2, 0.4, 0.6),
        cascade_bits=(64, 256),
        cascade_candidates=(10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
        study_n=100_000,
        study_nq=1000,
        study_dim=2048,
        repeat=5,
        study_repeat=3,
        min_sample_s=0.02,
        max_call_s=2.0,
    ),
    "quick": _Plan(
        scale="quick",
        hamming_top=10_000_000,
        hamming_nqs=(1, 100),
        slice_n=100_000,
        bits=(64, 128, 256, 512),
        slice_nqs=(1, 100),
        float_dim=512,
        float_top=100_000,
        float_nqs=(1, 100),
        float_slice_n=10_000,
        dims=(128, 512, 2048),
        float_slice_nqs=(1, 100),
        storage_n=100_000,
        storage_bytes=(8, 32, 256),
        storage_nqs=(1, 100),
        recall_n=20_000,
        recall_nq=200,
        recall_bits=(64, 128, 256, 512, 1024, 2048),
        recall_dims=(8, 16, 32, 64, 128, 256),
        recall_targets=(0.2, 0.4, 0.6),
        cascade_bits=(64, 256),
        cascade_candidates=(10, 50, 100, 200, 500, 1000, 2000),
        study_n=100_000,
        study_nq=500,
        study_dim=2048,
        repeat=3,
        study_repeat=3,
        min_sample_s=0.01,
        max_call_s=0.5,
    ),
    # For the test suite: every section and plot, in a few seconds.
    "tiny": _Plan(
        scale="tiny",
        hamming_top=10_000,
        hamming_nqs=(1, 10),
        slice_n=1_000,
        bits=(64, 128),
        slice_nqs=(1, 10),
        float_dim=64,
        float_top=10_000,
        float_nqs=(1, 10),
        float_slice_n=1_000,
        dims=(32, 64),
        float_slice_nqs=(1, 10),
        storage_n=1_000,
        storage_bytes=(8, 32),
        storage_nqs=(1, 10),
        recall_n=1_000,
        recall_nq=20,
        recall_bits=(64, 256),
        recall_dims=(16, 64),
        recall_targets=(0.2,),
        cascade_bits=(64,),
        cascade_candidates=(10, 100),
        study_n=2_000,
        study_nq=20,
        study_dim=2048,
        repeat=1,
        study_repeat=1,
        min_sample_s=0.0,
        max_call_s=0.5,
    ),
}


# ---- the report -------------------------------------------------------------------------------


@dataclass
class BenchReport:
    """Everything one :func:`run` measured.

    ``measurements`` holds one dict per (contender, setting) with the raw samples
    (``times_s``, ``cpu_times_s``), their median and the parameters; the other tables are
    derived from them. ``skipped`` lists what the time budget left out and why;
    ``problems`` lists result checks that failed (empty on a healthy build).
    """

    config: dict
    machine: dict
    measurements: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    equal_storage: list = field(default_factory=list)
    equal_recall: list = field(default_factory=list)
    equal_recall_targets: list = field(default_factory=list)
    cascade: list = field(default_factory=list)
    study: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    elapsed_s: float = 0.0
    loadavg_after: list = None

    def rows(self, section, **params):
        """Measurements of ``section`` whose parameters equal ``params``."""
        return [
            m for m in self.measurements
            if m["section"] == section and all(m.get(k) == v for k, v in params.items())
        ]

    def to_dict(self):
        return {
            "format": "cofisearch.bench/1",
            "config": self.config,
            "machine": self.machine,
            "loadavg_after": self.loadavg_after,
            "elapsed_s": self.elapsed_s,
            "study_table7": self.study,
            "equal_storage": self.equal_storage,
            "equal_recall": self.equal_recall,
            "equal_recall_targets": self.equal_recall_targets,
            "cascade": self.cascade,
            "skipped": self.skipped,
            "problems": self.problems,
            "notes": self.notes,
            "measurements": self.measurements,
        }

    def to_markdown(self):
        parts = [f"# cofisearch bench ({self.config['scale']} scale)", ""]
        parts += [_machine_line(self.machine), ""]
        parts += [
            f"Medians of {self.config['repeat']} sample(s) after a warm-up, contenders "
            f"interleaved; k = {K} and one thread unless stated; times are per call (the whole "
            f"batch of queries); \"x\" columns are the contender's time over cofisearch's "
            f"(above 1: cofisearch is faster). Run took {self.elapsed_s:.0f} s; load average "
            f"{self.machine.get('loadavg')} before, {self.loadavg_after} after "
            f"({self.machine.get('logical_cpus')} CPUs).",
            "",
        ]
        parts += _study_markdown(self)
        parts += _sweep_markdown(self, "hamming")
        parts += _sweep_markdown(self, "float")
        parts += _storage_markdown(self)
        parts += _recall_markdown(self)
        parts += _cascade_markdown(self)
        if self.problems:
            parts += ["## Result checks that FAILED", ""] + [f"- {p}" for p in self.problems] + [""]
        if self.skipped:
            parts += ["## Skipped", ""]
            parts += [f"- {_skip_text(s)}" for s in self.skipped] + [""]
        if self.notes:
            parts += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        parts += ["## Machine", "", "```", ms.format_machine(self.machine), "```", ""]
        return "\n".join(parts)

    def save(self, out_dir):
        """Writes ``bench.json``, ``bench.md`` and (with matplotlib) the ``bench_*.png``
        plots into ``out_dir``, creating it; returns the paths written."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, "bench.json"), os.path.join(out_dir, "bench.md")]
        with open(paths[0], "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=json_default)
        with open(paths[1], "w") as f:
            f.write(self.to_markdown())
        paths += _plots(self, out_dir)
        return paths




# ---- run ------------------------------------------------------------------------------------


def run(*, max_size=10_000_000, quick=False, show_progress_bar=True, out=None, scale=None,
        seed=SEED):
    """Runs the benchmark and returns a :class:`BenchReport`.

    Parameters
    ----------
    max_size:
        The largest database, in items; every database of the run is at most this large,
        and the 64-bit Hamming sweep goes up to it in powers of ten (default 10M; at least
        1,000). A size whose databases would not fit in the available memory
        (``MemAvailable``) raises ``ValueError``. Float databases stop earlier, at the
        scale's limit or at what half the available memory holds.
    quick:
        Smaller sizes and batches, three samples per median: about a minute.
    show_progress_bar:
        A tqdm bar on stderr (when tqdm is installed).
    out:
        A text stream that receives a line per finished section, or None.
    scale:
        ``"default"``, ``"quick"`` (same as ``quick=True``) or ``"tiny"`` (seconds; for
        tests of the command); when given, it overrides ``quick``.
    seed:
        Seed of every generated database and query set.
    """
    plan = _PLANS[_check_scale(scale, quick)]
    max_size = _check_max_size(max_size)
    available = ms.mem_available_bytes()
    _check_memory(max_size, available)
    plan, notes = _fit_plan(plan, max_size, available)

    machine = ms.machine_info()
    config = {
        "scale": plan.scale,
        "max_size": max_size,
        "seed": seed,
        "k": K,
        "repeat": plan.repeat,
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.__dict__.items()},
        "mem_available_bytes": available,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    report = BenchReport(config=config, machine=machine, notes=notes)
    if not ms.faiss_available():
        report.notes.append("faiss-cpu is not installed: faiss left out (pip install faiss-cpu)")
    report.notes += [f"warning: {w}" for w in ms.blas_warnings(machine)]

    sections = [
        _HammingSweep(plan, seed),
        _FloatSweep(plan, seed),
        _EqualStorage(plan, seed),
        _RecallAndCascade(plan, seed),
        _Study(plan, seed),
    ]
    t0 = time.perf_counter()
    # One BLAS thread outside the timed calls (each contender sets its own count there):
    # on a shared 2-core machine, multi-threaded BLAS in the untimed data preparation (QR,
    # eigh, projections) ran 5-40x slower than one thread whenever other jobs held a core.
    with ms.blas_threads(1), _Runner(plan, report, sum(s.steps() for s in sections),
                                     show_progress_bar) as runner:
        for section in sections:
            section.run(runner)
            if out is not None:
                print(f"cofisearch bench: {section.title} done "
                      f"({time.perf_counter() - t0:.0f} s)", file=out, flush=True)
    report.elapsed_s = time.perf_counter() - t0
    report.loadavg_after = ms.machine_info()["loadavg"]
    if not _matplotlib_available():
        report.notes.append("matplotlib is not installed: no plots (pip install matplotlib)")
    return report


def _check_scale(scale, quick):
    if scale is None:
        return "quick" if quick else "default"
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def _check_max_size(max_size):
    if isinstance(max_size, bool) or not isinstance(max_size, numbers.Integral):
        raise TypeError(f"max_size must be an int, got {type(max_size).__name__} {max_size!r}")
    if max_size < MIN_SIZE:
        raise ValueError(
            f"max_size must be at least {MIN_SIZE:,} (the smallest database of the sweep), "
            f"got {max_size:,}"
        )
    return int(max_size)


def _hamming_need(max_size):
    # The size sweep's largest database: 64-bit codes, 8 bytes each, three copies.
    return _COPIES * max_size * 8 + _HEADROOM_BYTES


def _check_memory(max_size, available):
    # Checked against max_size itself, whatever the scale would use of it: the same
    # argument is then refused or accepted the same way by every scale.
    if available is None:
        return  # no /proc/meminfo: nothing to check against
    need = _hamming_need(max_size)
    if need > available:
        largest = max(MIN_SIZE, (available - _HEADROOM_BYTES) // (_COPIES * 8))
        raise ValueError(
            f"max_size={max_size:,} does not fit in memory: its 64-bit codes, held three "
            f"times (data, cofisearch, faiss), need about {need / 2**30:.1f} GiB and "
            f"{available / 2**30:.1f} GiB is available; use at most about {largest:,}"
        )


def _powers_of_ten(top):
    sizes = []
    n = MIN_SIZE
    while n <= top:
        sizes.append(n)
        n *= 10
    if not sizes or sizes[-1] != top:
        sizes.append(top)
    return sizes


def _largest_fitting(n, row_bytes, budget):
    # Step down by powers of ten so that the plots keep their round sizes.
    while n > MIN_SIZE and _COPIES * n * row_bytes > budget:
        n = max(MIN_SIZE, n // 10)
    return n


def _fit_plan(plan, max_size, available):
    """Caps every database at ``max_size`` and the float ones by memory; returns the
    adjusted plan and the notes that say what was capped and why."""
    notes = []
    hamming_top = max_size if plan.hamming_top is None else min(plan.hamming_top, max_size)
    budget = math.inf if available is None else available * _FLOAT_MEMORY_SHARE
    float_top = _largest_fitting(min(plan.float_top, max_size), plan.float_dim * 4, budget)
    study_n = _largest_fitting(min(plan.study_n, max_size), plan.study_dim * 4, budget)
    capped = replace(
        plan,
        hamming_top=hamming_top,
        slice_n=min(plan.slice_n, max_size),
        float_top=float_top,
        float_slice_n=min(plan.float_slice_n, float_top),
        storage_n=min(plan.storage_n, max_size),
        recall_n=min(plan.recall_n, max_size),
        study_n=study_n,
    )
    gb = capped.float_top * capped.float_dim * 4 / 1e9
    why = "the scale's limit"
    if capped.float_top < min(plan.float_top, max_size):
        why = f"what half of the {available / 2**30:.1f} GiB available holds"
    elif capped.float_top < plan.float_top:
        why = "max_size"
    notes.append(
        f"Float databases go up to {capped.float_top:,} x {capped.float_dim}-d float32 = "
        f"{gb:.2g} GB ({_COPIES * gb:.2g} GB with cofisearch's index and faiss's copy), set by "
        f"{why}; the 64-bit Hamming databases go up to {capped.hamming_top:,} codes."
    )
    if capped.study_n < plan.study_n:
        notes.append(
            f"The Table 7 rerun uses {capped.study_n:,} candidates instead of "
            f"{plan.study_n:,} (max_size or memory)."
        )
    return capped, notes


# ---- the runner: progress, timing, skipping, checks ----------------------------------------


def _progress_bar(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None  # the bar is a nicety; the run is the same without it
    return tqdm(total=total, desc="cofisearch bench", unit="step", file=sys.stderr,
                dynamic_ncols=True)


class _Runner:
    """Times groups of contenders into the report, skipping those over the time budget."""

    def __init__(self, plan, report, total_steps, show_progress_bar):
        self.plan = plan
        self.report = report
        self._bar = _progress_bar(total_steps, show_progress_bar)
        self._in_step = False
        # (engine, kind, nq) -> work units per second, from its latest (largest) group.
        self._rates = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            if self._in_step and exc[0] is None:
                self._bar.update(1)
            self._bar.close()

    def step(self, label):
        """Starts the next planned step (ending the previous one), named on the bar."""
        if self._bar is None:
            return
        if self._in_step:
            self._bar.update(1)
        self._in_step = True
        self._bar.set_postfix_str(label)

    def time(self, section, fns, params, *, repeat=None, settle=None):
        """Times ``fns`` (label -> zero-argument callable) in interleaved rounds; appends
        one measurement per label (``params[label]`` merged in) and returns them."""
        timings = ms.compare(
            fns,
            repeat=repeat or self.plan.repeat,
            warmup=1,
            min_sample_s=self.plan.min_sample_s,
            settle=settle,
        )
        rows = {}
        for label, t in timings.items():
            row = {"section": section, **params[label], **t.as_dict()}
            row["queries_per_s"] = row["nq"] / t.median if "nq" in row else None
            self.report.measurements.append(row)
            rows[label] = row
        return rows

    def group(self, section, kind, engines, database, queries, k, threads, *,
              budget=True, repeat=None, extra=None):
        """Times every engine on one (database, queries, k, threads) and checks the
        results; returns ``{engine: measurement}``."""
        n = database.shape[0]
        nq = queries.shape[0]
        width_key, width = _width(kind, database)
        work = n * nq * database.shape[1] * database.itemsize
        params = {"kind": kind, "n": n, width_key: width, "nq": nq, "k": k,
                  "threads": threads, "database_bytes": database.nbytes, **(extra or {})}
        results = {}
        fns = {}
        labels = {}
        with contextlib.ExitStack() as stack:
            for name, engine in engines.items():
                predicted = self._predict(name, kind, nq, work)
                if budget and predicted is not None and predicted > self.plan.max_call_s:
                    self.report.skipped.append({
                        "section": section, "engine": name, **params,
                        "predicted_s": predicted, "budget_s": self.plan.max_call_s,
                    })
                    continue
                search = stack.enter_context(engine.running(threads))
                fns[name] = _capturing(search, queries, k, results, name)
                labels[name] = {**params, "engine": name, "simd_level": _simd(name)}
            if not fns:
                return {}
            # Multi-threaded BLAS peers leave spinning threads behind (see ms.compare).
            settle = {name: ms.BLAS_SETTLE_S for name in fns
                      if threads > 1 and name in ("numpy", "faiss")}
            rows = self.time(section, fns, labels, repeat=repeat, settle=settle)
        for name, row in rows.items():
            self._rates[(name, kind, nq)] = work / row["median_s"]
        self._check(section, kind, database, queries, k, results, params)
        return rows

    def _predict(self, name, kind, nq, work):
        rate = self._rates.get((name, kind, nq))
        return None if rate is None else work / rate

    def _check(self, section, kind, database, queries, k, results, params):
        # A few queries suffice to catch a wrong kernel, and keep the float recomputation
        # (queries x k x dim in float64) small at d = 2048.
        m = min(queries.shape[0], 32)
        q = queries[:m]
        where = f"{section} {params}"
        arrays = {name: ms.result_arrays(r) for name, r in results.items()}
        arrays = {name: (d[:m], i[:m]) for name, (d, i) in arrays.items()}
        ref_name = "cofisearch" if "cofisearch" in arrays else next(iter(arrays), None)
        for name, (d, i) in arrays.items():
            if kind == ms.BINARY:
                problems = ms.hamming_problems(name, database, q, d, i, k)
            else:
                problems = ms.float_problems(name, database, q, d, i, k)
            if name != ref_name:
                problems += ms.agreement_problems(
                    name, ref_name, kind, d, arrays[ref_name][0], database=database, queries=q
                )
            self.report.problems += [f"{where}: {p}" for p in problems]


def _capturing(search, queries, k, results, name):
    # Keeps the latest answer for the checks; the dict store costs nanoseconds per call.
    def call():
        results[name] = search(queries, k)

    return call


def _width(kind, database):
    if kind == ms.BINARY:
        return "bits", database.shape[1] * 8
    return "dim", database.shape[1]


def _simd(name):
    return simd_level() if name == "cofisearch" else None


def _engines(kind, database, names=None):
    names = names or ms.contenders(simd_levels=[])
    return {n: ms.open_engine(n, kind, database) for n in names
            if n != "faiss" or ms.faiss_available()}


# ---- sections -------------------------------------------------------------------------------


class _HammingSweep:
    title = "Hamming sweep"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed
        groups = set()
        for n in _powers_of_ten(plan.hamming_top):
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
            db = ms.make_codes(n, bits, seed=self.seed)
            if bits not in queries:
                queries[bits] = ms.make_codes(max(self.plan.hamming_nqs + self.plan.slice_nqs),
                                              bits, seed=self.seed, stream=1)
            engines = _engines(ms.BINARY, db)
            for nq, k, threads in sorted(settings):
                runner.step(f"Hamming n={_n(n)} {bits} bits nq={nq} k={k} t={threads}")
                runner.group("hamming", ms.BINARY, engines, db, queries[bits][:nq], k, threads)
            del engines, db


class _FloatSweep:
    title = "float sweep"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed
        groups = set()
        for n in _powers_of_ten(plan.float_top):
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
            db = ms.make_vectors(n, dim, seed=self.seed)
            queries = ms.make_vectors(nq_max, dim, seed=self.seed, stream=1)
            engines = _engines(ms.FLOAT, db)
            for nq, k, threads in sorted(settings):
                runner.step(f"float n={_n(n)} d={dim} nq={nq} k={k} t={threads}")
                runner.group("float", ms.FLOAT, engines, db, queries[:nq], k, threads)
            del engines, db


class _EqualStorage:
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
            for kind, width in ((ms.BINARY, bits), (ms.FLOAT, dim)):
                runner.step(f"equal storage {nbytes} B: {kind}")
                if kind == ms.BINARY:
                    db = ms.make_codes(n, width, seed=self.seed)
                    q = ms.make_codes(nq_max, width, seed=self.seed, stream=1)
                else:
                    db = ms.make_vectors(n, width, seed=self.seed)
                    q = ms.make_vectors(nq_max, width, seed=self.seed, stream=1)
                engines = _engines(kind, db, ["cofisearch"])
                for nq in p.storage_nqs:
                    rows = runner.group("equal_storage", kind, engines, db, q[:nq], K, 1,
                                        extra={"bytes_per_item": nbytes})
                    if "cofisearch" in rows:
                        times[(kind, nq)] = rows["cofisearch"]["median_s"]
                del engines, db
            for nq in p.storage_nqs:
                hb, fl = times.get((ms.BINARY, nq)), times.get((ms.FLOAT, nq))
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


class _RecallAndCascade:
    title = "equal recall and cascade"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def steps(self):
        p = self.plan
        return 2 + len(p.recall_bits) + len(self._pca_dims()) + len(p.cascade_bits)

    def _pca_dims(self):
        # All the axes are a rotation: the exact float row already stands for them.
        return [d for d in self.plan.recall_dims if d < _RECALL_DIM]

    def run(self, runner):
        from . import datasets
        from .encoders import RandomRotationBinarizer

        p = self.plan
        report = runner.report
        runner.step("equal recall: synthetic data")
        data = datasets.make_paired(p.recall_n + p.recall_nq, captions_per_image=1,
                                    n_test=p.recall_nq, d_image=_RECALL_DIM, seed=self.seed)
        db = _unit_rows(data.train.image_features)
        queries = _unit_rows(data.test.image_features)
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
            f"Equal recall: {p.recall_n:,} synthetic {_RECALL_DIM}-d image features "
            f"(cofisearch.datasets.make_paired, seed {self.seed}), L2-normalised, and "
            f"{p.recall_nq:,} held-out queries; recall@{K} is the share of the exact "
            f"{_RECALL_DIM}-d top-{K} that a method's own top-{K} finds. Codes: sign random "
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
        width_key = "bits" if kind == ms.BINARY else "dim"
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


class _Study:
    title = "FiCo-ITR Table 7 rerun"

    def __init__(self, plan, seed):
        self.plan = plan
        self.seed = seed

    def steps(self):
        return 2

    def run(self, runner):
        p = self.plan
        names = ["cofisearch", "faiss"]
        runner.step(f"Table 7: {p.study_nq} queries x {_n(p.study_n)} 64-bit codes")
        codes = ms.make_codes(p.study_n, 64, seed=self.seed)
        code_q = ms.make_codes(p.study_nq, 64, seed=self.seed, stream=1)
        binary = runner.group("study", ms.BINARY, _engines(ms.BINARY, codes, names), codes,
                              code_q, K, 1, budget=False, repeat=p.study_repeat)
        del codes
        runner.step(f"Table 7: {p.study_nq} queries x {_n(p.study_n)} {p.study_dim}-d floats")
        vectors = ms.make_vectors(p.study_n, p.study_dim, seed=self.seed)
        vec_q = ms.make_vectors(p.study_nq, p.study_dim, seed=self.seed, stream=1)
        floats = runner.group("study", ms.FLOAT, _engines(ms.FLOAT, vectors, names), vectors,
                              vec_q, K, 1, budget=False, repeat=p.study_repeat)
        del vectors
        engines = {}
        for name in names:
            if name in binary and name in floats:
                f, b = floats[name]["median_s"], binary[name]["median_s"]
                engines[name] = {"float_s": f, "binary_s": b, "ratio": f / b}
        runner.report.study = {
            "n": p.study_n, "nq": p.study_nq, "dim": p.study_dim, "bits": 64, "k": K,
            "threads": 1, "engines": engines,
            "study": [{"nq": q, "n": n, "float_s": f, "binary_s": b, "ratio": f / b}
                      for q, n, f, b in STUDY_TABLE7],
        }


# ---- data helpers ---------------------------------------------------------------------------


def _unit_rows(x):
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)))


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


# ---- Markdown -------------------------------------------------------------------------------


def _n(n):
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


def _s(seconds):
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 1000 else f"{seconds:,.0f} s"


def _x(ratio):
    if ratio is None:
        return "—"
    return f"{ratio:.3g}x" if ratio < 1000 else f"{ratio:,.0f}x"


def _qps(q):
    if q is None:
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if q >= size:
            return f"{q / size:.3g}{unit}"
    return f"{q:.3g}"


def _table(header, rows):
    """A Markdown table padded to aligned columns, so it reads as plain text too."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(r) for r in cells[1:]
    ]


def _machine_line(m):
    faiss = f"faiss {m['faiss']}" if m.get("faiss") else "faiss not installed"
    return (
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
        f"{m['mem_total_gib']} GiB; cofisearch {m['cofisearch']} at SIMD level "
        f"**{m['simd_level']}** (available: {', '.join(m['simd_levels_available'])}); "
        f"numpy {m['numpy']}, {faiss}."
    )


def _study_markdown(report):
    s = report.study
    if not s:
        return []
    out = [
        f"## FiCo-ITR Table 7, rerun: exhaustive {s['dim']}-d float vs 64-bit Hamming",
        "",
        f"{s['nq']:,} queries over {s['n']:,} candidates, top-{s['k']}, one thread, the same "
        f"queries and candidates for both kinds (random data: speed does not depend on it).",
        "",
    ]
    rows = []
    for name, e in s["engines"].items():
        rows.append([f"{name} (this machine)", _s(e["float_s"]), _s(e["binary_s"]),
                     _x(e["ratio"])])
    for r in s["study"]:
        rows.append([f"study: faiss, {_n(r['nq'])} q x {_n(r['n'])} (Xeon 8480+)",
                     _s(r["float_s"]), _s(r["binary_s"]), _x(r["ratio"])])
    out += _table(["engine", f"{s['dim']}-d float IP", "64-bit Hamming", "float / binary"], rows)
    ours = s["engines"].get("cofisearch")
    faiss = s["engines"].get("faiss")
    line = "**float/binary time ratio: "
    line += f"cofisearch {_x(ours['ratio'])}" if ours else "cofisearch —"
    line += f", faiss {_x(faiss['ratio'])} (same run)" if faiss else ", faiss not installed"
    line += f"; the FiCo-ITR study measured {STUDY_RATIO_TEXT} with faiss.**"
    out += ["", line]
    if ours and faiss:
        out += ["", f"faiss takes {_x(faiss['binary_s'] / ours['binary_s'])} cofisearch's time "
                    f"on the 64-bit codes and {_x(faiss['float_s'] / ours['float_s'])} on the "
                    f"{s['dim']}-d floats. A ratio depends on the processor, the BLAS and the "
                    "sizes (the study's were far larger), so compare cofisearch's with faiss's "
                    "from the same run rather than with the study's."]
    return out + [""]


def _engine_names(rows):
    order = ["cofisearch", "faiss", "numpy"]
    present = {r["engine"] for r in rows}
    return [n for n in order if n in present]


def _sweep_markdown(report, section):
    rows = report.rows(section)
    if not rows:
        return []
    binary = section == "hamming"
    width_key = "bits" if binary else "dim"
    names = _engine_names(rows)
    groups = {}
    for r in rows:
        key = (r[width_key], r["n"], r["nq"], r["k"], r["threads"])
        groups.setdefault(key, {})[r["engine"]] = r
    skipped = {(s[width_key], s["n"], s["nq"], s["k"], s["threads"], s["engine"])
               for s in report.skipped if s["section"] == section}
    header = ["n", width_key, "queries", "k", "threads"] + names
    header += ["cofisearch rate"] + [f"{n} / cofisearch" for n in names if n != "cofisearch"]
    table = []
    for key in sorted(groups):
        g = groups[key]
        cells = [_n(key[1]), key[0], key[2], key[3], key[4]]
        for name in names:
            if name in g:
                cells.append(_s(g[name]["median_s"]))
            else:
                cells.append("skipped" if key + (name,) in skipped else "—")
        cofi = g.get("cofisearch")
        cells.append(_rate(cofi, binary) if cofi else "—")
        for name in names:
            if name == "cofisearch":
                continue
            cells.append(_x(g[name]["median_s"] / cofi["median_s"])
                         if cofi and name in g else "—")
        table.append(cells)
    title = ("## Hamming top-k: database size, code length, queries, k, threads" if binary
             else "## Float inner-product top-k: database size, dimension, queries, k, threads")
    rate = ("codes scanned per second" if binary
            else "GB/s streamed for one query, GFLOP/s for batches")
    return [title, "", f"Rate: {rate}.", ""] + _table(header, table) + [""]


def _rate(row, binary):
    t = row["median_s"]
    if binary:
        return f"{row['n'] * row['nq'] / t / 1e9:.3g} G codes/s"
    if row["nq"] == 1:
        return f"{row['database_bytes'] / t / 1e9:.3g} GB/s"
    return f"{2.0 * row['n'] * row['dim'] * row['nq'] / t / 1e9:.3g} GFLOP/s"


def _storage_markdown(report):
    if not report.equal_storage:
        return []
    rows = [
        [f"{e['bytes_per_item']} B", f"{e['bits']} bits", f"{e['dim']}-d", e["nq"],
         _s(e["hamming_s"]), _s(e["float_s"]), _x(e["float_over_hamming"])]
        for e in report.equal_storage
    ]
    n = report.equal_storage[0]["n"]
    return [
        "## Hamming vs float at equal storage (cofisearch)",
        "",
        f"{n:,} items of the same size in bytes, top-{K}, one thread.",
        "",
    ] + _table(["bytes/item", "code", "float", "queries", "Hamming", "float",
                "float / Hamming"], rows) + [""]


def _recall_markdown(report):
    if not report.equal_recall:
        return []
    nq = report.equal_recall[0]["batch_nq"]
    rows = [
        [r["family"], r["width"], f"{r['bytes_per_item']} B", f"{r['recall']:.3f}",
         _s(r["one_query_s"]), _s(r["batch_s"]), _qps(nq / r["batch_s"])]
        for r in report.equal_recall
    ]
    out = [
        f"## Hamming vs float at equal recall@{K} (cofisearch)",
        "",
        f"{report.equal_recall[0]['n']:,} items; times for 1 query and for {nq:,} queries.",
        "",
    ]
    out += _table(["method", "bits / dim", "bytes/item", f"recall@{K}", "1 query",
                   f"{nq} queries", "queries/s"], rows)
    if report.equal_recall_targets:
        out += ["", "The cheapest code and the cheapest float that reach each recall:", ""]
        trows = []
        for t in report.equal_recall_targets:
            b, f = t["binary (SRP)"], t["float (PCA)"]
            trows.append([
                f">= {t['target']:.2f}",
                f"{b['width']} bits ({b['recall']:.2f}): {_s(b['batch_s'])}" if b else "none",
                f"{f['width']}-d ({f['recall']:.2f}): {_s(f['batch_s'])}" if f else "none",
                _x(t["float_over_binary_batch_s"]),
                _x(t["float_over_binary_one_query_s"]),
                _x(t["exact_over_binary_batch_s"]),
            ])
        out += _table(["recall target", f"code, {nq} queries", f"float, {nq} queries",
                       "float / code (batch)", "float / code (1 query)",
                       "exact float / code (batch)"], trows)
    return out + [""]


def _cascade_markdown(report):
    if not report.cascade:
        return []
    first = report.cascade[0]
    rows = [
        [f"{c['bits']} bits", c["n_candidates"], f"{c['recall_at_10']:.3f}",
         f"{c['ms_per_query']:.3g}", f"{c['coarse_ms_per_query']:.3g}",
         f"{c['fine_ms_per_query']:.3g}", _x(c["exact_float_ms_per_query"] / c["ms_per_query"])]
        for c in report.cascade
    ]
    return [
        f"## Cascade: recall@{K} against latency (cofisearch)",
        "",
        f"Hamming screen of n_candidates, exact float rerank, over {first['n']:,} items; "
        f"{first['nq']:,} queries in one batch, one thread; exhaustive float search takes "
        f"{first['exact_float_ms_per_query']:.3g} ms per query (recall 1).",
        "",
    ] + _table(["screen", "n_candidates", f"recall@{K}", "ms/query", "screen ms",
                "rerank ms", "speed-up vs exact float"], rows) + [""]


def _skip_text(s):
    width = f"{s['bits']} bits" if "bits" in s else f"d={s['dim']}"
    return (f"{s['section']}: {s['engine']} at n={s['n']:,}, {width}, {s['nq']} queries, "
            f"k={s['k']}, {s['threads']} thread(s): predicted {s['predicted_s']:.2g} s per "
            f"call, over the {s['budget_s']:g} s budget of this scale")


# ---- plots ----------------------------------------------------------------------------------

_STYLE = {"cofisearch": ("C0", "o"), "faiss": ("C1", "s"), "numpy": ("C2", "^")}


def _matplotlib_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plots(report, out_dir):
    if not _matplotlib_available():
        return []
    # Figure + its own Agg canvas: no pyplot, so no global backend is chosen or changed.
    from matplotlib.figure import Figure

    makers = [
        ("bench_hamming_scaling.png", _plot_scaling, "hamming"),
        ("bench_float_scaling.png", _plot_scaling, "float"),
        ("bench_equal_storage.png", _plot_storage, None),
        ("bench_equal_recall.png", _plot_recall, None),
        ("bench_cascade.png", _plot_cascade, None),
        ("bench_table7.png", _plot_study, None),
    ]
    paths = []
    for name, make, arg in makers:
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        drawn = make(fig, report, arg) if arg else make(fig, report)
        if drawn:
            path = os.path.join(out_dir, name)
            fig.savefig(path, dpi=110)
            paths.append(path)
    return paths


def _plot_scaling(fig, report, section):
    plan = report.config["plan"]
    if section == "hamming":
        width_key, width, nqs = "bits", 64, plan["hamming_nqs"]
        what = "Hamming top-10, 64-bit codes"
    else:
        width_key, width, nqs = "dim", plan["float_dim"], plan["float_nqs"]
        what = f"inner-product top-10, {width}-d float32"
    rows = [r for r in report.rows(section, k=K, threads=1) if r[width_key] == width]
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) < 2:
        return False
    axes = fig.subplots(1, len(nqs), squeeze=False)[0]
    for ax, nq in zip(axes, nqs):
        for name in _engine_names(rows):
            pts = sorted((r["n"], r["queries_per_s"]) for r in rows
                         if r["engine"] == name and r["nq"] == nq)
            if pts:
                color, marker = _STYLE[name]
                ax.plot(*zip(*pts), marker=marker, color=color, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{nq:,} {'query' if nq == 1 else 'queries'} per call")
        ax.set_xlabel("database size (items)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("queries per second")
    fig.suptitle(f"{what}, one thread: queries/s against database size "
                 f"(points missing: over the time budget)")
    return True


def _plot_storage(fig, report):
    entries = report.equal_storage
    if not entries:
        return False
    nqs = sorted({e["nq"] for e in entries})
    axes = fig.subplots(1, len(nqs), squeeze=False)[0]
    for ax, nq in zip(axes, nqs):
        es = sorted((e for e in entries if e["nq"] == nq), key=lambda e: e["bytes_per_item"])
        x = [e["bytes_per_item"] for e in es]
        ax.plot(x, [nq / e["hamming_s"] if e["hamming_s"] else np.nan for e in es],
                "o-", color="C0", label="Hamming (8 bits per byte)")
        ax.plot(x, [nq / e["float_s"] if e["float_s"] else np.nan for e in es],
                "s-", color="C3", label="float32 (4 bytes per dimension)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{b} B\n{b * 8} bits\n{b // 4}-d" for b in x])
        ax.set_title(f"{nq:,} {'query' if nq == 1 else 'queries'} per call")
        ax.set_xlabel("bytes per item (as code bits, as float dimensions)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("queries per second")
    fig.suptitle(f"Hamming vs float at equal storage, {entries[0]['n']:,} items, top-10, "
                 "one thread (cofisearch)")
    return True


def _plot_recall(fig, report):
    rows = report.equal_recall
    if not rows:
        return False
    nq = rows[0]["batch_nq"]
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, key, title in ((axes[0], "one_query_s", "1 query per call"),
                           (axes[1], "batch_s", f"{nq:,} queries per call")):
        per_call = 1 if key == "one_query_s" else nq
        for family, color, marker, unit in (("binary (SRP)", "C0", "o", " b"),
                                            ("float (PCA)", "C3", "s", "-d")):
            fam = sorted((r for r in rows if r["family"] == family), key=lambda r: r["width"])
            if not fam:
                continue
            xs = [r["recall"] for r in fam]
            ys = [per_call / r[key] for r in fam]
            ax.plot(xs, ys, marker=marker, color=color, label=family)
            for r, x, y in zip(fam, xs, ys):
                ax.annotate(f"{r['width']}{unit}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=color)
        exact = [r for r in rows if r["family"] == "exact float"]
        if exact:
            ax.plot([1.0], [per_call / exact[0][key]], "*", color="k", markersize=12,
                    label=f"exact float ({exact[0]['width']}-d)")
        for t in report.config["plan"]["recall_targets"]:
            ax.axvline(t, color="0.7", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlim(0, 1.05)
        ax.set_xlabel(f"recall@{K} against exact float search")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("queries per second")
    fig.suptitle(f"Hamming vs float at equal recall, {rows[0]['n']:,} synthetic "
                 f"{_RECALL_DIM}-d items, one thread (cofisearch); dotted: recall targets")
    return True


def _plot_cascade(fig, report):
    rows = report.cascade
    if not rows:
        return False
    ax = fig.subplots(1, 1)
    for i, bits in enumerate(sorted({c["bits"] for c in rows})):
        cs = sorted((c for c in rows if c["bits"] == bits), key=lambda c: c["n_candidates"])
        color = f"C{i}"
        xs = [c["ms_per_query"] for c in cs]
        ys = [c["recall_at_10"] for c in cs]
        ax.plot(xs, ys, "o-", color=color, label=f"{bits}-bit screen + float rerank")
        for c, x, y in zip(cs, xs, ys):
            ax.annotate(str(c["n_candidates"]), (x, y), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=color)
    exact_ms = rows[0]["exact_float_ms_per_query"]
    ax.plot([exact_ms], [1.0], "*", color="k", markersize=12, label="exhaustive float")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("ms per query (batch of queries, one thread)")
    ax.set_ylabel(f"recall@{K} against exhaustive float")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"Cascade over {rows[0]['n']:,} items: recall against latency "
                 "(labels: n_candidates)")
    return True


def _plot_study(fig, report):
    s = report.study
    if not s or not s["engines"]:
        return False
    ax = fig.subplots(1, 1)
    labels, ratios, colors = [], [], []
    for r in s["study"]:
        labels.append(f"study: faiss\n{_n(r['nq'])} q x {_n(r['n'])}")
        ratios.append(r["ratio"])
        colors.append("0.6")
    for name, e in s["engines"].items():
        labels.append(f"{name}, this machine\n{_n(s['nq'])} q x {_n(s['n'])}")
        ratios.append(e["ratio"])
        colors.append(_STYLE[name][0])
    y = np.arange(len(labels))
    ax.barh(y, ratios, color=colors)
    for yi, r in zip(y, ratios):
        ax.annotate(_x(r), (r, yi), textcoords="offset points", xytext=(4, -3), fontsize=9)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("time of exhaustive 2048-d float search / time of exhaustive 64-bit Hamming")
    ax.set_title("FiCo-ITR Table 7, rerun: how much faster 64-bit codes are than 2048-d "
                 "floats (one thread)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return True

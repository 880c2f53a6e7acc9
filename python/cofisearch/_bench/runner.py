"""Runs ``cofisearch bench``: checks the sizes, runs the sections, saves the report.

:func:`check_run` validates a scale and ``max_size`` against the memory available and
returns the fitted plan, before anything is built (the command calls it before it
touches its output directory); :func:`run` runs every section of
:mod:`~cofisearch._bench.sections` through a :class:`Runner` and returns the
:class:`~.report.BenchReport`; :func:`save` writes it with its plots.

How it times: every database, query set and index is built before its timings; each
figure is the median of several samples after a warm-up call, the contenders of a group
sampled in interleaved rounds (:func:`~.measure.compare`); short calls repeat within a
sample. Results are checked (:func:`~.checks.group_problems`). A contender whose
predicted time per call (from its own rate on smaller work) exceeds the scale's budget
is skipped and listed, which keeps NumPy and faiss from dominating the largest sizes.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time

from .. import simd_level
from .checks import group_problems
from .contenders import BINARY, capturing
from .data import SEED
from .machine import blas_threads, blas_warnings, faiss_available, machine_info, mem_available_bytes
from .measure import BLAS_SETTLE_S, compare
from .plans import BENCH_PLANS, check_max_size, check_memory, check_scale, fit_plan
from .plots import matplotlib_available, save_plots
from .report import BenchReport
from .sections import (
    K,
    AllVsAll,
    CodeWidths,
    EqualStorage,
    FloatSweep,
    HammingSweep,
    RecallAndCascade,
    Table6,
    Table7,
)

__all__ = ["Runner", "check_run", "run", "save"]


def check_run(scale="default", max_size=10_000_000):
    """Checks ``scale`` and ``max_size`` (type, bounds, and that the largest database
    fits in the memory available) and returns ``(plan, notes, available_bytes)``: the
    scale's plan capped by ``max_size`` and memory, and the notes that say what was
    capped."""
    plan = BENCH_PLANS[check_scale(scale)]
    max_size = check_max_size(max_size)
    available = mem_available_bytes()
    check_memory(max_size, available)
    plan, notes = fit_plan(plan, max_size, available)
    return plan, notes, available


def run(*, scale="default", max_size=10_000_000, show_progress_bar=True, out=None, seed=SEED):
    """Runs the benchmark and returns a :class:`~.report.BenchReport`.

    Parameters
    ----------
    scale:
        One of :data:`~.plans.SCALES`: ``"tiny"`` (seconds; every section and plot, for
        tests), ``"quick"`` (about a minute), ``"default"`` or ``"full"`` (the default
        sizes, more samples, a budget that skips almost nothing).
    max_size:
        The largest database, in items; every database of the run is at most this large,
        and the 64-bit Hamming sweep goes up to it in powers of ten (default 10M; at least
        1,000). A size whose databases would not fit in the available memory
        (``MemAvailable``) raises ``ValueError``. Float databases stop earlier, at the
        scale's limit or at what half the available memory holds.
    show_progress_bar:
        A tqdm bar on stderr (when tqdm is installed).
    out:
        A text stream that receives a line per finished section, or None.
    seed:
        Seed of every generated database and query set.
    """
    plan, notes, available = check_run(scale, max_size)
    machine = machine_info()
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
    if not faiss_available():
        report.notes.append("faiss-cpu is not installed: faiss left out (pip install faiss-cpu)")
    report.notes += [f"warning: {w}" for w in blas_warnings(machine)]

    sections = [
        HammingSweep(plan, seed),
        FloatSweep(plan, seed),
        EqualStorage(plan, seed),
        RecallAndCascade(plan, seed),
        Table7(plan, seed),
        Table6(plan, seed),
        CodeWidths(plan, seed),
        AllVsAll(plan, seed),
    ]
    t0 = time.perf_counter()
    # One BLAS thread outside the timed calls (each contender sets its own count there):
    # on a shared machine, multi-threaded BLAS in the untimed data preparation (QR, eigh,
    # projections) runs several times slower than one thread whenever others hold a core.
    with blas_threads(1), Runner(plan, report, sum(s.steps() for s in sections),
                                 show_progress_bar) as runner:
        for section in sections:
            section.run(runner)
            if out is not None:
                print(f"cofisearch bench: {section.title} done "
                      f"({time.perf_counter() - t0:.0f} s)", file=out, flush=True)
    report.elapsed_s = time.perf_counter() - t0
    report.loadavg_after = machine_info()["loadavg"]
    if not matplotlib_available():
        report.notes.append("matplotlib is not installed: no plots (pip install matplotlib)")
    return report


def save(report, out_dir):
    """Writes ``bench.json``, ``bench.md`` and (with matplotlib) the ``bench_*.png`` plots
    into ``out_dir``; returns the paths written."""
    return report.save(out_dir) + save_plots(report, out_dir)


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


class Runner:
    """Times groups of contenders into the report, skipping those over the time budget."""

    def __init__(self, plan, report, total_steps, show_progress_bar):
        self.plan = plan
        self.report = report
        self._bar = _progress_bar(total_steps, show_progress_bar)
        self._in_step = False
        # (engine, kind, nq or rate_key) -> work units per second, from its latest
        # (largest) group.
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
        timings = compare(
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
              budget=True, repeat=None, extra=None, rate_key=None, always=()):
        """Times every engine on one (database, queries, k, threads) and checks the
        results; returns ``{engine: measurement}``. With ``budget``, an engine predicted
        over the plan's time per call is skipped (unless named in ``always``); its time
        is predicted from its latest rate for the same kind and number of queries, or
        for the same ``rate_key`` when given (groups whose work compares across batch
        sizes)."""
        n = database.shape[0]
        nq = queries.shape[0]
        rate_key = nq if rate_key is None else rate_key
        width_key, width = _width(kind, database)
        work = n * nq * database.shape[1] * database.itemsize
        params = {"kind": kind, "n": n, width_key: width, "nq": nq, "k": k,
                  "threads": threads, "database_bytes": database.nbytes, **(extra or {})}
        results = {}
        fns = {}
        labels = {}
        with contextlib.ExitStack() as stack:
            for name, engine in engines.items():
                predicted = self._predict(name, kind, rate_key, work)
                over = predicted is not None and predicted > self.plan.max_call_s
                if budget and over and name not in always:
                    self.report.skipped.append({
                        "section": section, "engine": name, **params,
                        "predicted_s": predicted, "budget_s": self.plan.max_call_s,
                    })
                    continue
                search = stack.enter_context(engine.running(threads))
                fns[name] = capturing(search, queries, k, results, name)
                labels[name] = {**params, "engine": name, "simd_level": _simd(name)}
            if not fns:
                return {}
            # Multi-threaded BLAS peers leave spinning threads behind (BLAS_SETTLE_S).
            settle = {name: BLAS_SETTLE_S for name in fns
                      if threads > 1 and name in ("numpy", "faiss")}
            rows = self.time(section, fns, labels, repeat=repeat, settle=settle)
        for name, row in rows.items():
            self._rates[(name, kind, rate_key)] = work / row["median_s"]
        self._check(section, kind, database, queries, k, results, params)
        return rows

    def _predict(self, name, kind, rate_key, work):
        rate = self._rates.get((name, kind, rate_key))
        return None if rate is None else work / rate

    def _check(self, section, kind, database, queries, k, results, params):
        where = f"{section} {params}"
        problems = group_problems(kind, database, queries, k, results)
        self.report.problems += [f"{where}: {p}" for p in problems]


def _width(kind, database):
    if kind == BINARY:
        return "bits", database.shape[1] * 8
    return "dim", database.shape[1]


def _simd(name):
    return simd_level() if name == "cofisearch" else None

"""Shared machinery of the benchmark suites: scales, cases, data and engine caches.

The data, contenders, checks and calibration come from the harness
(:mod:`cofisearch._bench`); pytest-benchmark records the rounds. Scale (collection
time), one of the harness's named scales:

- ``COFISEARCH_BENCH_SCALE=default`` (the default): sizes that run in a few minutes on
  a 2-core machine; ``quick``: one database size per kind, a minute or two;
- ``COFISEARCH_BENCH_SCALE=full``: the sizes of issue 3 (1M codes, 10M for the
  bandwidth check, d = 512 with 200k and 1M vectors); about an hour;
- ``COFISEARCH_BENCH_SCALE=tiny`` or ``COFISEARCH_BENCH_SMOKE=1``: tiny sizes, every
  parameter combination, for CI. ``--benchmark-disable`` without an explicit scale also
  selects it, since nothing is timed then.

Every test checks its contender's results (shapes, ids, distances recomputed from the
ids) and, within a benchmark group, that all contenders found the same top-k distances.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest

import cofisearch
from cofisearch._bench.checks import agreement_problems
from cofisearch._bench.contenders import BINARY, FLOAT, contenders, open_engine
from cofisearch._bench.data import make_codes, make_vectors
from cofisearch._bench.machine import blas_warnings, faiss_available, machine_info
from cofisearch._bench.measure import MEMORY_READERS, calls_per_sample
from cofisearch._bench.plans import SCALES

# Per scale: the axes of the grid. Slow variants (SIMD levels below the chosen one,
# NumPy) run only where queries x database bytes stay under `slow_work_bytes`, and only
# at k = 10 and one thread: they are there to show the gap, not to be swept.
_AXES = {
    "tiny": {
        "hamming_n": [1_000],
        "bits": [64, 128, 256, 512, 1024],
        "float_n": [1_000],
        "dims": [128, 512, 2048],
        "nq": [1, 10, 100],
        "k": [10, 100],
        "threads": [1, 2],
        "cold_n": 20_000,
        "slow_work_bytes": math.inf,
        "prune": False,
    },
    "quick": {
        "hamming_n": [100_000],
        "bits": [64, 256, 1024],
        "float_n": [10_000],
        "dims": [128, 512, 2048],
        "nq": [1, 100],
        "k": [10, 100],
        "threads": [1, 2],
        "cold_n": 10_000_000,
        "slow_work_bytes": 1 << 30,
        "prune": True,
    },
    "default": {
        "hamming_n": [10_000, 100_000],
        # The ends and the middle of the widths; full scale sweeps all five.
        "bits": [64, 256, 1024],
        "float_n": [2_000, 10_000],
        "dims": [128, 512, 2048],
        "nq": [1, 10, 100, 1000],
        "k": [10, 100],
        "threads": [1, 2],
        "cold_n": 10_000_000,
        "slow_work_bytes": 1 << 30,
        "prune": True,
    },
    "full": {
        "hamming_n": [100_000, 1_000_000],
        "bits": [64, 128, 256, 512, 1024],
        # d = 2048 x 1M would be 8 GB (16 GB with faiss's copy); the study's scale instead.
        "float_n": {128: [200_000, 1_000_000], 512: [200_000, 1_000_000], 2048: [100_000, 200_000]},
        "dims": [128, 512, 2048],
        "nq": [1, 10, 100, 1000],
        "k": [10, 100],
        "threads": [1, 2],
        "cold_n": 10_000_000,
        "slow_work_bytes": 16 << 30,
        "prune": True,
    },
}

def bench_scale(config):
    env = os.environ.get("COFISEARCH_BENCH_SCALE", "").strip().lower()
    if env:
        if env not in SCALES:
            raise pytest.UsageError(f"COFISEARCH_BENCH_SCALE must be one of {SCALES}, got {env!r}")
        return env
    if os.environ.get("COFISEARCH_BENCH_SMOKE", "").strip() not in ("", "0"):
        return "tiny"
    if config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"):
        return "tiny"
    return "default"


@dataclass(frozen=True)
class Case:
    kind: str  # BINARY or FLOAT
    n: int
    width: int  # bits (binary) or dimension (float)
    nq: int
    k: int
    threads: int
    contender: str

    @property
    def width_name(self):
        return "bits" if self.kind == BINARY else "dim"

    @property
    def row_bytes(self):
        return self.width // 8 if self.kind == BINARY else self.width * 4

    @property
    def group(self):
        return (
            f"{self.kind} n={self.n} {self.width_name}={self.width} "
            f"nq={self.nq} k={self.k} threads={self.threads}"
        )

    @property
    def id(self):
        return (
            f"n{self.n}-{self.width_name}{self.width}-q{self.nq}-k{self.k}"
            f"-t{self.threads}-{self.contender}"
        )

    def params(self):
        level = self.contender.partition("-")[2] or (
            cofisearch.simd_level() if self.contender == "cofisearch" else None
        )
        return {
            "kind": self.kind,
            "contender": self.contender,
            "n": self.n,
            self.width_name: self.width,
            "nq": self.nq,
            "k": self.k,
            "threads": self.threads,
            "simd_level": level,
            "database_bytes": self.n * self.row_bytes,
        }


def _keep(case, axes):
    if not axes["prune"]:
        return True
    name = case.contender
    if name in ("cofisearch", "faiss"):
        return True
    if case.k != 10 or case.threads != 1:
        return False
    return case.nq * case.n * case.row_bytes <= axes["slow_work_bytes"]


def _cases(kind, scale):
    axes = _AXES[scale]
    widths = axes["bits"] if kind == BINARY else axes["dims"]
    sizes = axes["hamming_n"] if kind == BINARY else axes["float_n"]
    out = []
    # Data outermost, then contender: consecutive cases share one database and one built
    # index, and each group's contenders all run within the same session.
    for width in widths:
        ns = sizes[width] if isinstance(sizes, dict) else sizes
        for n in ns:
            # faiss stays listed when missing so that its cases show up as skipped.
            for contender in contenders(keep_missing_faiss=True):
                for nq in axes["nq"]:
                    for k in axes["k"]:
                        for threads in axes["threads"]:
                            case = Case(kind, n, width, nq, k, threads, contender)
                            if _keep(case, axes):
                                out.append(case)
    return out


def _cold_cases(scale):
    n = _AXES[scale]["cold_n"]
    return [Case(BINARY, n, 64, 1, 10, 1, c) for c in ("cofisearch", "faiss", "numpy")]


def _reader_cases(scale):
    n = _AXES[scale]["cold_n"]
    return [Case(BINARY, n, 64, 1, 10, 1, r) for r in MEMORY_READERS]


def pytest_generate_tests(metafunc):
    scale = bench_scale(metafunc.config)
    for fixture, make in (
        ("hamming_case", lambda: _cases(BINARY, scale)),
        ("float_case", lambda: _cases(FLOAT, scale)),
        ("cold_case", lambda: _cold_cases(scale)),
        ("reader_case", lambda: _reader_cases(scale)),
    ):
        if fixture in metafunc.fixturenames:
            cases = make()
            metafunc.parametrize(fixture, cases, ids=[c.id for c in cases])


def pytest_configure(config):
    bench_scale(config)  # a misspelt scale stops the run with one line, before collection


def pytest_report_header(config):
    scale = bench_scale(config)
    return [
        f"cofisearch bench scale: {scale} (COFISEARCH_BENCH_SCALE={'|'.join(SCALES)})",
        f"cofisearch SIMD level: {cofisearch.simd_level()} of {cofisearch.available_simd_levels()}",
        *[f"warning: {w}" for w in blas_warnings()],
    ]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cofisearch_machine"] = machine_info()


# ---- data and engines -----------------------------------------------------------------------


class _Workspace:
    """Holds one database at a time (with the indexes built over it) and the query sets.

    Cases arrive grouped by database, so a cache of one keeps memory at a single
    database (plus one faiss copy) even at full scale.
    """

    max_nq = 1000

    def __init__(self):
        self._key = None
        self._db = None
        self._engines = {}
        self._queries = {}

    def database(self, kind, n, width):
        key = (kind, n, width)
        if key != self._key:
            self._engines.clear()
            self._db = None  # free the old one before building the new one
            if kind == BINARY:
                self._db = make_codes(n, width)
            else:
                self._db = make_vectors(n, width)
            self._key = key
        return self._db

    def queries(self, kind, width, nq):
        # One query set per width, cut to size: every batch is a prefix of the largest.
        key = (kind, width)
        if key not in self._queries or self._queries[key].shape[0] < nq:
            m = max(self.max_nq, nq)
            if kind == BINARY:
                q = make_codes(m, width, stream=1)
            else:
                q = make_vectors(m, width, stream=1)
            self._queries[key] = q
        return self._queries[key][:nq]

    def engine(self, contender, kind, n, width):
        if contender == "faiss" and not faiss_available():
            pytest.skip("faiss-cpu is not installed (pip install faiss-cpu)")
        db = self.database(kind, n, width)
        if contender not in self._engines:
            self._engines[contender] = open_engine(contender, kind, db)
        return self._engines[contender]


@pytest.fixture(scope="session")
def workspace():
    return _Workspace()


@pytest.fixture(scope="session")
def machine():
    return machine_info()


class _Agreement:
    """First contender's top-k distances per group; later contenders must match them."""

    def __init__(self):
        self._first = {}

    def problems(self, case, distances, database, queries, *, group=None):
        first = self._first.setdefault(group or case.group, (case.contender, distances))
        if first[0] == case.contender:
            return []
        return agreement_problems(
            case.contender, first[0], case.kind, distances, first[1],
            database=database, queries=queries,
        )


@pytest.fixture(scope="session")
def agreement():
    return _Agreement()


# Shortest round: short calls repeat within a round so the timer's resolution and the
# call overhead of pytest-benchmark do not show in the per-call figure.
_MIN_ROUND_S = 0.005


@pytest.fixture
def run_timed(benchmark, request):
    """``run_timed(fn, *args)``: times ``fn(*args)`` with pytest-benchmark (one warm-up,
    ``--benchmark-min-rounds`` rounds, default 5) and returns its result. With
    ``--benchmark-disable`` it calls ``fn`` once."""
    rounds = request.config.getoption("benchmark_min_rounds")

    def run(fn, *args, setup=None):
        if not benchmark.enabled:
            return benchmark.pedantic(fn, args=args, rounds=1)
        if setup is not None:
            # A per-round setup (cache flush) rules out repeating within a round.
            def prepared():
                setup()
                return args, {}

            return benchmark.pedantic(fn, setup=prepared, rounds=rounds, warmup_rounds=1)
        iterations = calls_per_sample(lambda: fn(*args), warmup=1, min_sample_s=_MIN_ROUND_S)
        return benchmark.pedantic(fn, args=args, rounds=rounds, iterations=iterations)

    return run

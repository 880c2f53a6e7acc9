"""Measuring helpers shared by ``cofisearch bench`` and the suites in ``bench/``.

Private: ``bench/cofibench.py`` re-exports it for the pytest-benchmark suites and
``bench/targets.py``, and :mod:`cofisearch.benchmark` builds the command's report on it.
Everything here depends only on NumPy and cofisearch; faiss-cpu and threadpoolctl are
used when installed, and nothing imports pytest.

The pieces:

- data: :func:`make_codes`, :func:`make_vectors` (seeded; generated before any timing);
- contenders: :func:`contenders` lists the engine names for a kind of data,
  :func:`open_engine` binds one to a database (the index is built here, untimed), and
  ``engine.running(threads)`` fixes thread counts (and the SIMD level) for a block of
  searches, yielding the bare ``search(queries, k)`` callable to time;
- timing: :func:`measure` and :func:`compare` (median of N samples after a warm-up,
  contenders interleaved round by round so that a noisy neighbour hurts all alike);
- hardware references: :func:`read_bandwidth` and :func:`sgemm_gflops`;
- checks: :func:`hamming_problems`, :func:`float_problems`, :func:`agreement_problems`
  return a list of human-readable problems, empty when the results are right;
- :func:`machine_info` (the description recorded beside every timing),
  :func:`format_machine` (the same as lines of text) and :func:`mem_available_bytes`.

NumPy, faiss and BLAS
---------------------
faiss's ``IndexFlatIP`` answers batches (queries x dim >= 128k) with the sgemm of the
OpenBLAS bundled in its wheel (0.3.15); NumPy's matmul uses its own (0.3.31). Which
kernels they run decides how strong the float peers are, so ``machine_info()["blas"]``
records each library's architecture and ``blas_warnings`` flags a weak choice:

- This environment sets ``OPENBLAS_CORETYPE=Haswell`` and ``OPENBLAS_L2_SIZE=512`` (and
  passes ``OPENBLAS_*`` through tox): both libraries then run AVX2 kernels. Measured
  here, one thread, on a busy machine: NumPy sgemm (2048^3) 62 GFLOP/s; faiss
  ``IndexFlatIP``, 1,000 queries x 100k x 512: 63-81 GFLOP/s.
- ``OPENBLAS_CORETYPE=SkylakeX`` gives both the AVX-512 kernels: NumPy 120-160 GFLOP/s,
  faiss 110-170 GFLOP/s on the same batch, up to twice as fast.
- With neither variable set, NumPy's OpenBLAS picks SkylakeX itself but faiss's older
  one does not know this processor (AMD family 26) and falls back to ``Barcelona``
  kernels (about 34 GFLOP/s).

OpenBLAS reads these variables once, when it loads, so they must be in the environment
before Python starts; nothing here changes them. Compare float results only between
runs with the same settings, and judge the float-batch targets against a faiss that has
its best kernels (``OPENBLAS_CORETYPE=SkylakeX``). ``OPENBLAS_L2_SIZE`` overrides the
L2 size OpenBLAS would read from CPUID; it made no difference above the noise here.
Hamming search uses no BLAS, so none of this affects it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

import cofisearch

__all__ = [
    "BINARY",
    "CLOCKS",
    "FLOAT",
    "Engine",
    "Timing",
    "MEMORY_READERS",
    "agreement_problems",
    "blas_threads",
    "blas_warnings",
    "compare",
    "contenders",
    "faiss_available",
    "float_problems",
    "flush_caches",
    "format_machine",
    "hamming_problems",
    "machine_info",
    "make_codes",
    "make_vectors",
    "measure",
    "mem_available_bytes",
    "memory_reader",
    "open_engine",
    "read_bandwidth",
    "result_arrays",
    "sgemm_gflops",
]

BINARY = "binary"
FLOAT = "float"

# Bytes of temporaries the NumPy contenders may hold per chunk of queries: enough to keep
# the per-call overhead small, small enough that a 1M-row database never needs gigabytes.
_NUMPY_CHUNK_BYTES = 64 << 20


# ---- data ---------------------------------------------------------------------------------


def _rng(seed, stream):
    # One independent stream per role, so the queries do not change when the database
    # size does (and a smaller database is not a prefix of a larger one by accident).
    return np.random.default_rng([seed, stream])


def make_codes(n, nbits, *, seed=0, stream=0):
    """``n`` uniformly random packed codes of ``nbits`` bits, ``(n, nbits // 8)`` uint8.

    Use ``stream=0`` for a database and ``stream=1`` for its queries.
    """
    if nbits % 8:
        raise ValueError(f"nbits must be a multiple of 8, got {nbits}")
    return _rng(seed, stream).integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)


def make_vectors(n, dim, *, seed=0, stream=0):
    """``n`` standard-normal float32 vectors, ``(n, dim)``; generated in float32 directly
    so a 2 GB database never passes through a 4 GB float64 temporary."""
    return _rng(seed, stream).standard_normal(size=(n, dim), dtype=np.float32)


# ---- machine description ------------------------------------------------------------------


_FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vpopcntdq",
    "avx512_bitalg",
    "avx512_vnni",
    "avx512_bf16",
)
_ENV_OF_INTEREST = (
    "COFISEARCH_SIMD",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "MKL_NUM_THREADS",
)


def _cpuinfo():
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor describes them all on the machines we target
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _caches():
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for entry in entries:
        if not entry.startswith("index"):
            continue
        level = _read_text(f"{base}/{entry}/level")
        kind = _read_text(f"{base}/{entry}/type")
        size = _read_text(f"{base}/{entry}/size")
        if level and kind and size:
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            out[f"L{level}{suffix}"] = size
    return out


def _mem_total_gib():
    text = _read_text("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / (1 << 20), 1)
    return None


def mem_available_bytes():
    """``MemAvailable`` from ``/proc/meminfo`` (what can be allocated without swapping
    out others), or ``None`` where the file is missing (not Linux)."""
    text = _read_text("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return [
        {
            "library": os.path.basename(lib.get("filepath", "")),
            "api": lib.get("internal_api"),
            "version": lib.get("version"),
            "architecture": lib.get("architecture"),
            "threading_layer": lib.get("threading_layer"),
            "num_threads": lib.get("num_threads"),
        }
        for lib in threadpool_info()
    ]


# OpenBLAS core types whose sgemm kernels use AVX-512.
_AVX512_BLAS_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def blas_warnings(info=None):
    """Lines to print when a BLAS runs kernels weaker than the processor allows (see the
    module note): the float peers are then slower than they could be."""
    info = machine_info() if info is None else info
    if not info["cpu_flags"].get("avx512f") or not isinstance(info["blas"], list):
        return []
    out = []
    for lib in info["blas"]:
        arch = lib.get("architecture")
        if lib.get("api") == "openblas" and arch and arch.lower() not in _AVX512_BLAS_CORES:
            out.append(
                f"{lib['library']} runs its {arch} kernels on an AVX-512 processor; "
                "start Python with OPENBLAS_CORETYPE=SkylakeX to give faiss/NumPy their best sgemm"
            )
    return out


def faiss_available():
    return importlib.util.find_spec("faiss") is not None


def machine_info():
    """A JSON-ready description of the machine and software a timing was taken on."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    faiss_version = None
    if faiss_available():
        import faiss

        faiss_version = getattr(faiss, "__version__", "unknown")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": cpu.get("vendor_id"),
        "cpu_family": cpu.get("cpu family"),
        "cpu_model_number": cpu.get("model"),
        "cpu_stepping": cpu.get("stepping"),
        "cpu_mhz": cpu.get("cpu MHz"),
        "cpu_flags": {f: f in flags for f in _FLAGS_OF_INTEREST},
        "caches": _caches(),
        "logical_cpus": os.cpu_count(),
        "affinity": affinity,
        "mem_total_gib": _mem_total_gib(),
        "transparent_hugepages": _read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        # A load average above the core count means the timings shared the cores.
        "loadavg": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cofisearch": cofisearch.__version__,
        "simd_level": cofisearch.simd_level(),
        "simd_levels_available": cofisearch.available_simd_levels(),
        "cofisearch_threads_default": cofisearch.get_num_threads(),
        "numpy": np.__version__,
        "faiss": faiss_version,
        "blas": _blas_info(),
        "env": {k: os.environ.get(k) for k in _ENV_OF_INTEREST},
    }


def format_machine(info):
    """:func:`machine_info` as aligned lines of text, for the foot of a report."""
    flags = " ".join(f for f, on in info["cpu_flags"].items() if on)
    if isinstance(info["blas"], list):
        blas = "; ".join(
            f"{b['library']} {b['version']} ({b['architecture'] or b['api']}, "
            f"{b['num_threads']} threads)"
            for b in info["blas"]
        )
    else:
        blas = info["blas"]
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items() if v is not None) or "none set"
    return "\n".join(
        [
            f"CPU:        {info['cpu_model']} (family {info['cpu_family']}, model "
            f"{info['cpu_model_number']}), {info['logical_cpus']} logical CPUs, "
            f"affinity {info['affinity']}",
            f"caches:     {info['caches']}; memory {info['mem_total_gib']} GiB; "
            f"THP {info['transparent_hugepages']}",
            f"flags:      {flags}",
            f"cofisearch: {info['cofisearch']}, SIMD {info['simd_level']} "
            f"(available {', '.join(info['simd_levels_available'])})",
            f"peers:      numpy {info['numpy']}, faiss {info['faiss']}",
            f"BLAS:       {blas}",
            f"env:        {env}",
            f"load:       {info['loadavg']} (1, 5, 15 min; above the CPU count means shared cores)",
            f"python:     {info['python']} on {info['platform']}",
        ]
    )


# ---- contenders ---------------------------------------------------------------------------


def contenders(*, simd_levels=None, keep_missing_faiss=False):
    """Contender names, for either kind of data: cofisearch first, then the peers.

    ``cofisearch`` runs at the SIMD level chosen at import; ``cofisearch-<level>`` forces
    one of ``simd_levels`` (default: every level this processor supports other than the
    chosen one, which ``cofisearch`` already covers). ``faiss`` is listed when installed,
    or always with ``keep_missing_faiss`` (a suite that wants to show it as skipped).
    """
    chosen = cofisearch.simd_level()
    if simd_levels is None:
        simd_levels = [lv for lv in cofisearch.available_simd_levels() if lv != chosen]
    names = ["cofisearch", *[f"cofisearch-{lv}" for lv in simd_levels]]
    if keep_missing_faiss or faiss_available():
        names.append("faiss")
    names.append("numpy")
    return names


def _check_kind(kind):
    if kind not in (BINARY, FLOAT):
        raise ValueError(f"kind must be {BINARY!r} or {FLOAT!r}, got {kind!r}")


@contextlib.contextmanager
def blas_threads(n):
    """Limits every loaded BLAS (NumPy's and faiss's OpenBLAS) to ``n`` threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        # Without threadpoolctl BLAS keeps its own thread count; machine_info says so.
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


class Engine:
    """One contender bound to one database (its index, if any, already built).

    Use ``with engine.running(threads) as search: search(queries, k)``. Thread counts and
    the SIMD level are process-wide settings in faiss, BLAS and cofisearch; ``running``
    sets them once for a block of searches and restores them after, so the callable it
    yields does nothing but search (it is what a benchmark should time).
    """

    def __init__(self, name, kind, database):
        _check_kind(kind)
        self.name = name
        self.kind = kind
        self.database = database
        self.nrows = database.shape[0]
        self._index = None
        if name == "faiss":
            import faiss

            if kind == BINARY:
                self._index = faiss.IndexBinaryFlat(database.shape[1] * 8)
            else:
                self._index = faiss.IndexFlatIP(database.shape[1])
            self._index.add(database)
        elif name == "numpy":
            if kind == BINARY:
                # Whole 64-bit words: bitwise_count on uint64 does 8x fewer ufunc steps.
                word = np.uint64 if database.shape[1] % 8 == 0 else np.uint8
                self._words = np.ascontiguousarray(database).view(word)
        elif name == "cofisearch" or name.startswith("cofisearch-"):
            level = name.partition("-")[2] or None
            if level is not None and level not in cofisearch.available_simd_levels():
                raise ValueError(
                    f"SIMD level {level!r} is not available here; "
                    f"available: {cofisearch.available_simd_levels()}"
                )
            self._level = level
            # The index, not hamming_knn/dot_knn: the one-off functions validate the whole
            # database on every call (dot_knn checks every float is finite), which would
            # swamp a one-query search; an index checks once, at add, as users would.
            if kind == BINARY:
                self._index = cofisearch.BinaryIndex(database.shape[1] * 8)
            else:
                self._index = cofisearch.FloatIndex(database.shape[1])
            self._index.add(database)
        else:
            raise ValueError(f"unknown contender {name!r}; expected one of {contenders()}")

    @contextlib.contextmanager
    def running(self, threads):
        """Fixes the thread count (and SIMD level) and yields ``search(queries, k)``."""
        threads = int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if self.name == "faiss":
            import faiss

            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            try:
                # faiss's own OpenBLAS (used by IndexFlatIP for large batches) too.
                with blas_threads(threads):
                    yield self._faiss_search
            finally:
                faiss.omp_set_num_threads(before)
        elif self.name == "numpy":
            with blas_threads(threads):
                yield self._numpy_binary if self.kind == BINARY else self._numpy_float
        else:
            before = cofisearch.simd_level()
            if self._level is not None:
                cofisearch.set_simd_level(self._level)
            index_search = self._index.search

            def search(queries, k):
                return index_search(queries, k, num_threads=threads)

            try:
                yield search
            finally:
                cofisearch.set_simd_level(before)

    def _faiss_search(self, queries, k):
        return self._index.search(queries, k)

    def _numpy_binary(self, queries, k):
        # XOR + popcount over whole words, then argpartition: the plain-NumPy brute force.
        # Single-threaded whatever `threads` says (ufuncs do not split work).
        db = self._words
        n, w = db.shape
        q = np.ascontiguousarray(queries).view(db.dtype)
        chunk = max(1, _NUMPY_CHUNK_BYTES // (n * w * db.itemsize))
        out_d, out_i = _empty_topk(q.shape[0], k, np.int32, cofisearch.HAMMING_SENTINEL)
        for s in range(0, q.shape[0], chunk):
            x = np.bitwise_xor(q[s : s + chunk, None, :], db[None, :, :])
            bits = np.bitwise_count(x)
            dist = bits[..., 0] if w == 1 else bits.sum(axis=2, dtype=np.int32)
            _select(dist, k, out_d[s : s + chunk], out_i[s : s + chunk], largest=False)
        return out_d, out_i

    def _numpy_float(self, queries, k):
        db = self.database
        n = db.shape[0]
        chunk = max(1, _NUMPY_CHUNK_BYTES // (n * 4))
        out_d, out_i = _empty_topk(queries.shape[0], k, np.float32, cofisearch.SCORE_SENTINEL)
        for s in range(0, queries.shape[0], chunk):
            scores = queries[s : s + chunk] @ db.T
            _select(scores, k, out_d[s : s + chunk], out_i[s : s + chunk], largest=True)
        return out_d, out_i


def _empty_topk(nq, k, dtype, sentinel):
    return np.full((nq, k), sentinel, dtype=dtype), np.full((nq, k), -1, dtype=np.int64)


def _select(values, k, out_d, out_i, *, largest):
    """Top-k of each row of ``values`` into ``out_d``/``out_i``, best first, ties by id."""
    n = values.shape[1]
    kk = min(k, n)
    if kk < n:
        if largest:
            part = np.argpartition(values, n - kk, axis=1)[:, n - kk :]
        else:
            part = np.argpartition(values, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), values.shape)
    vals = np.take_along_axis(values, part, axis=1)
    order = np.lexsort((part, -vals if largest else vals), axis=1)
    out_d[:, :kk] = np.take_along_axis(vals, order, axis=1)
    out_i[:, :kk] = np.take_along_axis(part, order, axis=1)


def open_engine(name, kind, database):
    """Binds contender ``name`` to ``database`` (uint8 codes or float32 vectors)."""
    return Engine(name, kind, database)


# ---- timing -------------------------------------------------------------------------------


CLOCKS = ("wall", "cpu")


@dataclass
class Timing:
    """Seconds per call: one value per sample, each the mean of ``number`` calls.

    ``times`` is wall-clock time; ``cpu_times`` the process's CPU time over the same
    calls (all threads). On a shared machine a single-threaded call's CPU time is far
    steadier than its wall time, which also counts the moments it waited for a core;
    it is no use for thread scaling, and it counts spinning OpenMP threads as work.
    """

    name: str
    times: List[float] = field(default_factory=list)
    number: int = 1
    cpu_times: List[float] = field(default_factory=list)

    @property
    def median(self):
        return float(np.median(self.times))

    @property
    def best(self):
        return float(min(self.times))

    @property
    def cpu_median(self):
        return float(np.median(self.cpu_times))

    def value(self, clock="wall"):
        """Median seconds per call by ``clock`` (``"wall"`` or ``"cpu"``)."""
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        return self.median if clock == "wall" else self.cpu_median

    def as_dict(self):
        return {
            "name": self.name,
            "median_s": self.median,
            "best_s": self.best,
            "cpu_median_s": self.cpu_median if self.cpu_times else None,
            "times_s": list(self.times),
            "cpu_times_s": list(self.cpu_times),
            "calls_per_sample": self.number,
        }


def _calls_per_sample(fn, warmup, min_sample_s, setup):
    # The warm-up doubles as calibration: short calls are repeated within a sample so
    # that the timer's resolution and the loop overhead do not show in the result.
    elapsed = math.inf
    for _ in range(max(1, warmup)):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        elapsed = min(elapsed, time.perf_counter() - t0)
    if setup is not None:
        return 1  # a setup (cache flush) must precede every call, so one call per sample
    return max(1, min(10_000, math.ceil(min_sample_s / max(elapsed, 1e-9))))


def _sample(fn, number, setup):
    if setup is not None:
        setup()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    t1 = time.perf_counter()
    c1 = time.process_time()
    return (t1 - t0) / number, (c1 - c0) / number


def measure(fn, *, repeat=5, warmup=1, min_sample_s=0.02, setup=None, name="call"):
    """Median-of-``repeat`` timing of ``fn()`` after ``warmup`` untimed calls.

    ``setup`` (untimed) runs before every sample, e.g. :func:`flush_caches`.
    """
    timings = compare(
        {name: fn}, repeat=repeat, warmup=warmup, min_sample_s=min_sample_s, setup=setup
    )
    return timings[name]


# OpenBLAS's worker threads spin for a while after each call (about 0.1 s by default,
# OPENBLAS_THREAD_TIMEOUT), taking the second core from whatever runs next: measured
# here, a 2-thread cofisearch batch right after a 2-thread NumPy matmul took 65 ms
# instead of 34 (a 50 ms pause was not enough, 0.5 s was).
BLAS_SETTLE_S = 0.3


def compare(fns, *, repeat=5, warmup=1, min_sample_s=0.02, setup=None, settle=None):
    """Times several zero-argument callables in the same rounds.

    Each round takes one sample of every callable, in an order that rotates from round to
    round, so a burst of load from another process lands on all of them rather than on
    whichever happened to run then. ``settle`` maps names to seconds of idle time (not
    timed) after each of their samples, for contenders whose threads linger (see
    ``BLAS_SETTLE_S``). Returns ``{name: Timing}``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    settle = settle or {}
    names = list(fns)
    number = {n: _calls_per_sample(fns[n], warmup, min_sample_s, setup) for n in names}
    out = {n: Timing(n, [], number[n]) for n in names}
    for r in range(repeat):
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            wall, cpu = _sample(fns[n], number[n], setup)
            out[n].times.append(wall)
            out[n].cpu_times.append(cpu)
            if settle.get(n):
                time.sleep(settle[n])
    return out


# ---- hardware references ------------------------------------------------------------------

_flush_buffer = None


def flush_caches(nbytes=256 << 20):
    """Streams ``nbytes`` of unrelated memory, so that the next call reads its data from
    memory rather than from what the previous sample left in the caches (the L3 here is
    32 MiB; 10M 64-bit codes are 80 MB, of which a repeated scan could still find some
    cached)."""
    global _flush_buffer
    if _flush_buffer is None or _flush_buffer.nbytes < nbytes:
        _flush_buffer = np.ones(nbytes // 4, dtype=np.float32)  # written, so really mapped
    with blas_threads(1):
        float(np.dot(_flush_buffer, _flush_buffer))


def _libc_memchr():
    try:
        fn = ctypes.CDLL(None).memchr
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return fn


MEMORY_READERS = ("blas_sdot", "memchr")


def memory_reader(name, buffer):
    """A zero-argument callable that reads ``buffer.nbytes`` bytes as fast as it can.

    NumPy's own reductions (``sum``, ``max``, ``count_nonzero``) are compute-bound here
    (12-15 GB/s against 20+ GB/s of DRAM bandwidth), so they understate the bandwidth.
    These keep up with memory:

    - ``"blas_sdot"``: BLAS ``sdot`` of the buffer (viewed as float32) with itself, over
      the very bytes a scan reads (same pages, same page size). Run it under
      ``blas_threads(1)`` for a single-thread figure.
    - ``"memchr"``: glibc's vectorised ``memchr`` looking for a byte that is absent from a
      zero-filled buffer of the same size (it reads and compares, nothing else).
    """
    flat = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    nbytes = flat.nbytes - flat.nbytes % 4
    if name == "blas_sdot":
        as_f32 = flat[:nbytes].view(np.float32)

        def sdot():
            # Random bits include NaN and infinity patterns; the value is irrelevant.
            with np.errstate(all="ignore"):
                return np.dot(as_f32, as_f32)

        return sdot
    if name == "memchr":
        memchr = _libc_memchr()
        if memchr is None:
            raise ValueError("memchr reader needs glibc (ctypes.CDLL(None).memchr)")
        zeros = np.zeros(nbytes, dtype=np.uint8)
        zeros[:] = 0  # np.zeros may map the shared zero page; writing makes it real memory
        address = zeros.ctypes.data

        def scan():
            # `zeros` is captured so it lives as long as the reader does.
            return memchr(address, 1, zeros.nbytes)

        return scan
    raise ValueError(f"unknown memory reader {name!r}; expected one of {MEMORY_READERS}")


def read_bandwidth(buffer, *, repeat=5, cold=True, readers=MEMORY_READERS, clock="wall"):
    """Single-thread read bandwidth over ``buffer``'s bytes, in bytes/s, and the details.

    Every reader of :func:`memory_reader` is timed (interleaved) and the fastest one is
    reported, which is still a lower bound on what the hardware can deliver. With
    ``cold=True`` caches are flushed before every sample, as they should be for the
    one-query scan the figure is compared with.
    """
    fns = {}
    for name in readers:
        try:
            fns[name] = memory_reader(name, buffer)
        except ValueError:
            continue  # memchr without glibc: the BLAS reader alone still gives a bound
    nbytes = buffer.nbytes - buffer.nbytes % 4
    with blas_threads(1):
        timings = compare(fns, repeat=repeat, warmup=1, setup=flush_caches if cold else None)
    per_reader = {name: nbytes / t.value(clock) for name, t in timings.items()}
    best = max(per_reader, key=per_reader.get)
    return per_reader[best], {
        "bytes": nbytes,
        "reader": best,
        "bytes_per_s": per_reader,
        "timings": [t.as_dict() for t in timings.values()],
    }


def sgemm_gflops(*, threads=1, size=2048, repeat=5):
    """GFLOP/s of NumPy's BLAS ``sgemm`` on ``size``-square float32 matrices: what a good
    library reaches on this core (the FMA peak is higher; see the module note on
    ``OPENBLAS_CORETYPE``)."""
    rng = _rng(0, 99)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with blas_threads(threads):
        t = measure(lambda: a @ b, repeat=repeat, name="sgemm")
    return 2.0 * size**3 / t.median / 1e9, t


# ---- checks -------------------------------------------------------------------------------


def _shape_problems(name, distances, ids, nq, k):
    problems = []
    for label, arr in (("distances", distances), ("ids", ids)):
        if getattr(arr, "shape", None) != (nq, k):
            shape = getattr(arr, "shape", None)
            problems.append(f"{name}: {label} shape {shape}, expected {(nq, k)}")
    return problems


def _id_problems(name, ids, nrows):
    bad = (ids < -1) | (ids >= nrows)
    if bad.any():
        return [f"{name}: {int(bad.sum())} ids outside [-1, {nrows})"]
    return []


def hamming_problems(name, database, queries, distances, ids, k):
    """Checks one contender's Hamming top-k: shapes, ids, ascending order, and that each
    reported distance is the true distance of the reported id. Returns problems found."""
    nq = queries.shape[0]
    problems = _shape_problems(name, distances, ids, nq, k)
    if problems:
        return problems
    problems = _id_problems(name, ids, database.shape[0])
    if problems:
        return problems
    d = np.asarray(distances).astype(np.int64)
    valid = ids >= 0
    if (np.diff(np.where(valid, d, np.iinfo(np.int64).max), axis=1) < 0).any():
        problems.append(f"{name}: distances not ascending in some row")
    true = np.bitwise_count(database[np.where(valid, ids, 0)] ^ queries[:, None, :]).sum(axis=2)
    wrong = valid & (true != d)
    if wrong.any():
        problems.append(f"{name}: {int(wrong.sum())} reported distances differ from the true ones")
    if int(valid.sum(axis=1).min(initial=k)) < min(k, database.shape[0]):
        problems.append(f"{name}: fewer than min(k, n) results in some row")
    return problems


def float_problems(name, database, queries, scores, ids, k):
    """Checks one contender's inner-product top-k the ScaNN way: recompute the scores of
    the returned ids (in float64) rather than compare ids, since near-ties may order
    differently between kernels."""
    nq = queries.shape[0]
    problems = _shape_problems(name, scores, ids, nq, k)
    if problems:
        return problems
    problems = _id_problems(name, ids, database.shape[0])
    if problems:
        return problems
    valid = ids >= 0
    picked = database[np.where(valid, ids, 0)].astype(np.float64)
    true = np.einsum("qkd,qd->qk", picked, queries.astype(np.float64))
    tol = _score_tolerance(database, queries)
    wrong = valid & (np.abs(true - scores) > tol)
    if wrong.any():
        problems.append(
            f"{name}: {int(wrong.sum())} scores differ from the recomputed ones by > {tol:.3g}"
        )
    s = np.where(valid, scores, -np.inf)
    if (np.diff(s, axis=1) > tol).any():
        problems.append(f"{name}: scores not descending in some row")
    return problems


def _score_tolerance(database, queries):
    # float32 dot products of d terms drift from the exact value by about
    # sqrt(d) * eps * |q| * |x| (blocked or pairwise sums); allow a generous multiple,
    # still far below the gap a wrong id would leave.
    d = database.shape[1]
    qn = float(np.linalg.norm(queries, axis=1).max(initial=0.0))
    xn = float(np.linalg.norm(database[: min(database.shape[0], 10_000)], axis=1).max(initial=0.0))
    return 16.0 * math.sqrt(d) * float(np.finfo(np.float32).eps) * max(qn * xn, 1.0)


def agreement_problems(
    name, reference_name, kind, distances, reference, *, database=None, queries=None
):
    """Two contenders must return the same top-k distances (Hamming: exactly; float: to
    float32 rounding). Ids may differ only among equal distances, which the per-contender
    checks already prove consistent."""
    if distances.shape != reference.shape:
        return [
            f"{name}: shape {distances.shape} differs from {reference_name}'s {reference.shape}"
        ]
    if kind == BINARY:
        diff = distances != reference
    else:
        tol = _score_tolerance(database, queries) if database is not None else 1e-3
        diff = ~np.isclose(distances, reference, rtol=0.0, atol=tol) & ~(
            np.isinf(distances) & np.isinf(reference)
        )
    if diff.any():
        return [f"{name}: {int(diff.sum())} top-k distances differ from {reference_name}'s"]
    return []


def result_arrays(result):
    """``(distances, ids)`` as arrays from any contender's return value."""
    d, i = result
    return np.asarray(d), np.asarray(i)

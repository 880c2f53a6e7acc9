"""The one timer of every benchmark: medians of interleaved samples after a warm-up.

:func:`compare` times several zero-argument callables in the same rounds, each round
taking one sample of every callable in an order that rotates from round to round, so
that a burst of load from another process lands on all of them rather than on whichever
ran then; :func:`measure` is the one-callable case. Each sample records the wall clock
and the process's CPU time (all threads). Short calls repeat within a sample, so the
timer's resolution and the loop overhead do not show. ``settle`` sleeps after the
samples of contenders whose BLAS threads linger (:data:`BLAS_SETTLE_S`).

Hardware references timed with the same machinery: :func:`read_bandwidth` (what one
thread can read from memory, the floor of a one-query scan) over the readers of
:func:`memory_reader`, and :func:`flush_caches` to make the next call read from memory.
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from .machine import blas_threads

__all__ = [
    "BLAS_SETTLE_S",
    "CLOCKS",
    "MEMORY_READERS",
    "Timing",
    "calls_per_sample",
    "compare",
    "flush_caches",
    "measure",
    "memory_reader",
    "read_bandwidth",
]

CLOCKS = ("wall", "cpu")

# OpenBLAS's worker threads spin for a while after each call (about 0.1 s by default,
# OPENBLAS_THREAD_TIMEOUT), taking a core from whatever runs next: on a machine with as
# many cores as threads, a 2-thread batch right after a 2-thread NumPy matmul can take
# twice its time. A pause of a few tenths of a second lets them sleep.
BLAS_SETTLE_S = 0.3


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
            "best_s": float(min(self.times)),
            "cpu_median_s": self.cpu_median if self.cpu_times else None,
            "times_s": list(self.times),
            "cpu_times_s": list(self.cpu_times),
            "calls_per_sample": self.number,
        }


def calls_per_sample(fn, *, warmup=1, min_sample_s=0.02, setup=None):
    """Runs ``fn`` ``warmup`` times (at least once, untimed as a result) and returns how
    many calls make a sample of at least ``min_sample_s`` (one when ``setup`` must
    precede every call)."""
    elapsed = math.inf
    for _ in range(max(1, warmup)):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        elapsed = min(elapsed, time.perf_counter() - t0)
    if setup is not None:
        return 1
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


def compare(fns, *, repeat=5, warmup=1, min_sample_s=0.02, setup=None, settle=None):
    """Times the zero-argument callables ``fns`` (name -> callable) in interleaved rounds.

    ``repeat`` samples each, after ``warmup`` untimed calls that also calibrate the calls
    per sample; ``setup`` (untimed) runs before every sample, e.g. :func:`flush_caches`;
    ``settle`` maps names to seconds of idle time after each of their samples. Returns
    ``{name: Timing}``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    settle = settle or {}
    names = list(fns)
    number = {
        n: calls_per_sample(fns[n], warmup=warmup, min_sample_s=min_sample_s, setup=setup)
        for n in names
    }
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


def measure(fn, *, repeat=5, warmup=1, min_sample_s=0.02, setup=None, name="call"):
    """:func:`compare` of one callable: its :class:`Timing`."""
    timings = compare(
        {name: fn}, repeat=repeat, warmup=warmup, min_sample_s=min_sample_s, setup=setup
    )
    return timings[name]


# ---- hardware references ------------------------------------------------------------------

_flush_buffer = None


def flush_caches(nbytes=256 << 20):
    """Streams ``nbytes`` of unrelated memory (several times the last-level cache of
    current servers), so that the next call reads its data from memory rather than from
    what the previous sample left in the caches."""
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

    NumPy's own reductions (``sum``, ``max``, ``count_nonzero``) are compute-bound and
    understate the bandwidth; these keep up with memory:

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

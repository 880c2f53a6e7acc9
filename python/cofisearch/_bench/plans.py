"""Named scales: one vocabulary for every benchmark, and the plan of ``cofisearch bench``.

:data:`SCALES` names the sizes of every benchmark entry point (the pytest suites,
``bench/targets.py``, ``bench/cascade_scale.py``, ``bench/bench_distributed.py`` and
``cofisearch bench``); each maps them to its own sizes in one table:

- ``tiny``: seconds; every code path runs and every result is checked, nothing timed
  means anything (what CI runs);
- ``quick``: about a minute, every regime at reduced sizes;
- ``default``: the sizes the figures in the README and ``bench/results`` come from;
- ``full``: the largest sizes (where an entry point has nothing larger than its
  default, the same sizes with more samples, or the same as ``default``).

:data:`BENCH_PLANS` is the table of ``cofisearch bench``; :func:`fit_plan` caps it by
``max_size`` and by the memory available, and :func:`check_memory` refuses sizes that
cannot fit before anything is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .._checks import check_choice, check_int

__all__ = [
    "BENCH_PLANS",
    "BenchPlan",
    "MIN_SIZE",
    "SCALES",
    "check_max_size",
    "check_memory",
    "check_scale",
    "fit_plan",
    "powers_of_ten",
]

SCALES = ("tiny", "quick", "default", "full")

# The smallest database of the bench command's size sweeps.
MIN_SIZE = 1_000

# Bytes of working memory a run needs beyond its databases (NumPy's chunked temporaries,
# query sets, the interpreter): kept out of the memory checks' arithmetic below.
_HEADROOM_BYTES = 1 << 30
# The data, cofisearch's index and faiss's copy: every database is held three times.
_COPIES = 3
# Share of the available memory the float databases may take: the machine is shared,
# and a run that pushes others into swap measures nothing useful.
_FLOAT_MEMORY_SHARE = 0.5


def check_scale(scale, name="scale"):
    """One of :data:`SCALES`."""
    return check_choice(scale, name, SCALES)


@dataclass(frozen=True)
class BenchPlan:
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
    width_n: int  # code widths: every width's database
    width_bits: tuple
    width_nqs: tuple
    all_vs_all_ns: tuple  # each database searched by itself
    all_vs_all_bits: tuple
    all_vs_all_dim: int
    repeat: int
    study_repeat: int
    min_sample_s: float
    max_call_s: float  # skip a contender predicted to take longer per call


BENCH_PLANS = {
    "default": BenchPlan(
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
        width_n=100_000,
        width_bits=(192, 256, 320, 384, 448, 512, 640, 768, 1024, 1536, 2048),
        width_nqs=(1, 1000),
        all_vs_all_ns=(1000, 5000, 25_000),
        all_vs_all_bits=(64, 256),
        all_vs_all_dim=384,
        repeat=5,
        study_repeat=3,
        min_sample_s=0.02,
        max_call_s=2.0,
    ),
    "quick": BenchPlan(
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
        width_n=100_000,
        width_bits=(192, 256, 384, 512, 768, 1024, 1536, 2048),
        width_nqs=(1, 100),
        all_vs_all_ns=(1000, 5000),
        all_vs_all_bits=(64, 256),
        all_vs_all_dim=384,
        repeat=3,
        study_repeat=3,
        min_sample_s=0.01,
        max_call_s=0.5,
    ),
    # For the test suite: every section and plot, in a few seconds.
    "tiny": BenchPlan(
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
        width_n=1_000,
        width_bits=(192, 256, 384, 512),
        width_nqs=(1, 10),
        all_vs_all_ns=(200, 500),
        all_vs_all_bits=(64, 256),
        all_vs_all_dim=384,
        repeat=1,
        study_repeat=1,
        min_sample_s=0.0,
        max_call_s=0.5,
    ),
}
# The default sizes with more samples and a budget that skips almost nothing.
BENCH_PLANS["full"] = replace(BENCH_PLANS["default"], scale="full", repeat=7, study_repeat=5,
                              max_call_s=10.0)


def check_max_size(max_size):
    """``max_size`` of ``cofisearch bench``: an integer of at least :data:`MIN_SIZE`."""
    max_size = check_int(max_size, "max_size")
    if max_size < MIN_SIZE:
        raise ValueError(
            f"max_size must be at least {MIN_SIZE:,} (the smallest database of the sweep), "
            f"got {max_size:,}"
        )
    return max_size


def _hamming_need(max_size):
    # The size sweep's largest database: 64-bit codes, 8 bytes each, three copies.
    return _COPIES * max_size * 8 + _HEADROOM_BYTES


def check_memory(max_size, available):
    """Refuses a ``max_size`` whose databases would not fit in ``available`` bytes (the
    check that runs before any data is made)."""
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


def powers_of_ten(top):
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


def fit_plan(plan, max_size, available):
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
        width_n=min(plan.width_n, max_size),
        all_vs_all_ns=tuple(sorted({min(n, max_size) for n in plan.all_vs_all_ns})),
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

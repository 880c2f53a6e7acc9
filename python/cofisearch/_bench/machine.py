"""The machine a timing was taken on: its description, its memory, its BLAS settings.

:func:`machine_info` is recorded beside every timing (JSON-ready), :func:`format_machine`
prints it, :func:`blas_warnings` flags a BLAS that runs weaker kernels than the processor
allows (why that matters for the float peers: ``bench/README.md``), and
:func:`blas_threads` limits the BLAS thread pools for a block of work. Linux files
(``/proc``, ``/sys``) are read where they exist; elsewhere the fields are ``None``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform

import numpy as np

import cofisearch

from .._checks import mem_available_bytes

__all__ = [
    "blas_threads",
    "blas_warnings",
    "cpu_model",
    "faiss_available",
    "format_machine",
    "machine_info",
    "mem_available_bytes",
]

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


def cpu_model(cpu=None):
    """The processor's name (``/proc/cpuinfo``'s model name, else what ``platform`` says)."""
    cpu = _cpuinfo() if cpu is None else cpu
    return cpu.get("model name") or platform.processor() or platform.machine()


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
    """Lines to print when a BLAS runs kernels weaker than the processor allows (see
    ``bench/README.md``): the float peers are then slower than they could be."""
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
        "cpu_model": cpu_model(cpu),
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

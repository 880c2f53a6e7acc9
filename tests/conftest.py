import contextlib

import pytest

import cofisearch
from cofisearch import _reference


@pytest.fixture(params=cofisearch.available_simd_levels())
def simd(request):
    """Runs a test once per SIMD level this processor supports, restoring the level after."""
    before = cofisearch.simd_level()
    cofisearch.set_simd_level(request.param)
    yield request.param
    cofisearch.set_simd_level(before)


# The Hamming driver reads codes as stored ("stream"), packs blocks for a batch ("panel")
# or, for many queries over a small database, selects from whole rows of byte distances
# ("dense"), chosen by batch size, width and database size per level (cpp/simd.cpp).
HAMMING_PATHS = ["stream", "panel", "dense"]


@contextlib.contextmanager
def hamming_path_forced(path):
    """Forces every Hamming search onto one kernel whatever the batch size and width,
    through a private test hook of _core, so that each kernel runs at each SIMD level;
    restores the choice by size after."""
    cofisearch._core._force_hamming_path(path)
    try:
        yield path
    finally:
        cofisearch._core._force_hamming_path("auto")


@pytest.fixture(params=HAMMING_PATHS)
def hamming_path(request):
    with hamming_path_forced(request.param):
        yield request.param


def hamming_reference(database, queries, k):
    """Exact Hamming top-k as the engine must return it, from cofisearch._reference."""
    return _reference.topk(_reference.hamming_distances(queries, database), k, largest=False)


def block_rows(kind, row_bytes, nq):
    """Rows per full cache block of a native `kind` ("hamming" or "dot") scan of nq queries,
    computed by the driver's own code (cpp/search.cpp, through a private _core function)."""
    return cofisearch._core._block_rows(kind, row_bytes, nq)


def pytest_addoption(parser):
    parser.addoption(
        "--long", action="store_true", default=False,
        help="run the long reliability campaigns (fuzzing, stress, cluster faults) at full "
        "size; without it they run a short, bounded version that CI can afford",
    )
    parser.addoption(
        "--cluster", action="store_true", default=False,
        help="run the node-fault tests on a two-node Ray cluster started on this machine "
        "(tests/test_cluster_faults.py, about a minute); --long runs them too",
    )


@pytest.fixture(scope="session")
def long_run(request):
    """True under ``--long``: reliability tests size their campaigns from it."""
    return request.config.getoption("--long")

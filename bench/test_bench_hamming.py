"""Hamming top-k: cofisearch (every SIMD level) against faiss IndexBinaryFlat and NumPy.

Groups compare contenders on the same codes, queries, k and thread count. The cold
group times one query over a database far larger than the caches, flushed before every
round, beside plain memory readers of the same bytes: the single-thread bandwidth check.
"""

from cofisearch._bench.checks import hamming_problems
from cofisearch._bench.contenders import result_arrays
from cofisearch._bench.machine import blas_threads
from cofisearch._bench.measure import flush_caches, memory_reader


def test_hamming_search(benchmark, run_timed, hamming_case, workspace, agreement, machine):
    case = hamming_case
    engine = workspace.engine(case.contender, case.kind, case.n, case.width)
    db = workspace.database(case.kind, case.n, case.width)
    queries = workspace.queries(case.kind, case.width, case.nq)
    benchmark.group = case.group
    benchmark.extra_info.update(case.params(), machine=machine)

    with engine.running(case.threads) as search:
        distances, ids = result_arrays(run_timed(search, queries, case.k))

    assert not hamming_problems(case.contender, db, queries, distances, ids, case.k)
    assert not agreement.problems(case, distances, db, queries)


def _cold_group(case):
    return f"cold {case.group}"


def test_hamming_one_query_cold(benchmark, run_timed, cold_case, workspace, agreement, machine):
    case = cold_case
    engine = workspace.engine(case.contender, case.kind, case.n, case.width)
    db = workspace.database(case.kind, case.n, case.width)
    queries = workspace.queries(case.kind, case.width, case.nq)
    benchmark.group = _cold_group(case)
    benchmark.extra_info.update(case.params(), machine=machine, caches="flushed before each round")

    with engine.running(case.threads) as search:
        result = run_timed(search, queries, case.k, setup=flush_caches)
    distances, ids = result_arrays(result)

    assert not hamming_problems(case.contender, db, queries, distances, ids, case.k)
    assert not agreement.problems(case, distances, db, queries, group=_cold_group(case))


def test_read_bandwidth(benchmark, run_timed, reader_case, workspace, machine):
    """A memory reader over the cold group's database bytes: its time is the floor that a
    one-query scan can reach with one thread."""
    case = reader_case
    db = workspace.database(case.kind, case.n, case.width)
    read = memory_reader(case.contender, db)
    benchmark.group = _cold_group(case)
    benchmark.extra_info.update(
        case.params(), bytes=db.nbytes, machine=machine, caches="flushed before each round"
    )
    with blas_threads(1):
        run_timed(read, setup=flush_caches)

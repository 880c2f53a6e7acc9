"""Float inner-product top-k: cofisearch (every SIMD level) against faiss IndexFlatIP and
NumPy (matmul + argpartition in bounded query chunks).

Groups compare contenders on the same vectors, queries, k and thread count. Scores are
checked by recomputing them from the returned ids, and across contenders to float32
rounding, not by comparing ids (near-ties may order differently between kernels).
"""

from cofisearch._bench.checks import float_problems
from cofisearch._bench.contenders import result_arrays


def test_float_search(benchmark, run_timed, float_case, workspace, agreement, machine):
    case = float_case
    engine = workspace.engine(case.contender, case.kind, case.n, case.width)
    db = workspace.database(case.kind, case.n, case.width)
    queries = workspace.queries(case.kind, case.width, case.nq)
    benchmark.group = case.group
    benchmark.extra_info.update(case.params(), machine=machine)

    with engine.running(case.threads) as search:
        scores, ids = result_arrays(run_timed(search, queries, case.k))

    assert not float_problems(case.contender, db, queries, scores, ids, case.k)
    assert not agreement.problems(case, scores, db, queries)

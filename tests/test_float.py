import numpy as np
import pytest

import cofisearch
from conftest import block_rows

DIMS = [1, 3, 15, 16, 17, 64, 100, 512]

# The float driver runs one of three kernels by batch size: rows as stored ("stream"), a
# query panel, or packed row panels; the rerank runs a fourth (gather).
PATHS = ["stream", "query_panel", "row_panel"]


@pytest.fixture(params=PATHS)
def dot_path(request):
    """Forces every float search onto one kernel whatever the batch size, through a private
    test hook of _core, so that each kernel runs at each SIMD level (at AVX2 and scalar the
    driver itself only streams); restores the choice by batch size after."""
    cofisearch._core._force_dot_path(request.param)
    yield request.param
    cofisearch._core._force_dot_path("auto")


def _edge_sizes(row_bytes, nq):
    """Row counts on either side of the block edges the driver reports: the first edge
    (64 rows), then the start and the end of the first full-size block (blocks double from
    64 rows up to the full size)."""
    full = block_rows("dot", row_bytes, nq)
    blocks = cofisearch._core._scan_blocks("dot", row_bytes, nq, 4 * full)
    start = sum(blocks[: blocks.index(full)])
    # The driver's own cut: one row past each edge is a block of one row.
    assert cofisearch._core._scan_blocks("dot", row_bytes, nq, 65)[-2:] == [64, 1]
    assert cofisearch._core._scan_blocks("dot", row_bytes, nq, start + 1)[-1] == 1
    assert cofisearch._core._scan_blocks("dot", row_bytes, nq, start + full + 1)[-2:] == [full, 1]
    return sorted({e + d for e in (64, start, start + full) for d in (-1, 0, 1)})


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def _check_topk(db, queries, result, k):
    """ScaNN-style check: float ties are not stable across kernels, so compare scores with
    NumPy and recompute the returned ids' scores instead of comparing ids."""
    s, i = result
    exact = queries.astype(np.float64) @ db.astype(np.float64).T
    m = min(k, db.shape[0])
    expected = -np.sort(-exact, axis=1)[:, :m]
    tol = 1e-4 * max(1.0, float(np.abs(exact).max()))
    np.testing.assert_allclose(s[:, :m], expected, atol=tol)
    np.testing.assert_allclose(np.take_along_axis(exact, i[:, :m], axis=1), s[:, :m], atol=tol)
    assert (np.diff(s[:, :m], axis=1) <= 0).all()
    for row in i[:, :m]:
        assert len(set(row.tolist())) == m
    assert (i[:, m:] == -1).all()
    assert (s[:, m:] == cofisearch.SCORE_SENTINEL).all()


@pytest.mark.parametrize("dim", DIMS)
def test_scores_match_numpy_at_tails_and_block_edges(simd, dim):
    rng = np.random.default_rng(dim)
    queries = rng.standard_normal((9, dim)).astype(np.float32)
    for n in [1, 5, 8, 9, *_edge_sizes(dim * 4, len(queries))]:
        db = rng.standard_normal((n, dim)).astype(np.float32)
        index = cofisearch.FloatIndex(dim)
        index.add(db)
        for k in (1, 10, n + 2) if n < 1000 else (1, 10):
            # One thread: the edges above are those of a scan of all n rows.
            _check_topk(db, queries, index.search(queries, k, num_threads=1), k)


# At AVX-512 a lone query screens rows, 2-8 transpose rows as they read them, larger
# batches go through a query panel (32-query groups) or a row panel (12-query tiles,
# 32-row strips; 33 and 300 queries take it); AVX2 and scalar stream at every size.
BATCHES = (1, 8, 9, 12, 25, 33, 61)


def test_batch_sizes_reach_every_path_the_level_uses(simd):
    paths = {nq: cofisearch._core._dot_path(nq) for nq in (*BATCHES, 300)}
    if simd == "avx512":
        assert {paths[1], paths[8]} == {"stream"}
        assert {paths[9], paths[25], paths[61]} == {"query_panel"}
        assert {paths[33], paths[300]} == {"row_panel"}
    else:
        assert set(paths.values()) == {"stream"}


def test_forced_path_is_reported_and_survives_a_bad_name(dot_path):
    assert cofisearch._core._dot_path(1) == dot_path
    with pytest.raises(ValueError, match="path"):
        cofisearch._core._force_dot_path("fastest")
    assert cofisearch._core._dot_path(1000) == dot_path


@pytest.mark.parametrize("dim", [1, 15, 17, 100, 512])
def test_a_query_scores_the_same_alone_and_in_any_batch(simd, dim):
    rng = np.random.default_rng(dim + 1)
    queries = rng.standard_normal((300, dim)).astype(np.float32)
    for n in sorted({1, 31, 33, block_rows("dot", dim * 4, len(queries)) + 5}):
        db = rng.standard_normal((n, dim)).astype(np.float32)
        index = cofisearch.FloatIndex(dim)
        index.add(db)
        batch = index.search(queries, n)
        _check_topk(db, queries, batch, n)
        for nq in BATCHES:
            part = index.search(queries[:nq], n)
            np.testing.assert_array_equal(part.distances, batch.distances[:nq])
            np.testing.assert_array_equal(part.ids, batch.ids[:nq])
        single = index.search(queries[-1], n)
        np.testing.assert_array_equal(single.distances[0], batch.distances[-1])


@pytest.mark.parametrize("dim", [16, 100, 700])
def test_rounding_near_ties_rank_the_same_alone_and_in_a_batch(simd, dim):
    # Rows that permute one vector score the same against an all-ones query in exact
    # arithmetic; in float32 each summation order rounds differently. A path that screens
    # with one order and ranks with another must still rank exactly as the batch does.
    rng = np.random.default_rng(dim)
    v = (rng.standard_normal(dim) * 10.0 ** rng.integers(-3, 4, dim)).astype(np.float32)
    db = np.stack([rng.permutation(v) for _ in range(2_000)])
    queries = np.vstack([np.ones((1, dim), np.float32), rng.standard_normal((12, dim))]).astype(np.float32)
    index = cofisearch.FloatIndex(dim)
    index.add(db)
    batch = index.search(queries, 25)
    alone = index.search(queries[0], 25)
    assert len(np.unique(batch.distances[0])) > 1  # the orders really round differently
    np.testing.assert_array_equal(alone.distances, batch.distances[:1])
    np.testing.assert_array_equal(alone.ids, batch.ids[:1])
    # Without the index's norm bound (one-off search), the scan bounds each row itself.
    oneoff = cofisearch.dot_knn(db, queries[0], 25)
    np.testing.assert_array_equal(oneoff.distances, batch.distances[:1])
    np.testing.assert_array_equal(oneoff.ids, batch.ids[:1])


def test_lone_query_is_exact_with_a_loose_or_recomputed_norm_bound(simd, tmp_path):
    rng = np.random.default_rng(3)
    db = rng.standard_normal((3_000, 40)).astype(np.float32)
    queries = rng.standard_normal((10, 40)).astype(np.float32)
    index = cofisearch.FloatIndex(40)
    index.add(db)
    index.add(np.full((1, 40), 1e6, np.float32) * np.sign(queries[0]) * -1)  # far away, huge
    path = tmp_path / "f.cofi"
    index.save(path)
    for idx in (index, cofisearch.load_index(path), cofisearch.load_index(path, mmap=True)):
        batch = idx.search(queries, 7)
        for q in range(10):
            alone = idx.search(queries[q], 7)
            np.testing.assert_array_equal(alone.distances[0], batch.distances[q])
            np.testing.assert_array_equal(alone.ids[0], batch.ids[q])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nq", [1, 2, 5, 40])
def test_threads_do_not_change_results(simd, threads, nq):
    rng = np.random.default_rng(nq)
    db = rng.standard_normal((200_000, 32)).astype(np.float32)  # 25 MB: few queries split it
    queries = rng.standard_normal((nq, 32)).astype(np.float32)
    single = cofisearch.dot_knn(db, queries, 20, num_threads=1)
    many = cofisearch.dot_knn(db, queries, 20, num_threads=threads)
    np.testing.assert_array_equal(single.ids, many.ids)
    np.testing.assert_array_equal(single.distances, many.distances)
    _check_topk(db, queries, many, 20)


@pytest.mark.parametrize("dim", [1, 3, 7, 9, 17, 33, 100])
def test_every_path_matches_numpy(simd, dot_path, dim):
    # Dimensions off every register width (8, 16) and row counts off every strip and tile
    # (12, 16, 32 rows); batches around the tiles (8 queries, 12, 32-query groups, 96).
    rng = np.random.default_rng(dim + 2)
    queries = rng.standard_normal((97, dim)).astype(np.float32)
    for n in (1, 31, 33, 333):
        db = rng.standard_normal((n, dim)).astype(np.float32)
        for nq in (1, 2, 5, 13, 33, 97):
            for k in (1, 10, n):
                _check_topk(db, queries[:nq], cofisearch.dot_knn(db, queries[:nq], k), k)


@pytest.mark.parametrize("dim", [1, 3, 7, 9, 17, 33, 100])
def test_every_path_and_the_rerank_give_the_same_bits(simd, dim):
    # Within a level every kernel computes a pair's score by the same arithmetic: all n
    # scores of every query, sorted, must be equal bit for bit across paths.
    rng = np.random.default_rng(dim + 3)
    n = 333
    db = rng.standard_normal((n, dim)).astype(np.float32)
    for nq in (1, 3, 12, 40, 97):
        queries = rng.standard_normal((nq, dim)).astype(np.float32)
        reference = cofisearch.dot_knn(db, queries, n)
        for path in PATHS:
            cofisearch._core._force_dot_path(path)
            try:
                got = cofisearch.dot_knn(db, queries, n)
            finally:
                cofisearch._core._force_dot_path("auto")
            np.testing.assert_array_equal(_bits(got.distances), _bits(reference.distances), path)
            np.testing.assert_array_equal(got.ids, reference.ids, path)
        index = cofisearch.FloatIndex(dim)
        index.add(db)
        reranked = index.search(queries, n, candidates=np.tile(rng.permutation(n), (nq, 1)))
        np.testing.assert_array_equal(_bits(reranked.distances), _bits(reference.distances))
        np.testing.assert_array_equal(reranked.ids, reference.ids)


@pytest.mark.parametrize("dim", [1, 15, 17, 100])
def test_packed_search_gives_dot_search_bits_ties_and_padding(simd, dim):
    # The IVF's routing: every score over a packed panel, then a selection from whole rows
    # (dot_search_packed; dot_route picks it or dot_search), and every score in row order
    # (dot_scores_packed, the asymmetric screen's rotation).
    # Row counts around a strip (32 rows), repeated rows for ties, k up to past n, and
    # enough rows that a thread's chunk of queries ends inside the batch (2,000 rows: 16
    # queries a chunk).
    rng = np.random.default_rng(dim)
    core = cofisearch._core
    for n in (1, 31, 32, 33, 65, 130, 2000):
        db = rng.standard_normal((n, dim)).astype(np.float32)
        db[n // 2:] = db[: n - n // 2]
        panel = core.dot_pack(db)
        assert panel.shape == (-(-n // 32), 32 * dim)
        queries = rng.standard_normal((37, dim)).astype(np.float32)
        every = core.dot_search(db, n, queries, n, 1)
        in_row_order = np.empty_like(every[0])
        np.put_along_axis(in_row_order, every[1], every[0], axis=1)
        for threads in (1, 2):
            np.testing.assert_array_equal(_bits(core.dot_scores_packed(panel, n, queries, threads)),
                                          _bits(in_row_order))
        for q in range(3):  # a lone query runs a kernel of its own at AVX-512
            np.testing.assert_array_equal(_bits(core.dot_scores_packed(panel, n, queries[q:q + 1], 1)),
                                          _bits(in_row_order[q:q + 1]))
        for k in (1, 5, n, n + 3):
            for nq in (1, 12, 37):
                expected = core.dot_search(db, n, queries[:nq], k, 1)
                if k <= n:  # the routing picks a path by the share of rows kept: either matches
                    got = core.dot_route(db, panel, float("nan"), queries[:nq], k, 1)
                    np.testing.assert_array_equal(_bits(got[0]), _bits(expected[0]))
                    np.testing.assert_array_equal(got[1], expected[1])
                for threads in (1, 2):
                    got = core.dot_search_packed(panel, n, queries[:nq], k, threads)
                    np.testing.assert_array_equal(_bits(got[0]), _bits(expected[0]), (n, k, nq))
                    np.testing.assert_array_equal(got[1], expected[1], (n, k, nq))


def test_packed_search_refuses_a_panel_of_other_rows_or_width():
    core = cofisearch._core
    panel = core.dot_pack(np.ones((40, 8), np.float32))  # two strips
    queries = np.ones((2, 8), np.float32)
    for n in (32, 65, -1):
        with pytest.raises(ValueError, match="n must be the rows packed"):
            core.dot_search_packed(panel, n, queries, 3, 1)
    with pytest.raises(ValueError, match=r"panel must have 32 \* dim = 512 columns for queries of dim 16, got 256"):
        core.dot_search_packed(panel, 40, np.ones((2, 16), np.float32), 3, 1)
    with pytest.raises(TypeError, match="panel must have dtype float32"):
        core.dot_search_packed(panel.astype(np.float64), 40, queries, 3, 1)
    assert core.dot_search_packed(panel, 40, queries[:0], 3, 1)[1].shape == (0, 3)


def test_exact_duplicates_tie_break_by_smaller_id(simd, dot_path):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((5, 24)).astype(np.float32)
    db = base[rng.integers(0, 5, 300)]
    queries = rng.standard_normal((6, 24)).astype(np.float32)
    s, i = cofisearch.dot_knn(db, queries, 300)
    for srow, irow in zip(s, i):
        for value in np.unique(srow):
            ids = irow[srow == value]
            assert (np.diff(ids) > 0).all()


def test_cosine_normalises_database_and_queries():
    rng = np.random.default_rng(8)
    db = rng.standard_normal((200, 12)) * rng.uniform(0.1, 10, (200, 1))
    queries = rng.standard_normal((4, 12)) * 7
    index = cofisearch.FloatIndex(12, metric="cosine")
    index.add(db)
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1, rtol=1e-6)
    _check_topk(unit.astype(np.float32), q_unit.astype(np.float32), index.search(queries, 5), 5)


def test_cosine_keeps_zero_vectors_at_zero_score():
    index = cofisearch.FloatIndex(3, metric="cosine")
    index.add(np.array([[0.0, 0, 0], [1, 0, 0]], dtype=np.float32))
    s, i = index.search(np.array([0.0, 1, 0], dtype=np.float32), 2)
    assert np.isfinite(s).all()
    assert i.tolist() == [[0, 1]] and s.tolist() == [[0.0, 0.0]]


def test_cosine_does_not_modify_caller_arrays():
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    index = cofisearch.FloatIndex(2, metric="cosine")
    index.add(x)
    index.search(x, 1)
    assert x.tolist() == [[3.0, 4.0]]


def test_other_float_dtypes_are_converted_once():
    rng = np.random.default_rng(9)
    db = rng.standard_normal((50, 8))
    index = cofisearch.FloatIndex(8)
    index.add(db.astype(np.float16))
    index.add(db)
    assert index.vectors.dtype == np.float32
    np.testing.assert_array_equal(index.vectors[50:], db.astype(np.float32))
    s, _ = index.search(db[:2].astype(np.float64), 3)
    assert s.dtype == np.float32


def _numpy_rerank(db, queries, candidates, k):
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float64)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for r, (q, cand) in enumerate(zip(queries, candidates)):
        ids = np.unique(cand[cand >= 0])
        scores = db[ids].astype(np.float64) @ q.astype(np.float64)
        order = np.lexsort((ids, -scores))[:k]
        out_s[r, : len(order)] = scores[order]
        out_i[r, : len(order)] = ids[order]
    return out_s, out_i


@pytest.mark.parametrize("dim", [3, 16, 37, 256])
def test_candidates_rerank_matches_numpy(simd, dim):
    rng = np.random.default_rng(dim)
    db = rng.standard_normal((500, dim)).astype(np.float32)
    queries = rng.standard_normal((11, dim)).astype(np.float32)
    candidates = rng.integers(-1, 500, (11, 29))
    candidates[:, 5] = candidates[:, 6]  # duplicates count once
    candidates[3] = -1  # a query with no candidates at all
    index = cofisearch.FloatIndex(dim)
    index.add(db)
    s, i = index.search(queries, 10, candidates=candidates)
    rs, ri = _numpy_rerank(db, queries, candidates, 10)
    valid = ri >= 0
    np.testing.assert_array_equal(i >= 0, valid)
    np.testing.assert_allclose(s[valid], rs[valid], atol=1e-4)
    exact = queries.astype(np.float64) @ db.astype(np.float64).T
    rows = np.nonzero(valid)[0]
    np.testing.assert_allclose(exact[rows, i[valid]], s[valid], atol=1e-4)
    assert (s[~valid] == cofisearch.SCORE_SENTINEL).all()


@pytest.mark.parametrize("dim, nq", [(20, 4), (300, 13), (17, 3), (1, 1), (33, 30), (512, 9)])
def test_candidates_covering_everything_equal_exhaustive_search(simd, dim, nq):
    # Bit for bit, whatever tile shape the exhaustive scan used for these queries.
    rng = np.random.default_rng(10)
    db = rng.standard_normal((300, dim)).astype(np.float32)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    index = cofisearch.FloatIndex(dim)
    index.add(db)
    full = index.search(queries, 15)
    everything = np.tile(rng.permutation(300), (nq, 1))
    reranked = index.search(queries, 15, candidates=everything)
    np.testing.assert_array_equal(full.ids, reranked.ids)
    np.testing.assert_array_equal(full.distances, reranked.distances)


def test_candidates_accept_narrower_integer_ids():
    db = np.eye(4, dtype=np.float32)
    index = cofisearch.FloatIndex(4)
    index.add(db)
    s, i = index.search(db[2], 2, candidates=np.array([[2, 1]], dtype=np.int32))
    assert i.tolist() == [[2, 1]]


def test_rerank_cost_does_not_depend_on_index_size():
    # O(nq * c * dim): only the candidate rows are touched, so poisoning the others with
    # values that would win an exhaustive search changes nothing.
    db = np.zeros((10_000, 8), dtype=np.float32)
    db[:, 0] = 100.0
    db[[3, 9], 0] = [1.0, 2.0]
    index = cofisearch.FloatIndex(8)
    index.add(db)
    q = np.zeros((1, 8), dtype=np.float32)
    q[0, 0] = 1.0
    s, i = index.search(q, 2, candidates=np.array([[3, 9]]))
    assert i.tolist() == [[9, 3]]


@pytest.mark.parametrize("magnitude", [1e-30, 1e-22, 1e18, 5e18, 1e30])
def test_cosine_is_scale_free_across_the_float32_range(magnitude):
    # Norms in float32 used to overflow (x * 5e18 stored as zero vectors) or underflow
    # (self-cosine 1.03 at 1e-22); the stored rows must equal those of unscaled input.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 24)).astype(np.float32)
    plain = cofisearch.FloatIndex(24, metric="cosine")
    plain.add(x)
    scaled = cofisearch.FloatIndex(24, metric="cosine")
    scaled.add(x.astype(np.float64) * magnitude)
    np.testing.assert_allclose(scaled.vectors, plain.vectors, rtol=1e-6, atol=1e-7)
    s, i = scaled.search(x[:5] * np.float32(1e-3), 1)
    np.testing.assert_array_equal(i[:, 0], np.arange(5))
    np.testing.assert_allclose(s[:, 0], 1.0, rtol=1e-5)


def test_cosine_rows_of_ordinary_magnitude_keep_their_exact_bits():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((200, 33)).astype(np.float32) * np.float32(3.7)
    index = cofisearch.FloatIndex(33, metric="cosine")
    index.add(x)
    plain = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(index.vectors, plain)

"""Property-based tests of every single-machine search entry point against the NumPy
reference (``cofisearch._reference``), at every SIMD level.

Hypothesis draws the structure of each case (shapes around the driver's block edges,
code widths, dims, dtypes, memory layouts, tie patterns, magnitudes, k, threads); the
values come from a NumPy generator seeded by a drawn integer, which keeps cases of
hundreds of rows cheap to generate. Each test runs a short, derandomised campaign by
default and thousands of random examples under ``--long``.

Hamming results must equal the reference exactly. Float scores are compared ScaNN-style
(recompute the returned ids' scores) within the float32 rounding bounds documented at
``_float_tolerance``; everything the engine promises bit for bit is checked bit for bit:
the same scores and ids for every thread count, every batch composition (a query alone
or inside a batch), every memory layout and input float dtype of the same values, in the
rerank, and between ``FloatIndex`` and ``dot_knn``.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cofisearch
from cofisearch import _reference
from conftest import HAMMING_PATHS, hamming_path_forced, hamming_reference

LEVELS = cofisearch.available_simd_levels()
MAX_ROWS = 600
# float32 unit roundoff and smallest subnormal, for the rounding bounds.
UNIT = 2.0**-24
TINY = 2.0**-149


def campaign(long_run, short, long):
    """Hypothesis settings: ``short`` derandomised examples (the same every run, as CI
    needs), or ``long`` random ones under ``--long``. No deadline: 2 shared cores make
    durations meaningless, and no example database, so runs leave no files behind."""
    return settings(
        max_examples=long if long_run else short,
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@contextlib.contextmanager
def simd_level(level):
    before = cofisearch.simd_level()
    cofisearch.set_simd_level(level)
    try:
        yield
    finally:
        cofisearch.set_simd_level(before)


# ---- layouts ---------------------------------------------------------------------------

LAYOUTS = ("contiguous", "every_other_row", "fortran", "reversed", "column_slice")


def lay_out(a, layout):
    """The same values as ``a`` (2-D) in another memory layout: a view with other strides
    where the layout has one. The engine must answer exactly as for the contiguous array."""
    if layout == "every_other_row":
        wide = np.zeros((2 * a.shape[0], a.shape[1]), a.dtype)
        wide[::2] = a
        return wide[::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "reversed":
        return a[::-1].copy()[::-1]
    if layout == "column_slice":
        wide = np.zeros((a.shape[0], a.shape[1] + 3), a.dtype)
        wide[:, 1:-2] = a
        return wide[:, 1:-2]
    return np.ascontiguousarray(a)


# ---- strategies --------------------------------------------------------------------------


def block_edges(kind, row_bytes, nq):
    """Row counts up to MAX_ROWS on either side of every block edge of the driver's scan
    (``_core._scan_blocks``: a first block of 16 rows for codes or 64 for floats, then
    doubling blocks up to the full size)."""
    blocks = cofisearch._core._scan_blocks(kind, row_bytes, nq, MAX_ROWS + 2)
    edges = np.cumsum(blocks)[:-1]
    return sorted({int(e) + d for e in edges for d in (-1, 0, 1)} & set(range(1, MAX_ROWS + 1)))


def row_counts(draw, kind, row_bytes, nq):
    edges = [1, 2, *block_edges(kind, row_bytes, nq)]
    return draw(st.one_of(st.sampled_from(edges), st.integers(1, MAX_ROWS)))


def ks(draw, n):
    """1, around the row count, beyond it (padding), or anything up to n + 10."""
    near = sorted({max(1, n + d) for d in (-1, 0, 1, 7)})
    return draw(st.one_of(st.just(1), st.sampled_from(near), st.integers(1, n + 10)))


seeds = st.integers(0, 2**32 - 1)
threads = st.sampled_from([1, 2, 3])
layouts = st.sampled_from(LAYOUTS)


def rows_with_ties(rng, n, make, ties):
    """``n`` rows from ``make(count)``; ``ties`` picks how many repeat: none, every few
    rows a copy of an earlier one, or all drawn from a pool of 1-4 distinct rows."""
    if ties == "pool":
        pool = make(int(rng.integers(1, 5)))
        return pool[rng.integers(0, pool.shape[0], n)]
    rows = make(n)
    if ties == "duplicates" and n > 1:
        step = int(rng.integers(2, 8))
        rows[1::step] = rows[rng.integers(0, n, len(rows[1::step]))]
    return rows


# ---- result properties --------------------------------------------------------------------


def check_result_shape_and_order(result, n, k, *, largest, found=None):
    """What every search result must be, whatever the kernel: (nq, k) int32 distances or
    float32 scores and int64 ids; ids unique and in range; best first; equal values in
    ascending id order; padding (id -1 and the sentinel) exactly past the first
    ``min(k, found)`` columns, ``found`` being the rows a query can reach (default n)."""
    d, i = result
    assert d.shape == i.shape and d.shape[1] == k
    assert d.dtype == (np.float32 if largest else np.int32) and i.dtype == np.int64
    sentinel = _reference.SCORE_SENTINEL if largest else _reference.HAMMING_SENTINEL
    for q in range(d.shape[0]):
        m = min(k, n if found is None else found[q])
        real = i[q, :m]
        assert ((real >= 0) & (real < n)).all() and len(np.unique(real)) == m
        assert (i[q, m:] == -1).all() and (d[q, m:] == sentinel).all()
        step = np.diff(-d[q, :m] if largest else d[q, :m])
        assert (step >= 0).all(), "not sorted best-first"
        assert (np.diff(real)[step == 0] > 0).all(), "a tie is not in ascending id order"


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_identical(got, want, what=""):
    """Bit for bit: the same ids and the same distance bits (-0.0 is not 0.0)."""
    (got_d, got_i), (want_d, want_i) = got, want
    np.testing.assert_array_equal(got_i, want_i, err_msg=what)
    assert got_d.dtype == want_d.dtype, what
    if got_d.dtype == np.float32:
        np.testing.assert_array_equal(bits(got_d), bits(want_d), err_msg=what)
    else:
        np.testing.assert_array_equal(got_d, want_d, err_msg=what)


# ---- Hamming -------------------------------------------------------------------------------


def random_codes(rng, n, nbytes, values):
    if values == "few":
        # Bytes from a 3-value alphabet: most distances are shared by many rows.
        return rng.choice(np.array([0, 0x0F, 0xFF], np.uint8), (n, nbytes))
    return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)


@st.composite
def binary_cases(draw, max_bytes=128):
    nbytes = draw(st.one_of(st.integers(1, max_bytes), st.sampled_from([129, 256, 257, 384, 511, 512])))
    nq = draw(st.one_of(st.integers(1, 5), st.integers(6, 40)))
    n = row_counts(draw, "hamming", nbytes, nq)
    rng = np.random.default_rng(draw(seeds))
    values = draw(st.sampled_from(["random", "few"]))
    db = rows_with_ties(
        rng, n, lambda c: random_codes(rng, c, nbytes, values),
        draw(st.sampled_from(["none", "duplicates", "pool"])),
    )
    queries = random_codes(rng, nq, nbytes, values)
    if draw(st.booleans()):
        queries[::2] = db[rng.integers(0, n, len(queries[::2]))]  # exact matches: distance 0
    return {
        "db": db, "queries": queries, "k": ks(draw, n), "threads": draw(threads),
        "db_layout": draw(layouts), "q_layout": draw(layouts),
        "split": draw(st.integers(0, n)), "alone": draw(st.integers(0, nq - 1)),
        "path": draw(st.sampled_from(["auto", *HAMMING_PATHS])),
    }


def check_hamming_result(result, db, queries, k):
    check_result_shape_and_order(result, db.shape[0], k, largest=False)
    d, i = result
    m = min(k, db.shape[0])
    for q in range(queries.shape[0]):
        # Distances recomputed from the returned ids, exactly.
        recomputed = _reference.hamming_distances(queries[q : q + 1], db[i[q, :m]])[0]
        np.testing.assert_array_equal(d[q, :m], recomputed)


def test_binary_index_and_hamming_knn_match_the_reference(long_run):
    @campaign(long_run, 300, 3000)
    @given(binary_cases())
    def binary_case(case):
        db, queries, k, t = case["db"], case["queries"], case["k"], case["threads"]
        want = hamming_reference(db, queries, k)
        check_hamming_result(want, db, queries, k)
        j = case["alone"]
        for level in LEVELS:
            with simd_level(level), hamming_path_forced(case["path"]):
                index = cofisearch.BinaryIndex(db.shape[1] * 8)
                # Two adds (one possibly empty) hold the same rows as one.
                index.add(lay_out(db[: case["split"]], case["db_layout"]))
                index.add(lay_out(db[case["split"] :], case["db_layout"]))
                q = lay_out(queries, case["q_layout"])
                got = index.search(q, k, num_threads=t)
                assert_identical(got, want, level)
                one_off = cofisearch.hamming_knn(lay_out(db, case["db_layout"]), q, k, num_threads=t)
                assert_identical(one_off, want, level)
                # A 1-D query is a batch of one, answered as inside the batch.
                alone = index.search(q[j], k, num_threads=t)
                assert_identical(alone, (want[0][j : j + 1], want[1][j : j + 1]), level)

    binary_case()


def test_every_code_width_up_to_1024_bits_and_some_to_4096():
    # A short hypothesis run skips most widths: every width up to 1024 bits (every kernel
    # tail) is also run here, on both paths, with ties across the first block edges (16,
    # 48 rows: 67 rows span three blocks).
    rng = np.random.default_rng(11)
    for nbytes in [*range(1, 129), 136, 192, 255, 256, 257, 384, 500, 511, 512]:
        db = rows_with_ties(rng, 67, lambda c, w=nbytes: random_codes(rng, c, w, "few"), "duplicates")
        queries = np.vstack([db[:2], random_codes(rng, 3, nbytes, "random")])
        for k in (1, 66, 70):
            want = hamming_reference(db, queries, k)
            for level in LEVELS:
                for path in HAMMING_PATHS:
                    with simd_level(level), hamming_path_forced(path):
                        got = cofisearch.hamming_knn(db, queries, k)
                    assert_identical(got, want, f"{level} {path} {nbytes}B")


# ---- floats --------------------------------------------------------------------------------

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def float_tolerance(q, db):
    """Per-pair bound on |engine score - exact score| for float32 rows ``q`` and ``db``
    (as the engine stores them): a dot product of ``dim`` terms summed in any order, with
    or without FMA, is off by at most ``dim * u * sum|q_i x_i|`` (u = 2**-24), plus one
    rounding of the result and an absolute ``2**-149`` per operation where products fall
    among the subnormals. Returns ``(nq, n)`` float64."""
    q64, db64 = np.abs(q.astype(np.float64)), np.abs(db.astype(np.float64))
    dim = q.shape[1]
    return (dim + 2) * UNIT * (q64 @ db64.T) + 2 * (dim + 2) * TINY


# Cosine compares with the exact cosine of the float32 inputs: the float32 normalisation
# adds at most about (dim / 2 + 2) u per vector on top of the dot product's bound.
def cosine_tolerance(dim):
    return (2 * dim + 8) * UNIT


def scaled(rng, n, dim, dtype, metric, exponent):
    """``n`` normal rows of ``dim`` as ``dtype``: for ip one magnitude ``10**exponent``;
    for cosine each row its own magnitude in 1e-30..1e30 (float16 keeps to its range),
    and now and then an all-zero row (cosine 0 with everything)."""
    x = rng.standard_normal((n, dim))
    if metric == "cosine":
        span = 2 if dtype == np.float16 else 30
        x *= 10.0 ** rng.uniform(-span, span, (n, 1))
        x[rng.random(n) < 0.05] = 0
    else:
        x *= 10.0**exponent
    return x.astype(dtype)


def small_integers(rng, n, dim, dtype, exponent):
    """Integer values in [-3, 3] times a power of two: every product and partial sum is
    exact in float32, so inner products are exact and ties between them are real."""
    return np.ldexp(rng.integers(-3, 4, (n, dim)).astype(np.float64), exponent).astype(dtype)


@st.composite
def float_cases(draw):
    dim = draw(st.one_of(st.integers(1, 40), st.integers(41, 300)))
    # Up to 61 queries: at AVX-512, 1-8 queries stream the rows, 9+ use a query panel,
    # 33+ a row panel.
    nq = draw(st.one_of(st.integers(1, 8), st.integers(9, 61)))
    n = row_counts(draw, "dot", dim * 4, nq)
    metric = draw(st.sampled_from(["ip", "cosine"]))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    values = draw(st.sampled_from(["normal", "integers"] if metric == "ip" else ["normal"]))
    rng = np.random.default_rng(draw(seeds))
    if values == "integers":
        # Powers of two whose products stay normal floats: exact scores.
        e_db, e_q = (draw(st.integers(-12, 12)) for _ in range(2)) if dtype == np.float16 else (
            draw(st.integers(-60, 60)) for _ in range(2))
        make_db = lambda c: small_integers(rng, c, dim, dtype, e_db)
        queries = small_integers(rng, nq, dim, dtype, e_q)
    else:
        # ip magnitudes: 10**e_db times 10**e_q with products far from float32's ends.
        limit = 3 if dtype == np.float16 else 25
        e_db = draw(st.integers(-limit, limit))
        e_q = draw(st.integers(max(-limit, -30 - e_db), min(limit, 30 - e_db)))
        make_db = lambda c: scaled(rng, c, dim, dtype, metric, e_db)
        queries = scaled(rng, nq, dim, dtype, metric, e_q)
    db = rows_with_ties(rng, n, make_db, draw(st.sampled_from(["none", "duplicates", "pool"])))
    if draw(st.booleans()):
        # Queries that are database rows, rescaled by a power of two: to the queries'
        # magnitude for ip (products stay in range), anywhere for cosine (still cosine 1).
        if metric == "cosine":
            shift = 0 if dtype == np.float16 else int(rng.integers(-20, 21))
        elif values == "integers":
            shift = e_q - e_db
        else:
            shift = round((e_q - e_db) * np.log2(10))
        picked = db[rng.integers(0, n, len(queries[::2]))].astype(np.float64)
        queries[::2] = np.ldexp(picked, shift).astype(dtype)
    n_cand = draw(st.one_of(st.integers(0, 3), st.integers(1, 2 * n + 3)))
    candidates = rng.integers(-1, n, (nq, n_cand))
    return {
        "db": db, "queries": queries, "metric": metric, "exact": values == "integers", "k": ks(draw, n),
        "threads": draw(threads), "db_layout": draw(layouts), "q_layout": draw(layouts),
        "split": draw(st.integers(0, n)), "alone": draw(st.integers(0, nq - 1)),
        "candidates": candidates,
    }


def stored(x, metric):
    """Rows as a FloatIndex stores them: float32, unit rows for cosine."""
    x = np.asarray(x, dtype=np.float32)
    return _reference.unit_rows(x) if metric == "cosine" else x


def check_scores(result, q32, db32, metric, allowed=None):
    """ScaNN-style: each returned score within the rounding bound of its id's exact
    score, and the j-th best within the query's largest bound of the exact j-th best
    among the rows the query may return (``allowed``, an (nq, n) mask; default all)."""
    if metric == "cosine":
        exact = _reference.unit_rows(q32.astype(np.float64)) @ _reference.unit_rows(
            db32.astype(np.float64)).T
        tol = np.full(exact.shape, cosine_tolerance(q32.shape[1]))
    else:
        exact = q32.astype(np.float64) @ db32.astype(np.float64).T
        tol = float_tolerance(q32, db32)
    if allowed is not None:
        exact = np.where(allowed, exact, -np.inf)
    best = -np.sort(-exact, axis=1)
    for q, (s, i) in enumerate(zip(*result)):
        m = int((i >= 0).sum())
        got, ids = s[:m].astype(np.float64), i[:m]
        err = np.abs(exact[q, ids] - got)
        assert (err <= tol[q, ids]).all(), f"query {q}: a score is off by {err.max():.3g}"
        assert (np.abs(best[q, :m] - got) <= tol[q].max()).all(), f"query {q}: a better row was missed"


def topk_of_all_scores(full, n, k):
    """The top-k that a search must return, from the scores of every row (a k = n search
    of the same queries, scattered by id): the engine computes a pair's score with the
    same arithmetic whatever k, the batch or the path, so ids and bits must agree."""
    scores = np.empty(full.ids.shape, np.float32)
    np.put_along_axis(scores, full.ids, full.distances, axis=1)
    return _reference.topk(scores, k, largest=True), scores


def rerank_reference(all_scores, candidates, k):
    """The rerank of ``candidates`` (-1 padding, duplicates counted once) by the scores of
    every row, ordered by ``_reference.merge_topk``."""
    rows = []
    for q, c in enumerate(candidates):
        ids = np.unique(c[c >= 0])
        rows.append((all_scores[q, ids], ids))
    width = max(1, max(len(ids) for _, ids in rows))
    d = np.full((len(rows), width), _reference.SCORE_SENTINEL, np.float32)
    i = np.full((len(rows), width), -1, np.int64)
    for q, (scores, ids) in enumerate(rows):
        d[q, : len(ids)], i[q, : len(ids)] = scores, ids
    return _reference.merge_topk([(d, i)], k, largest=True)


def test_float_index_dot_knn_and_rerank_match_the_reference(long_run):
    @campaign(long_run, 300, 3000)
    @given(float_cases())
    def float_case(case):
        db, queries, metric, k, t = (case[x] for x in ("db", "queries", "metric", "k", "threads"))
        n, nq, j = db.shape[0], queries.shape[0], case["alone"]
        db32, q32 = stored(db, metric), stored(queries, metric)
        q = lay_out(queries, case["q_layout"])
        for level in LEVELS:
            with simd_level(level):
                index = cofisearch.FloatIndex(db.shape[1], metric=metric)
                index.add(lay_out(db[: case["split"]], case["db_layout"]))
                index.add(lay_out(db[case["split"] :], case["db_layout"]))
                full = index.search(queries, n, num_threads=1)
                check_result_shape_and_order(full, n, n, largest=True)
                check_scores(full, q32, db32, metric)
                want, all_scores = topk_of_all_scores(full, n, k)
                if case["exact"]:
                    # Exact scores: the ids are those of the reference, ties included.
                    exact = q32.astype(np.float64) @ db32.astype(np.float64).T
                    assert_identical(want, _reference.topk(exact.astype(np.float32), k, largest=True))
                got = index.search(q, k, num_threads=t)
                check_result_shape_and_order(got, n, k, largest=True)
                assert_identical(got, want, f"{level}: k={k}, {t} threads")
                assert_identical(index.search(q.astype(np.float32), k), want, "as float32")
                alone = index.search(q[j], k, num_threads=t)
                assert_identical(alone, (want[0][j : j + 1], want[1][j : j + 1]), "alone")
                # dot_knn over the stored rows computes what the index computes.
                one_off = cofisearch.dot_knn(lay_out(db32, case["db_layout"]), q32, k, num_threads=t)
                assert_identical(one_off, want, "dot_knn")
                # The rerank scores a pair as the full scan does, bit for bit.
                cand = case["candidates"]
                reranked = index.search(q, k, candidates=lay_out(cand, case["q_layout"]), num_threads=t)
                distinct = [len(np.unique(c[c >= 0])) for c in cand]
                check_result_shape_and_order(reranked, n, k, largest=True, found=distinct)
                assert_identical(reranked, rerank_reference(all_scores, cand, k), "rerank")
                if nq > 1:
                    batch_rerank = index.search(q[j], k, candidates=cand[j])
                    assert_identical(batch_rerank, (reranked[0][j : j + 1], reranked[1][j : j + 1]))

    float_case()


# ---- refusals ----------------------------------------------------------------------------

NOT_FLOATS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64, np.bool_)
NOT_CODES = (np.int8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_)


def test_integer_vectors_and_non_uint8_codes_raise_type_error(long_run):
    @campaign(long_run, 20, 500)
    @given(
        width=st.integers(1, 40), n=st.integers(1, 20), one_d=st.booleans(),
        not_float=st.sampled_from(NOT_FLOATS), not_code=st.sampled_from(NOT_CODES),
    )
    def wrong_dtype(width, n, one_d, not_float, not_code):
        rng = np.random.default_rng(width * n)
        vectors = rng.standard_normal((n, width)).astype(np.float32)
        codes = rng.integers(0, 256, (n, width), dtype=np.uint8)
        ints, bad_codes = vectors.astype(not_float), codes.astype(not_code)
        bad_q, bad_cq = (ints[0], bad_codes[0]) if one_d else (ints, bad_codes)
        floats, binary = cofisearch.FloatIndex(width), cofisearch.BinaryIndex(8 * width)
        floats.add(vectors)
        binary.add(codes)
        refused = [
            lambda: floats.add(ints), lambda: floats.search(bad_q, 1),
            lambda: cofisearch.dot_knn(ints, vectors, 1), lambda: cofisearch.dot_knn(vectors, bad_q, 1),
            lambda: binary.add(bad_codes), lambda: binary.search(bad_cq, 1),
            lambda: cofisearch.hamming_knn(bad_codes, codes, 1),
            lambda: cofisearch.hamming_knn(codes, bad_cq, 1),
        ]
        for call in refused:
            with pytest.raises(TypeError, match="dtype"):
                call()

    wrong_dtype()


def test_empty_indexes_and_databases_refuse_to_search(long_run):
    @campaign(long_run, 10, 200)
    @given(
        width=st.integers(1, 40), k=st.integers(1, 5), one_d=st.booleans(),
        metric=st.sampled_from(["ip", "cosine"]),
    )
    def empty(width, k, one_d, metric):
        codes = np.zeros((1, width), np.uint8)
        vectors = np.ones((1, width), np.float32)
        qc, qv = (codes[0], vectors[0]) if one_d else (codes, vectors)
        binary, floats = cofisearch.BinaryIndex(8 * width), cofisearch.FloatIndex(width, metric=metric)
        cascade = cofisearch.Cascade(binary, floats, n_candidates=k)
        for call in (
            lambda: binary.search(qc, k), lambda: floats.search(qv, k),
            lambda: floats.search(qv, k, candidates=np.full((1, 1), -1)),
            lambda: cascade.search(qc, qv, k),
        ):
            with pytest.raises(ValueError, match="empty"):
                call()
        for call in (
            lambda: cofisearch.hamming_knn(codes[:0], qc, k),
            lambda: cofisearch.dot_knn(vectors[:0], qv, k),
        ):
            with pytest.raises(ValueError, match="at least one"):
                call()

    empty()

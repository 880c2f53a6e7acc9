"""Property-based tests of ``Cascade.search`` against a NumPy cascade built from
``cofisearch._reference``, and of ``distributed.ShardedIndex`` against the single index
(a few examples on one Ray shared by the module: starting Ray costs seconds).

Strategies, layouts, tolerances and the result checks are those of test_properties.py.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cofisearch
from cofisearch import _reference
from conftest import hamming_reference
from test_properties import (
    LEVELS,
    assert_identical,
    campaign,
    check_hamming_result,
    check_result_shape_and_order,
    check_scores,
    ks,
    lay_out,
    layouts,
    random_codes,
    row_counts,
    rows_with_ties,
    seeds,
    simd_level,
    small_integers,
    stored,
    threads,
)


def integer_reranker(n, rng):
    """A reranker of integer scores per database item (query-independent, many ties):
    deterministic, so the NumPy cascade can call it too."""
    item_scores = rng.integers(0, 4, n).astype(np.float64)

    def rerank(queries, ids):
        return np.where(ids >= 0, item_scores[np.maximum(ids, 0)], np.nan)

    return rerank


def numpy_cascade(codes, vectors, qc, qv, k, n_candidates, metric, reranker, n_rerank):
    """The cascade in NumPy: screen by _reference Hamming top-k, score the candidates in
    float64, keep the best ``depth`` (ties by the smaller id), then the reranker's best k.
    Returns (scores, ids, candidates)."""
    _, candidates = hamming_reference(codes, qc, n_candidates)
    db64, q64 = stored(vectors, metric).astype(np.float64), stored(qv, metric).astype(np.float64)
    scores = np.einsum("qcd,qd->qc", db64[np.maximum(candidates, 0)], q64)
    depth = max(k, n_rerank) if reranker is not None else k
    s2, i2 = _reference.merge_topk([(scores, candidates)], depth, largest=True)
    if reranker is None:
        return s2[:, :k].astype(np.float32), i2[:, :k], candidates
    top = i2[:, :n_rerank]
    s3, i3 = _reference.merge_topk([(reranker(qv, top), top)], k, largest=True)
    return s3.astype(np.float32), i3, candidates


@st.composite
def cascade_cases(draw):
    nbytes = draw(st.one_of(st.integers(1, 8), st.integers(9, 64)))
    dim = draw(st.integers(1, 48))
    nq = draw(st.integers(1, 12))
    n = row_counts(draw, "hamming", nbytes, nq)
    rng = np.random.default_rng(draw(seeds))
    codes = rows_with_ties(
        rng, n, lambda c: random_codes(rng, c, nbytes, "few"),
        draw(st.sampled_from(["none", "duplicates", "pool"])),
    )
    # "exact": small integers (ip), whose float32 scores are exact, so the ids must equal
    # the NumPy cascade's; "normal": float data, compared ScaNN-style.
    mode = draw(st.sampled_from(["exact", "ip", "cosine"]))
    metric = "cosine" if mode == "cosine" else "ip"
    if mode == "exact":
        vectors, qv = small_integers(rng, n, dim, np.float32, 0), small_integers(rng, nq, dim, np.float32, 0)
    else:
        vectors, qv = rng.standard_normal((n, dim)), rng.standard_normal((nq, dim))
    qc = random_codes(rng, nq, nbytes, "few")
    if draw(st.booleans()):
        qc[::2] = codes[rng.integers(0, n, len(qc[::2]))]
    n_candidates = draw(st.one_of(st.integers(1, 20), st.integers(1, n + 5)))
    reranker = integer_reranker(n, rng) if draw(st.booleans()) else None
    n_rerank = draw(st.integers(1, n_candidates + 3)) if reranker is not None else None
    return {
        "codes": codes, "vectors": vectors, "qc": qc, "qv": qv, "k": ks(draw, min(n, n_candidates)),
        "n_candidates": n_candidates, "metric": metric, "exact": mode == "exact", "reranker": reranker,
        "n_rerank": n_rerank, "threads": draw(threads), "layout": draw(layouts),
        "alone": draw(st.integers(0, nq - 1)),
    }


def test_cascade_matches_a_numpy_cascade(long_run):
    @campaign(long_run, 150, 2000)
    @given(cascade_cases())
    def cascade_case(case):
        codes, vectors, qc, qv, k = (case[x] for x in ("codes", "vectors", "qc", "qv", "k"))
        n, reranker, metric, j = codes.shape[0], case["reranker"], case["metric"], case["alone"]
        n_rerank = case["n_rerank"] or case["n_candidates"]
        want_s, want_i, want_c = numpy_cascade(
            codes, vectors, qc, qv, k, case["n_candidates"], metric, reranker, n_rerank)
        for level in LEVELS:
            with simd_level(level):
                coarse = cofisearch.BinaryIndex(codes.shape[1] * 8)
                fine = cofisearch.FloatIndex(vectors.shape[1], metric=metric)
                cascade = cofisearch.Cascade(
                    coarse, fine, case["n_candidates"], reranker=reranker, n_rerank=case["n_rerank"])
                cascade.add(lay_out(codes, case["layout"]), lay_out(vectors, case["layout"]))
                got = cascade.search(lay_out(qc, case["layout"]), qv, k, num_threads=case["threads"])
                # The screen is exact: its candidates are the reference's.
                np.testing.assert_array_equal(got.candidates, want_c)
                check_hamming_result(coarse.search(qc, case["n_candidates"]), codes, qc, case["n_candidates"])
                # Real results: the candidates found, and no more than the reranker scored
                # (with k > n_rerank the rest is padding, as with k > n_candidates).
                found = [min(len(c[c >= 0]), n_rerank if reranker else k) for c in want_c]
                check_result_shape_and_order(got, n, k, largest=True, found=found)
                stage2 = fine.search(qv, max(k, n_rerank) if reranker else k, candidates=want_c)
                if case["exact"]:
                    assert_identical(got, (want_s, want_i), level)
                elif reranker is None:
                    # Float near-ties may order differently from float64: compare scores.
                    assert_identical(got, (stage2[0][:, :k], stage2[1][:, :k]), level)
                    allowed = np.zeros((len(qc), n), bool)
                    q_of, col = np.nonzero(want_c >= 0)
                    allowed[q_of, want_c[q_of, col]] = True
                    check_scores(got, stored(qv, metric), stored(vectors, metric), metric, allowed)
                else:
                    # The reranker orders the engine's stage 2 as the NumPy stage 3 does.
                    top = stage2.ids[:, :n_rerank]
                    s3, i3 = _reference.merge_topk([(reranker(qv, top), top)], k, largest=True)
                    assert_identical(got, (s3.astype(np.float32), i3), level)
                alone = cascade.search(qc[j], qv[j], k)
                assert_identical(alone, (got[0][j : j + 1], got[1][j : j + 1]), "alone")
                np.testing.assert_array_equal(alone.candidates, want_c[j : j + 1])

    cascade_case()


@pytest.fixture(scope="module")
def sharded_pair():
    """A 3-shard binary and float index on one local Ray, for the whole module: each
    example adds rows to them (and to single-machine twins) and searches."""
    ray = pytest.importorskip("ray")
    from cofisearch.distributed import ShardedIndex

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    binary = ShardedIndex(cofisearch.BinaryIndex(72), 3)
    floats = ShardedIndex(cofisearch.FloatIndex(13, metric="cosine"), 3)
    yield (binary, cofisearch.BinaryIndex(72)), (floats, cofisearch.FloatIndex(13, metric="cosine"))
    binary.close()
    floats.close()
    if started:
        ray.shutdown()


def test_sharded_index_answers_as_the_single_index(long_run, sharded_pair):
    (binary, single_binary), (floats, single_floats) = sharded_pair

    @campaign(long_run, 10, 300)
    @given(seed=seeds, n=st.integers(1, 300), nq=st.integers(1, 9), extra_k=st.integers(0, 20),
           n_cand=st.integers(0, 40), layout=layouts)
    def sharded_case(seed, n, nq, extra_k, n_cand, layout):
        rng = np.random.default_rng(seed)
        codes = rows_with_ties(rng, n, lambda c: random_codes(rng, c, 9, "few"), "duplicates")
        vectors = rows_with_ties(rng, n, lambda c: rng.standard_normal((c, 13)), "duplicates")
        for sharded, single, rows in ((binary, single_binary, codes), (floats, single_floats, vectors)):
            sharded.add(lay_out(rows, layout))
            single.add(rows)
        total = single_binary.ntotal
        qc, qv = codes[rng.integers(0, n, nq)], rng.standard_normal((nq, 13))
        # k up to past the whole index: padding comes back merged from every shard.
        k = int(rng.integers(1, 30)) if extra_k < 10 else total + extra_k
        got = binary.search(lay_out(qc, layout), k)
        assert_identical(got, hamming_reference(np.asarray(single_binary.codes), qc, k))
        assert_identical(floats.search(qv, k), single_floats.search(qv, k))
        candidates = rng.integers(-1, total, (nq, n_cand))
        assert_identical(
            floats.search(qv, k, candidates=candidates),
            single_floats.search(qv, k, candidates=candidates),
        )

    sharded_case()

"""IVFBinaryIndex and its probe driver (_core.ivf_search) against the NumPy reference:
the same probe (the same lists), then the exact top-k among their items, ties by the
smaller id, at every SIMD level and kernel path, 1 and 2 threads, odd tails."""

import os
import pickle
import sys
import threading

import numpy as np
import pytest
from conftest import hamming_reference

import cofisearch
from cofisearch import _core, _reference
from cofisearch import ivf as ivf_module
from cofisearch.cascade import Cascade

BIG = np.iinfo(np.int32).max


def _codes(rng, n, nbytes, *, mask=0xFF):
    return rng.integers(0, 256, (n, nbytes), dtype=np.uint8) & np.uint8(mask)


def _among(codes, items, queries, k):
    """Exact top-k of each query over ``items[q]`` (ascending ids), as the engine pads."""
    out_d = np.full((len(queries), k), BIG, dtype=np.int32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for q, ids in enumerate(items):
        if ids.size == 0:
            continue
        d, i = hamming_reference(codes[ids], queries[q : q + 1], k)
        out_d[q] = d[0]
        out_i[q] = np.where(i[0] >= 0, ids[np.maximum(i[0], 0)], -1)
    return out_d, out_i


def _assert_result(got, expected):
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


# ---- the driver -------------------------------------------------------------------------


def _scattered_lists(rng, codes, nlist):
    """The rows of ``codes`` dealt into ``nlist`` lists (a few empty), laid out in a random
    list order in one buffer with garbage rows between them, as the index's spare room
    leaves them. Returns (buffer, ids, start, size, assignment of each row)."""
    n, nbytes = codes.shape
    assign = rng.integers(0, nlist, n)
    assign[assign == nlist - 1] = 0  # the last list stays empty
    pieces, id_pieces, start, size, row = [], [], np.zeros(nlist, np.int64), np.zeros(nlist, np.int64), 0
    for l in rng.permutation(nlist):
        members = np.flatnonzero(assign == l)
        gap = int(rng.integers(0, 4))
        pieces.append(_codes(rng, gap, nbytes))
        id_pieces.append(rng.integers(0, n, gap))
        row += gap
        start[l], size[l] = row, members.size
        pieces.append(codes[members])
        id_pieces.append(members)
        row += members.size
    return np.concatenate(pieces), np.concatenate(id_pieces).astype(np.int64), start, size, assign


@pytest.mark.parametrize(
    "nbits, n, nlist, nq, nprobe, k",
    [
        (8, 300, 7, 19, 3, 25),  # one byte, ties everywhere, k beyond some probes' items
        (72, 1500, 13, 37, 4, 10),  # a tail past whole words, an odd batch
        (256, 2200, 9, 70, 3, 40),  # many queries per list: tiles and the panel's group
        (520, 600, 5, 5, 2, 7),  # wide codes past the counting selector
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_driver_equals_the_reference_over_the_probed_lists(simd, hamming_path, threads, nbits,
                                                          n, nlist, nq, nprobe, k):
    rng = np.random.default_rng(nbits + n)
    codes = _codes(rng, n, nbits // 8, mask=0x0F if nbits <= 72 else 0xFF)
    buffer, ids, start, size, assign = _scattered_lists(rng, codes, nlist)
    queries = _codes(rng, nq, nbits // 8)
    probes = np.stack([rng.choice(nlist, nprobe, replace=False) for _ in range(nq)]).astype(np.int64)
    probes[::4, -1] = -1  # skipped
    probes[1::4, 0] = probes[1::4, 1]  # a list named twice is scanned once
    got = _core.ivf_search(buffer, ids, start, size, queries, probes, k, threads)
    items = [np.flatnonzero(np.isin(assign, p[p >= 0])) for p in probes]
    _assert_result(got, _among(codes, items, queries, k))


@pytest.mark.parametrize("nq", [1, 3])
def test_driver_splits_the_lists_of_a_few_queries_over_threads(simd, nq):
    # Enough bytes for two threads (8 MiB each): a few queries split the probed lists
    # across threads and merge, with the result of one thread.
    rng = np.random.default_rng(nq)
    codes = _codes(rng, 600_000, 32, mask=0x33)
    buffer, ids, start, size, _ = _scattered_lists(rng, codes, 6)
    queries = _codes(rng, nq, 32, mask=0x33)
    probes = np.tile(np.arange(6, dtype=np.int64), (nq, 1))
    one = _core.ivf_search(buffer, ids, start, size, queries, probes, 50, 1)
    two = _core.ivf_search(buffer, ids, start, size, queries, probes, 50, 2)
    _assert_result(two, one)
    _assert_result(one, hamming_reference(codes, queries, 50))


def test_driver_splits_a_batch_over_threads_by_queries(simd):
    # Enough bytes for two threads and queries for both: each thread inverts the probes
    # of its own queries.
    rng = np.random.default_rng(5)
    codes = _codes(rng, 40_000, 32, mask=0x0F)
    buffer, ids, start, size, assign = _scattered_lists(rng, codes, 9)
    queries = _codes(rng, 17, 32, mask=0x0F)
    probes = np.stack([rng.permutation(9)[:7] for _ in range(17)]).astype(np.int64)
    got = _core.ivf_search(buffer, ids, start, size, queries, probes, 30, 2)
    items = [np.flatnonzero(np.isin(assign, p)) for p in probes]
    _assert_result(got, _among(codes, items, queries, 30))


def test_driver_ties_at_the_kth_distance_go_to_the_smaller_id_across_lists():
    # Every code is equal: the top k are the k smallest ids, which the lists interleave.
    codes = np.zeros((400, 8), dtype=np.uint8)
    rng = np.random.default_rng(3)
    buffer, ids, start, size, _ = _scattered_lists(rng, codes, 8)
    probes = np.tile(np.arange(7, -1, -1, dtype=np.int64), (2, 1))
    d, i = _core.ivf_search(buffer, ids, start, size, codes[:2], probes, 30, 1)
    np.testing.assert_array_equal(i, np.tile(np.arange(30), (2, 1)))
    np.testing.assert_array_equal(d, 0)


_GOOD = {
    "codes": np.zeros((4, 2), np.uint8), "ids": np.arange(4, dtype=np.int64),
    "list_start": np.array([0, 2], np.int64), "list_size": np.array([2, 2], np.int64),
    "queries": np.zeros((1, 2), np.uint8), "probes": np.array([[0, 1]], np.int64), "k": 2,
    "num_threads": 1,
}


@pytest.mark.parametrize(
    "change, error, fragment",
    [
        ({"ids": np.arange(4, dtype=np.int32)}, TypeError, "ids must have dtype int64"),
        ({"ids": np.arange(3, dtype=np.int64)}, ValueError, "one entry per row"),
        ({"list_size": np.array([2, 3], np.int64)}, ValueError, "list 1"),
        ({"list_start": np.array([-1, 2], np.int64)}, ValueError, "list 0"),
        ({"list_start": np.array([0], np.int64)}, ValueError, "same length"),
        ({"probes": np.array([[0, 2]], np.int64)}, ValueError, "probes must hold list numbers"),
        ({"probes": np.array([[0, -2]], np.int64)}, ValueError, "probes must hold list numbers"),
        ({"probes": np.zeros((2, 1), np.int64)}, ValueError, "one row per query"),
        ({"queries": np.zeros((1, 3), np.uint8)}, ValueError, "bytes per row"),
        ({"k": 0}, ValueError, "k must be >= 1"),
    ],
)
def test_driver_refuses_what_would_read_outside_its_buffers(change, error, fragment):
    with pytest.raises(error, match=fragment):
        _core.ivf_search(**{**_GOOD, **change})


# ---- the index: exactness -------------------------------------------------------------


def _trained(nbits=64, nlist=8, n=1500, *, vectors=False, seed=0, mask=0xFF, **kw):
    rng = np.random.default_rng(seed)
    codes = _codes(rng, n, nbits // 8, mask=mask)
    vecs = rng.standard_normal((n, 24)).astype(np.float32) if vectors else None
    index = cofisearch.IVFBinaryIndex(nbits, nlist, **kw)
    index.train(codes, vecs)
    index.add(codes, vecs)
    return index, codes, vecs


@pytest.mark.parametrize("vectors", [False, True])
@pytest.mark.parametrize("nbits, mask", [(16, 0x03), (64, 0xFF), (136, 0xFF)])
def test_probing_every_list_equals_exhaustive_search(simd, vectors, nbits, mask):
    index, codes, _ = _trained(nbits, nlist=11, vectors=vectors, mask=mask)
    rng = np.random.default_rng(9)
    queries = _codes(rng, 33, nbits // 8, mask=mask)
    qv = rng.standard_normal((33, 24)).astype(np.float32) if vectors else None
    for threads in (1, 2):
        got = index.search(queries, 17, nprobe=11, vectors=qv, num_threads=threads)
        _assert_result(got, cofisearch.hamming_knn(codes, queries, 17))
    index.nprobe = 1000  # beyond nlist: every list
    _assert_result(index.search(queries, 5, vectors=qv), cofisearch.hamming_knn(codes, queries, 5))


def _nearest_lists_reference(centroids, queries, nprobe):
    return hamming_reference(centroids, queries, nprobe)[1]


@pytest.mark.parametrize("nprobe", [1, 3])
def test_codes_routing_and_search_equal_the_reference(simd, hamming_path, nprobe):
    index, codes, _ = _trained(72, nlist=10, n=1200, mask=0x3C)
    rng = np.random.default_rng(4)
    queries = _codes(rng, 41, 9, mask=0x3C)
    centroids = np.asarray(index.centroids)
    # Items go to their nearest centroid (ties to the smaller list), in id order.
    assign = _nearest_lists_reference(centroids, codes, 1)[:, 0]
    for l in range(index.nlist):
        np.testing.assert_array_equal(index.list_ids(l), np.flatnonzero(assign == l))
    probes = _nearest_lists_reference(centroids, queries, nprobe)
    np.testing.assert_array_equal(index.probe(queries, nprobe), probes)
    items = [np.flatnonzero(np.isin(assign, p)) for p in probes]
    for threads in (1, 2):
        got = index.search(queries, 12, nprobe=nprobe, num_threads=threads)
        _assert_result(got, _among(codes, items, queries, 12))


def _clear_top(scores, m):
    """Rows whose m-th and (m+1)-th best scores differ by a clear margin, so that float
    rounding cannot reorder the top m."""
    ranked = -np.sort(-scores, axis=1)
    if m >= scores.shape[1]:
        return np.ones(scores.shape[0], bool)
    return ranked[:, m - 1] - ranked[:, m] > 1e-4


def test_vector_routing_is_by_cosine_to_unit_centroids():
    index, codes, vecs = _trained(64, nlist=9, n=900, vectors=True)
    centroids = np.asarray(index.centroids, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    scores = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ centroids.T
    clear = _clear_top(scores, 1)
    assert clear.mean() > 0.95
    member = np.zeros(len(codes), np.int64)
    for l in range(index.nlist):
        member[index.list_ids(l)] = l
    np.testing.assert_array_equal(member[clear], np.argmax(scores, axis=1)[clear])
    rng = np.random.default_rng(8)
    queries, qv = _codes(rng, 30, 8), rng.standard_normal((30, 24)).astype(np.float32)
    probes = index.probe(queries, 3, vectors=qv)
    qscores = qv.astype(np.float64) @ centroids.T
    clear = _clear_top(qscores, 3)
    expected = np.argsort(-qscores, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(probes[clear], expected[clear])
    # The search is exact over the lists the probe names.
    items = [np.sort(np.concatenate([index.list_ids(l) for l in p])) for p in probes]
    _assert_result(index.search(queries, 9, nprobe=3, vectors=qv), _among(codes, items, queries, 9))


@pytest.mark.parametrize("nq", [1, 7])
def test_vector_routing_equals_the_float_search_over_the_centroids(simd, nq):
    # A probe keeping a large share of the lists scores every centroid and selects from
    # whole rows (_core.dot_search_packed); a small share runs the fused selection. Both
    # are the float search's top nprobe, bit for bit, ties by the smaller list.
    index, _, _ = _trained(64, nlist=40, n=2000, vectors=True)
    rng = np.random.default_rng(nq)
    qv = rng.standard_normal((nq, 24)).astype(np.float32)
    qv[-1] = index.centroids[3]  # a query on a centroid
    queries = _codes(rng, nq, 8)
    for nprobe in (1, 2, 3, 5, 40):
        expected = cofisearch.dot_knn(np.asarray(index.centroids), qv, nprobe).ids
        np.testing.assert_array_equal(index.probe(queries, nprobe, vectors=qv), expected, nprobe)


def test_fewer_items_than_k_in_the_probed_lists_pad_with_minus_one():
    index, codes, _ = _trained(64, nlist=16, n=200)
    got = index.search(codes[:4], 150, nprobe=1)
    for q in range(4):
        listed = index.list_ids(int(index.probe(codes[q : q + 1], 1)[0, 0]))
        assert (got.ids[q] >= 0).sum() == min(150, listed.size)
        assert (got.distances[q][got.ids[q] < 0] == cofisearch.HAMMING_SENTINEL).all()


def test_a_one_dimensional_query_is_a_batch_of_one():
    index, codes, _ = _trained()
    _assert_result(index.search(codes[5], 3, nprobe=2), index.search(codes[5:6], 3, nprobe=2))


# ---- the index: adds, training ----------------------------------------------------------


def test_many_small_adds_equal_one_large_add():
    rng = np.random.default_rng(11)
    codes = _codes(rng, 3000, 8)
    one = cofisearch.IVFBinaryIndex(64, 12)
    one.train(codes)
    many = cofisearch.IVFBinaryIndex(64, 12)
    many.train(codes)
    one.add(codes)
    # Uneven batches: lists outgrow their room, move to the free tail, and the buffers
    # are copied when the tail runs out.
    bounds = np.unique(np.r_[0, rng.integers(0, 3000, 60), 1, 2, 3000])
    for a, b in zip(bounds[:-1], bounds[1:]):
        many.add(codes[a:b])
    assert many.ntotal == 3000 and many.list_sizes.sum() == 3000
    for l in range(12):
        np.testing.assert_array_equal(many.list_ids(l), one.list_ids(l))
    queries = _codes(rng, 20, 8)
    _assert_result(many.search(queries, 10, nprobe=4), one.search(queries, 10, nprobe=4))
    _assert_result(many.search(queries, 10, nprobe=12), cofisearch.hamming_knn(codes, queries, 10))


def test_training_is_deterministic_for_a_seed_and_any_thread_count():
    rng = np.random.default_rng(12)
    codes = _codes(rng, 4000, 16)
    vecs = rng.standard_normal((4000, 8)).astype(np.float32)
    for v in (None, vecs):
        runs = []
        for seed, threads in ((3, 1), (3, 2), (4, 1)):
            index = cofisearch.IVFBinaryIndex(128, 20, seed=seed, max_points_per_centroid=64)
            index.train(codes, v, num_threads=threads)
            runs.append(np.asarray(index.centroids))
        np.testing.assert_array_equal(runs[0], runs[1])
        assert not np.array_equal(runs[0], runs[2])


def test_k_majority_ends_on_centroids_that_are_their_clusters_majority():
    # Planted clusters (centres with a few flipped bits) converge within the iterations:
    # each centroid is then the bitwise majority of the codes routed to it (where the
    # vote is not tied), and routing the training codes again changes nothing.
    rng = np.random.default_rng(13)
    centres = _codes(rng, 6, 8)
    bits = np.unpackbits(np.repeat(centres, 40, axis=0), axis=1)
    codes = np.packbits(bits ^ (rng.random(bits.shape) < 0.03), axis=1)
    index = cofisearch.IVFBinaryIndex(64, 4, niter=50)
    index.train(codes)
    index.add(codes)
    centroid_bits = np.unpackbits(np.asarray(index.centroids), axis=1)
    for l in range(4):
        members = np.unpackbits(codes[index.list_ids(l)], axis=1).astype(np.int64)
        twice = 2 * members.sum(axis=0)
        decided = twice != len(members)
        majority = (twice > len(members)).astype(np.uint8)
        np.testing.assert_array_equal(centroid_bits[l][decided], majority[decided])


def test_empty_clusters_are_refilled_and_routing_stays_exact():
    # Three distinct codes for eight lists: clusters empty out every iteration.
    rng = np.random.default_rng(14)
    codes = np.repeat(_codes(rng, 3, 8), 100, axis=0)
    index = cofisearch.IVFBinaryIndex(64, 8)
    index.train(codes)
    again = cofisearch.IVFBinaryIndex(64, 8)
    again.train(codes)
    np.testing.assert_array_equal(np.asarray(index.centroids), np.asarray(again.centroids))
    index.add(codes)
    queries = _codes(rng, 5, 8)
    _assert_result(index.search(queries, 20, nprobe=8), cofisearch.hamming_knn(codes, queries, 20))


def test_training_samples_at_most_max_points_per_centroid(monkeypatch):
    seen = []
    real = _core.hamming_search

    def counting(centroids, n, queries, k, threads):
        seen.append(queries.shape[0])
        return real(centroids, n, queries, k, threads)

    monkeypatch.setattr(_core, "hamming_search", counting)
    rng = np.random.default_rng(15)
    index = cofisearch.IVFBinaryIndex(64, 10, max_points_per_centroid=30, niter=3)
    index.train(_codes(rng, 5000, 8), num_threads=1)
    assert seen and max(seen) <= 300


# ---- the index: errors --------------------------------------------------------------------


def _untrained():
    return cofisearch.IVFBinaryIndex(64, 4)


def _codes_index():
    return _trained(64, nlist=4, n=100)[0]


def _vector_index():
    return _trained(64, nlist=4, n=100, vectors=True)[0]


Z8 = np.zeros((3, 8), np.uint8)
V24 = np.ones((3, 24), np.float32)


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda: cofisearch.IVFBinaryIndex(60, 4), ValueError, "nbits must be a multiple of 8"),
        (lambda: cofisearch.IVFBinaryIndex(64, 0), ValueError, "nlist must be"),
        (lambda: cofisearch.IVFBinaryIndex(64, 2.0), TypeError, "nlist must be an integer"),
        (lambda: cofisearch.IVFBinaryIndex(64, 4, nprobe=0), ValueError, "nprobe must be"),
        (lambda: cofisearch.IVFBinaryIndex(64, 4, seed=-1), ValueError, "seed must be"),
        (lambda: cofisearch.IVFBinaryIndex(64, 4, niter=True), TypeError, "niter must be an integer"),
        (lambda: setattr(_untrained(), "nprobe", 0), ValueError, "nprobe must be >= 1"),
        (lambda: _untrained().add(Z8), ValueError, "not trained"),
        (lambda: _untrained().search(Z8, 1), ValueError, "not trained"),
        (lambda: _untrained().probe(Z8), ValueError, "not trained"),
        (lambda: _untrained().train(Z8), ValueError, "at least nlist=4"),
        (lambda: _untrained().train(np.zeros((9, 8), np.int8)), TypeError, "codes must be packed"),
        (lambda: _untrained().train(np.zeros((9, 4), np.uint8)), ValueError, "8 bytes per code"),
        (lambda: _untrained().train(np.zeros((9, 8), np.uint8), np.ones((8, 3))), ValueError,
         "one vector per code"),
        (lambda: _untrained().train(np.zeros((9, 8), np.uint8), np.ones((9, 3), int)), TypeError,
         "vectors must have a floating-point dtype"),
        (lambda: _codes_index().train(np.zeros((9, 8), np.uint8)), ValueError, "train must come before add"),
        (lambda: _codes_index().add(Z8, V24), ValueError, "vectors must not be given"),
        (lambda: _codes_index().search(Z8, 1, vectors=V24), ValueError, "vectors must not be given"),
        (lambda: _vector_index().add(Z8), ValueError, "vectors is required"),
        (lambda: _vector_index().search(Z8, 1), ValueError, "vectors is required"),
        (lambda: _vector_index().search(Z8, 1, vectors=np.ones((3, 5), np.float32)), ValueError,
         "vectors must have 24 columns"),
        (lambda: _vector_index().search(Z8, 1, vectors=V24[:2]), ValueError, "one vector per code"),
        (lambda: _vector_index().add(Z8, V24 * np.nan), ValueError, "finite"),
        (lambda: _codes_index().search(Z8, 0), ValueError, "k must be >= 1"),
        (lambda: _codes_index().search(Z8, 1, nprobe=0), ValueError, "nprobe must be >= 1"),
        (lambda: _codes_index().search(Z8, 1, num_threads=0), ValueError, "num_threads must be"),
        (lambda: _codes_index().search(Z8[:, :4], 1), ValueError, "8 bytes per code"),
        (lambda: _codes_index().list_ids(4), ValueError, "list_no must be in"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


def test_an_empty_trained_index_refuses_to_search():
    index = _untrained()
    index.train(_codes(np.random.default_rng(0), 10, 8))
    with pytest.raises(ValueError, match="empty"):
        index.search(Z8, 1)


def test_properties_and_repr():
    index, _, _ = _trained(64, nlist=6, n=300, vectors=True, nprobe=2)
    assert (index.nbits, index.code_size, index.nlist, index.nprobe) == (64, 8, 6, 2)
    assert (index.ntotal, len(index), index.dim, index.routing, index.is_trained) == (
        300, 300, 24, "vectors", True)
    assert index.list_sizes.sum() == 300 and index.list_sizes.dtype == np.int64
    assert not index.centroids.flags.writeable and not index.list_ids(0).flags.writeable
    assert repr(index) == "IVFBinaryIndex(nbits=64, nlist=6, nprobe=2, routing='vectors', ntotal=300)"
    fresh = cofisearch.IVFBinaryIndex(64, 64)
    assert (fresh.nprobe, fresh.routing, fresh.dim, fresh.centroids, fresh.is_trained) == (
        4, None, None, None, False)


# ---- persistence ----------------------------------------------------------------------------


def _persisted():
    """An index of each routing, with room between its lists (small adds), and untrained."""
    out = []
    for vectors in (False, True):
        index, _, _ = _trained(72, nlist=5, n=400, vectors=vectors, nprobe=2)
        rng = np.random.default_rng(21)
        for _ in range(3):
            extra = _codes(rng, 7, 9)
            index.add(extra, rng.standard_normal((7, 24)) if vectors else None)
        out.append(index)
    out.append(cofisearch.IVFBinaryIndex(72, 5, nprobe=3, seed=9, niter=4))
    return out


def _assert_same_index(a, b):
    assert type(b) is cofisearch.IVFBinaryIndex and repr(a) == repr(b)
    assert (a._seed, a._niter, a._max_points) == (b._seed, b._niter, b._max_points)
    if not a.is_trained:
        assert not b.is_trained
        return
    np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))
    for l in range(a.nlist):
        np.testing.assert_array_equal(a.list_ids(l), b.list_ids(l))
    rng = np.random.default_rng(22)
    queries = _codes(rng, 9, a.code_size)
    qv = rng.standard_normal((9, a.dim)).astype(np.float32) if a.dim else None
    _assert_result(b.search(queries, 8, vectors=qv), a.search(queries, 8, vectors=qv))


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_save_load_round_trip(tmp_path, which, mmap):
    index = _persisted()[which]
    path = tmp_path / "ivf.cofi"
    index.save(path)
    _assert_same_index(index, cofisearch.load_index(path, mmap=mmap))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_pickle_round_trip(which):
    index = _persisted()[which]
    _assert_same_index(index, pickle.loads(pickle.dumps(index)))


def test_a_mapped_index_copies_its_lists_on_add_and_leaves_the_file(tmp_path):
    index = _persisted()[0]
    path = tmp_path / "ivf.cofi"
    index.save(path)
    before = path.read_bytes()
    mapped = cofisearch.load_index(path, mmap=True)
    codes = _codes(np.random.default_rng(23), 30, 9)
    mapped.add(codes)
    index.add(codes)
    assert path.read_bytes() == before
    _assert_same_index(index, mapped)


def test_every_flipped_byte_is_refused(tmp_path):
    index = cofisearch.IVFBinaryIndex(16, 3)
    index.train(_codes(np.random.default_rng(24), 40, 2))
    index.add(_codes(np.random.default_rng(25), 25, 2))
    path = tmp_path / "ivf.cofi"
    index.save(path)
    data = path.read_bytes()
    for offset in range(len(data)):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x04
        path.write_bytes(bytes(corrupt))
        for mmap in (False, True):
            with pytest.raises(ValueError, match="ivf.cofi"):
                cofisearch.load_index(path, mmap=mmap)


def test_truncated_and_padded_files_are_refused(tmp_path):
    path = tmp_path / "ivf.cofi"
    _persisted()[0].save(path)
    data = path.read_bytes()
    for cut in (20, 100, 128, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="ivf.cofi"):
            cofisearch.load_index(path)
    path.write_bytes(data + b"\0" * 64)
    with pytest.raises(ValueError, match="truncated or padded"):
        cofisearch.load_index(path)


def test_a_checksummed_file_with_ids_out_of_list_order_is_refused(tmp_path):
    # A valid checksum does not make the contents valid: the same checks as a pickle. In
    # the layouts before the caller's ids, ids ascend within each list.
    index = _persisted()[0]
    settings, centroids, sizes, ids, codes, *screened = index._parts()
    ids = ids.copy()
    ids[[0, 1]] = ids[[1, 0]]
    path = tmp_path / "ivf.cofi"
    ivf_module._save(str(path), settings._replace(next_id=-1), centroids, sizes, ids, codes, *screened)
    with pytest.raises(ValueError, match="ascend within each list"):
        cofisearch.load_index(path)


def _flip_first(a):
    a = np.array(a)
    a.reshape(-1).view(np.uint8)[0] ^= 1
    return a


@pytest.mark.parametrize(
    "part, change, fragment",
    [
        ("codes", _flip_first, "checksum mismatch"),
        ("centroids", _flip_first, "checksum mismatch"),
        ("settings", lambda s: s[:-2], "settings must be a tuple"),
        ("settings", lambda s: (*s[:2], 2.0, *s[3:]), "settings must be ints"),
        ("settings", lambda s: (s[0], 0, *s[2:]), "nlist 0"),
        ("sizes", lambda a: a.astype(np.int32), "sizes must be a"),
        ("sizes", lambda a: a + 1, "add up to ntotal"),
        ("ids", np.zeros_like, "ids must be unique"),
        ("centroids", np.ma.masked_array, "masked"),
        ("checksum", lambda c: 1.5, "checksum mismatch"),
    ],
)
def test_unpickling_refuses_tampered_parts(part, change, fragment):
    names = ("settings", "centroids", "sizes", "ids", "codes", "checksum")
    parts = dict(zip(names, _persisted()[0].__reduce__()[1]))
    parts[part] = change(parts[part])
    with pytest.raises(ValueError, match=fragment):
        ivf_module._restore(*parts.values())


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ivf.cofi"
    old, new = _persisted()[:2]
    old.save(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        new.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ivf.cofi"]


# ---- threads --------------------------------------------------------------------------------


@pytest.fixture
def frequent_switches():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _in_threads(fn, n):
    results, errors = [None] * n, []

    def work(slot):
        try:
            results[slot] = fn(slot)
        except Exception as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.usefixtures("frequent_switches")
def test_a_search_sees_the_index_before_or_after_an_add_never_between():
    # Probing every list with k above every size the index reaches, a search returns
    # every item it saw: a whole number of batches, ids 0 .. m-1, exact distances.
    rng = np.random.default_rng(31)
    batch, batches = 300, 30
    rows = _codes(rng, batch * batches, 16)
    index = cofisearch.IVFBinaryIndex(128, 7)
    index.train(rows)
    index.add(rows[:batch])
    query = rows[:1]
    done = threading.Event()

    def adder():
        for start in range(batch, rows.shape[0], batch):
            index.add(rows[start : start + batch])
        done.set()

    def searcher(_):
        seen = 0
        while not done.is_set() or seen < batch * batches:
            d, i = index.search(query, batch * batches, nprobe=7, num_threads=1)
            valid = i[0] >= 0
            m = int(valid.sum())
            assert m % batch == 0 and m >= seen
            np.testing.assert_array_equal(np.sort(i[0, valid]), np.arange(m))
            truth = np.unpackbits(rows[i[0, valid]] ^ query, axis=1).sum(axis=1)
            np.testing.assert_array_equal(d[0, valid], truth)
            seen = m
        return seen

    t = threading.Thread(target=adder)
    t.start()
    try:
        assert _in_threads(searcher, 3) == [batch * batches] * 3
    finally:
        t.join()


def test_concurrent_searches_equal_serial_ones():
    index, _, _ = _trained(256, nlist=16, n=20_000)
    rng = np.random.default_rng(32)
    queries = [_codes(rng, 10 * (t + 1), 32) for t in range(4)]
    expected = [index.search(q, 10, nprobe=5, num_threads=1) for q in queries]
    got = _in_threads(lambda t: index.search(queries[t], 10, nprobe=5, num_threads=2), 4)
    for e, g in zip(expected, got):
        _assert_result(g, e)


def test_search_releases_the_gil():
    rng = np.random.default_rng(33)
    codes = _codes(rng, 400_000, 16)
    index = cofisearch.IVFBinaryIndex(128, 4)
    index.train(codes[:1000])
    index.add(codes)
    queries = _codes(rng, 600, 16)
    done, ticks = threading.Event(), []

    def scan():
        index.search(queries, 5, nprobe=4, num_threads=1)
        done.set()

    t = threading.Thread(target=scan)
    t.start()
    while not done.is_set():
        ticks.append(1)
        done.wait(0.001)
    t.join()
    assert len(ticks) > 5


# ---- the cascade ---------------------------------------------------------------------------


def _cascade_data(vectors_routing, n=1500, dim=24, nbits=64, nq=20):
    rng = np.random.default_rng(41)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    projection = rng.standard_normal((dim, nbits))
    codes = cofisearch.pack_bits(vecs @ projection > 0)
    qv = vecs[:nq] + 0.1 * rng.standard_normal((nq, dim)).astype(np.float32)
    qc = cofisearch.pack_bits(qv @ projection > 0)
    coarse = cofisearch.IVFBinaryIndex(nbits, 12, nprobe=3)
    coarse.train(codes, vecs if vectors_routing else None)
    fine = cofisearch.FloatIndex(dim)
    return coarse, fine, codes, vecs, qc, qv


@pytest.mark.parametrize("vectors_routing", [False, True])
def test_cascade_screens_with_the_probe_and_reranks_its_candidates(vectors_routing):
    coarse, fine, codes, vecs, qc, qv = _cascade_data(vectors_routing)
    cascade = Cascade(coarse, fine, n_candidates=40)
    cascade.add(codes, vecs)  # routes the items by their vectors when trained on them
    assert coarse.ntotal == fine.ntotal == len(codes)
    result = cascade.search(qc, qv, 5)
    screen = coarse.search(qc, 40, vectors=qv if vectors_routing else None)
    np.testing.assert_array_equal(result.candidates, screen.ids)
    rerank = fine.search(qv, 5, candidates=screen.ids)
    _assert_result(result, rerank)
    assert result.timings["coarse"] > 0 and result.timings["total"] >= result.timings["coarse"]
    # Probing every list with every item as a candidate is exhaustive float search.
    coarse.nprobe = coarse.nlist
    full = Cascade(coarse, fine, n_candidates=len(codes)).search(qc, qv, 10)
    _assert_result(full, fine.search(qv, 10))


def test_cascade_refuses_a_routing_of_another_dimension_or_an_untrained_coarse_stage():
    coarse, fine, codes, vecs, _, _ = _cascade_data(True)
    with pytest.raises(ValueError, match="dim 24, but fine holds vectors of dim 7"):
        Cascade(coarse, cofisearch.FloatIndex(7))
    untrained = Cascade(cofisearch.IVFBinaryIndex(64, 4), fine)
    with pytest.raises(ValueError, match="untrained"):
        untrained.add(codes, vecs)
    assert fine.ntotal == 0
    with pytest.raises(TypeError, match="BinaryIndex or an IVFBinaryIndex"):
        Cascade(fine, fine)


def test_a_cascade_with_an_ivf_screen_pickles():
    coarse, fine, codes, vecs, qc, qv = _cascade_data(True)
    cascade = Cascade(coarse, fine, n_candidates=30)
    cascade.add(codes, vecs)
    copy = pickle.loads(pickle.dumps(cascade))
    assert isinstance(copy.coarse, cofisearch.IVFBinaryIndex)
    _assert_result(copy.search(qc, qv, 5), cascade.search(qc, qv, 5))


def test_the_reference_module_and_the_driver_agree_on_padding():
    assert _reference.HAMMING_SENTINEL == BIG == cofisearch.HAMMING_SENTINEL

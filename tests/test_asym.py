"""The asymmetric screen: its kernels against the NumPy reference at every SIMD level, and
IVFBinaryIndex(screen="asymmetric") as an index (search, errors, persistence, cascade)."""

import pickle

import numpy as np
import pytest

import cofisearch
from cofisearch import _core
from cofisearch import ivf as ivf_module
from cofisearch._reference import asymmetric_estimates, quantize_queries, topk

def _kernel_case(rng, n, nbytes, nq, qbits, nlist):
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    factors = rng.random(n).astype(np.float32)
    # Deliberate ties: equal rows give equal estimates, which go to the smaller id.
    if n > 6:
        codes[n - 1], factors[n - 1] = codes[1], factors[1]
        codes[5], factors[5] = codes[3], factors[3]
    planes, consts = quantize_queries(rng.standard_normal((nq, nbytes * 8)).astype(np.float32), qbits)
    cuts = np.sort(rng.choice(np.arange(1, n), nlist - 1, replace=False)) if nlist > 1 else []
    start = np.r_[0, cuts].astype(np.int64)
    size = np.diff(np.r_[start, n]).astype(np.int64)
    return codes, factors, planes, consts, start, size


def _reference_search(codes, factors, ids, start, size, planes, consts, probes, bias, k):
    """Top-k by the reference estimate over the rows of each query's probed lists (a list
    named twice counts once, with its first bias)."""
    out_d, out_i = [], []
    for q in range(planes.shape[0]):
        est, got = [], []
        seen = set()
        for j, lst in enumerate(probes[q].tolist()):
            if lst < 0 or lst in seen:
                continue
            seen.add(lst)
            rows = np.arange(start[lst], start[lst] + size[lst])
            est.append(asymmetric_estimates(planes[q : q + 1], consts[q : q + 1], bias[q, j : j + 1],
                                            codes[rows], factors[rows])[0])
            got.append(ids[rows])
        est = np.concatenate(est) if est else np.empty(0, np.float32)
        got = np.concatenate(got) if got else np.empty(0, np.int64)
        order = np.lexsort((got, -est))[:k]
        d = np.full(k, -np.inf, np.float32)
        i = np.full(k, -1, np.int64)
        d[: order.size], i[: order.size] = est[order], got[order]
        out_d.append(d)
        out_i.append(i)
    return np.array(out_d), np.array(out_i)


@pytest.mark.parametrize("nbytes", [1, 8, 9, 32, 64, 65, 96, 128, 136])
@pytest.mark.parametrize("qbits", [1, 4, 8])
def test_one_list_equals_the_reference_ranking(simd, nbytes, qbits):
    rng = np.random.default_rng(nbytes * 10 + qbits)
    n, nq = 203, 21
    codes, factors, planes, consts, _, _ = _kernel_case(rng, n, nbytes, nq, qbits, 1)
    bias = rng.standard_normal((nq, 1)).astype(np.float32)
    ref = asymmetric_estimates(planes, consts, bias[:, 0], codes, factors)
    for k in (1, 10, n, n + 5):
        d, i = _core.ivf_asym_search(codes, factors, np.arange(n, dtype=np.int64), np.array([0]),
                                     np.array([n]), planes, qbits, consts,
                                     np.zeros((nq, 1), np.int64), bias, k, 2)
        rd, ri = topk(ref, k, largest=True)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(d, rd)


@pytest.mark.parametrize("nq, threads", [(1, 1), (3, 2), (40, 1), (40, 2)])
def test_probed_lists_equal_the_reference(simd, nq, threads):
    rng = np.random.default_rng(nq + threads)
    n, nbytes, nlist, qbits = 1500, 16, 12, 4
    codes, factors, planes, consts, start, size = _kernel_case(rng, n, nbytes, nq, qbits, nlist)
    ids = rng.permutation(n).astype(np.int64)
    probes = rng.integers(-1, nlist, (nq, 5)).astype(np.int64)
    probes[0, 1] = probes[0, 0]  # a list named twice is scanned once
    bias = rng.standard_normal(probes.shape).astype(np.float32)
    for k in (7, 300):
        d, i = _core.ivf_asym_search(codes, factors, ids, start, size, planes, qbits, consts, probes,
                                     bias, k, threads)
        rd, ri = _reference_search(codes, factors, ids, start, size, planes, consts, probes, bias, k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(d, rd)


def test_quantized_queries_reconstruct_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 64)).astype(np.float32)
    w[3] = 0.5  # a constant row: step 1, every value on the lowest level
    planes, consts = quantize_queries(w, 4)
    assert planes.shape == (9, 4 * 8) and planes.dtype == np.uint8 and consts.dtype == np.float32
    bits = np.unpackbits(planes.reshape(9, 4, 8), axis=2)
    u = (bits << np.arange(4, dtype=np.uint8)[None, :, None]).sum(axis=1)
    delta, lo = consts[:, 0] / 2, consts[:, 1] / 2
    assert np.all(np.abs(u * delta[:, None] + lo[:, None] - w) <= delta[:, None] / 2 + 1e-6)
    # The shift is minus the quantised query's sum: within half a step a dimension of w's.
    np.testing.assert_allclose(consts[:, 2], -(u * delta[:, None] + lo[:, None]).sum(axis=1), rtol=1e-5)
    assert np.all(np.abs(consts[:, 2] + w.sum(axis=1)) <= 64 * delta / 2 + 1e-4)
    assert u[3].max() == 0 and delta[3] == 1


# Codes of whole words and their planes, which a stored panel needs.
_WORDS = {"codes": np.zeros((3, 8), np.uint8), "planes": np.zeros((2, 32), np.uint8)}


@pytest.mark.parametrize(
    "args, error, fragment",
    [
        ({"qbits": 0}, ValueError, "qbits must be in"),
        ({"qbits": 9}, ValueError, "qbits must be in"),
        ({"planes": np.zeros((2, 3), np.uint8)}, ValueError, "planes must have"),
        ({"consts": np.zeros((2, 2), np.float32)}, ValueError, "consts must be"),
        ({"factors": np.zeros(3, np.float64)}, TypeError, "factors must have dtype float32"),
        ({"probes": np.full((2, 1), 5, np.int64)}, ValueError, "probes must hold list numbers"),
        ({"bias": np.zeros((2, 2), np.float32)}, ValueError, "bias must have the shape"),
        ({"list_size": np.array([4])}, ValueError, "must lie inside"),
        # A stored panel (cpp/ivf.h, AsymPanel), given with codes of whole words.
        ({**_WORDS, "panel": np.zeros(8, np.uint64)}, ValueError, "given together"),
        ({**_WORDS, "panel_start": np.zeros(1, np.int64)}, ValueError, "given together"),
        ({**_WORDS, "panel": np.zeros(8, np.int64), "panel_start": np.zeros(1, np.int64)},
         TypeError, "panel must have dtype uint64"),
        ({**_WORDS, "panel": np.zeros(8, np.uint64), "panel_start": np.zeros(2, np.int64)},
         ValueError, "one entry per list"),
        ({**_WORDS, "panel": np.zeros(8, np.uint64), "panel_start": np.ones(1, np.int64)},
         ValueError, "outside the panel"),
        ({**_WORDS, "panel": np.zeros(8, np.uint64), "panel_start": np.full(1, -1, np.int64)},
         ValueError, "outside the panel"),
    ],
)
def test_the_binding_refuses_bad_arguments(args, error, fragment):
    good = {"codes": np.zeros((3, 1), np.uint8), "factors": np.zeros(3, np.float32),
            "ids": np.arange(3, dtype=np.int64), "list_start": np.array([0]), "list_size": np.array([3]),
            "planes": np.zeros((2, 4), np.uint8), "qbits": 4, "consts": np.zeros((2, 3), np.float32),
            "probes": np.zeros((2, 1), np.int64), "bias": np.zeros((2, 1), np.float32), "k": 2,
            "num_threads": 1}
    with pytest.raises(error, match=fragment):
        _core.ivf_asym_search(**{**good, **args})


def _query_args(nlist=2, dim=4, nbytes=1):
    centroids = np.eye(nlist, dim, dtype=np.float32)
    rotation = np.eye(dim, nbytes * 8, dtype=np.float32)
    return {"codes": np.zeros((3, nbytes), np.uint8), "factors": np.zeros(3, np.float32),
            "ids": np.arange(3, dtype=np.int64), "list_start": np.array([0, 2]),
            "list_size": np.array([2, 1]), "centroids": centroids,
            "centroid_panel": _core.dot_pack(centroids), "row_norm": 1.0,
            "scale": np.ones(nlist, np.float32), "rotation_panel": _core.dot_pack(rotation.T.copy()),
            "vectors": np.ones((2, dim), np.float32), "qbits": 4, "nprobe": 1, "k": 2,
            "num_threads": 1}


@pytest.mark.parametrize(
    "args, error, fragment",
    [
        ({"vectors": np.ones((2, 5), np.float32)}, ValueError, "vectors must have 4 columns"),
        ({"vectors": np.ones((2, 4), np.float64)}, TypeError, "vectors must have dtype float32"),
        ({"centroids": np.eye(3, 4, dtype=np.float32)}, ValueError, "one entry per list"),
        ({"scale": np.ones(3, np.float32)}, ValueError, "one entry per list"),
        ({"centroid_panel": _core.dot_pack(np.ones((40, 4), np.float32))}, ValueError,
         "n must be the rows packed in centroid_panel"),
        ({"rotation_panel": _core.dot_pack(np.ones((8, 5), np.float32))}, ValueError,
         "rotation_panel must have 32 \\* dim = 128 columns"),
        ({"nprobe": 3}, ValueError, "nprobe must be in \\[1, 2\\]"),
        ({"nprobe": 0}, ValueError, "nprobe must be in"),
        ({"row_norm": -1.0}, ValueError, "row_norm must be a non-negative bound"),
        ({"qbits": 9}, ValueError, "qbits must be in"),
        # A query so large that its rotation overflows float32.
        ({"vectors": np.full((2, 4), 3e38, np.float32),
          "rotation_panel": _core.dot_pack(np.ones((8, 4), np.float32))}, ValueError,
         "small enough to rotate"),
    ],
)
def test_the_whole_query_binding_refuses_bad_arguments(args, error, fragment):
    with pytest.raises(error, match=fragment):
        _core.ivf_asym_query(**{**_query_args(), **args})


def test_the_whole_query_equals_its_steps():
    # Route, rotate, quantise and weigh, done apart with the engine's own steps, then the scan.
    v, codes, q, qc = _data()
    index = _index(v, codes, nprobe=3)
    routing, lists = index._state
    scores, probes = _core.dot_route(routing.centroids, routing.panel, routing.norm_bound, q, 3, 1)
    rotated = _core.dot_scores_packed(routing.rotation_panel, routing.rotation.shape[1], q, 1)
    planes, consts = _core.quantize_queries(rotated, ivf_module._QUERY_BITS)
    want = _core.ivf_asym_search(lists.acodes, lists.factors, lists.ids, lists.start, lists.size,
                                 planes, ivf_module._QUERY_BITS, consts, probes,
                                 routing.scale[probes] * scores, 20, 1)
    for threads in (1, 2):
        _same(index.search(qc, 20, vectors=q, num_threads=threads), want)


def test_a_batch_searched_in_passes_equals_its_parts():
    # The engine holds a pass of queries' rotations at a time (cpp/ivf.h, kQueryPassBytes:
    # 16 MiB, here ~1,800 queries of a 2,048-bit screen); 2,000 queries take two passes.
    rng = np.random.default_rng(11)
    v = rng.standard_normal((600, 16)).astype(np.float32)
    codes = np.packbits(v @ rng.standard_normal((16, 32)) > 0, axis=1)
    index = cofisearch.IVFBinaryIndex(32, 8, nprobe=3, screen="asymmetric", screen_bits=2048)
    index.train(codes, v)
    index.add(codes, v)
    q = rng.standard_normal((2000, 16)).astype(np.float32)
    qc = np.packbits(q @ rng.standard_normal((16, 32)) > 0, axis=1)
    whole = index.search(qc, 7, vectors=q)
    for part in (slice(0, 999), slice(999, 1801), slice(1801, 2000)):
        got = index.search(qc[part], 7, vectors=q[part])
        np.testing.assert_array_equal(got.ids, whole.ids[part])
        np.testing.assert_array_equal(got.distances, whole.distances[part])


# ---- the index --------------------------------------------------------------------------


def _same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _data(seed=0, n=2000, dim=24, nbits=32):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    v = (centres[rng.integers(0, 8, n)] + 0.6 * rng.standard_normal((n, dim))).astype(np.float32)
    codes = np.packbits(v @ rng.standard_normal((dim, nbits)) > 0, axis=1)
    q = (v[rng.integers(0, n, 30)] + 0.3 * rng.standard_normal((30, dim))).astype(np.float32)
    qc = np.packbits(q @ rng.standard_normal((dim, nbits)) > 0, axis=1)
    return v, codes, q, qc


def _index(v, codes, nlist=8, **kw):
    index = cofisearch.IVFBinaryIndex(codes.shape[1] * 8, nlist, screen="asymmetric", **kw)
    index.train(codes, v)
    index.add(codes[:700], v[:700])
    index.add(codes[700:], v[700:])
    return index


def _rotated(routing, q):
    """Queries rotated as the screen rotates them: the float search's inner products of each
    query with the rotation's columns, in column order (the same bits in any batch)."""
    columns = np.ascontiguousarray(routing.rotation.T)
    scores, ids = cofisearch.dot_knn(columns, q, columns.shape[0])
    out = np.empty_like(scores)
    np.put_along_axis(out, ids, scores, axis=1)
    return out


def test_search_ranks_the_probed_items_by_the_reference_estimate():
    v, codes, q, qc = _data()
    index = _index(v, codes, nprobe=3)
    routing, lists = index._state
    probes = index.probe(qc, vectors=q)
    scores, _ = _core.dot_search(routing.centroids, routing.centroids.shape[0], q, 3, 1)
    planes, consts = quantize_queries(_rotated(routing, q), ivf_module._QUERY_BITS)
    bias = routing.scale[probes] * scores
    ref = _reference_search(lists.acodes, lists.factors, lists.ids, lists.start, lists.size,
                            planes, consts, probes, bias, 20)
    got = index.search(qc, 20, vectors=q)
    assert got.distances.dtype == np.float32
    np.testing.assert_array_equal(got.ids, ref[1])
    np.testing.assert_array_equal(got.distances, ref[0])


def test_estimates_track_the_true_inner_products():
    v, codes, q, qc = _data()
    index = _index(v, codes, nlist=1)
    est, ids = index.search(qc, v.shape[0], vectors=q)
    true = np.einsum("qd,qkd->qk", q, v[ids])
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.95


def test_the_hamming_screen_stays_available_and_unchanged():
    v, codes, q, qc = _data()
    asym = _index(v, codes, nprobe=3)
    plain = cofisearch.IVFBinaryIndex(32, 8, nprobe=3)
    plain.train(codes, v)
    plain.add(codes, v)
    _same(asym.search(qc, 10, vectors=q, screen="hamming"), plain.search(qc, 10, vectors=q))


def test_default_screen_bits_are_twice_the_dimension_rounded_to_64():
    v, codes, _, _ = _data(dim=24)
    assert _index(v, codes).screen_bits == 64
    assert _index(v, codes, screen_bits=128).screen_bits == 128
    assert cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric").screen_bits is None
    assert cofisearch.IVFBinaryIndex(32, 8).screen_bits is None


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: cofisearch.IVFBinaryIndex(32, 8, screen="float"), ValueError, "screen must be one of"),
        (lambda: cofisearch.IVFBinaryIndex(32, 8, screen_bits=64), ValueError, "only applies"),
        (lambda: cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric", screen_bits=100), ValueError,
         "multiple of 64"),
        (lambda: cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric", screen_bits=1.0), TypeError,
         "screen_bits"),
    ],
)
def test_bad_screen_settings_are_refused(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_misuse_is_refused():
    v, codes, q, qc = _data(dim=80)
    index = cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric")
    with pytest.raises(ValueError, match="vectors are required"):
        index.train(codes)
    with pytest.raises(ValueError, match="at least the vectors' dimension"):
        cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric", screen_bits=64).train(codes, v)
    index.train(codes, v)
    index.add(codes, v)
    with pytest.raises(ValueError, match="vectors is required"):
        index.search(qc, 5)
    plain = cofisearch.IVFBinaryIndex(32, 8)
    plain.train(codes, v)
    plain.add(codes, v)
    with pytest.raises(ValueError, match="needs an index built with it"):
        plain.search(qc, 5, vectors=q, screen="asymmetric")


@pytest.mark.parametrize("mmap", [False, True])
def test_save_and_load_keep_the_screen(tmp_path, mmap):
    v, codes, q, qc = _data()
    index = _index(v, codes, nprobe=3)
    path = tmp_path / "asym.cofi"
    index.save(path)
    assert int.from_bytes(path.read_bytes()[36:40], "little") == 3  # layout 3: ids
    loaded = cofisearch.load_index(path, mmap=mmap)
    assert loaded.screen == "asymmetric" and loaded.screen_bits == index.screen_bits
    _same(loaded.search(qc, 10, vectors=q), index.search(qc, 10, vectors=q))
    # An add (copying the mapped lists first) codes the new items as the original does.
    loaded.add(codes[:50], v[:50])
    index.add(codes[:50], v[:50])
    _same(loaded.search(qc, 10, vectors=q), index.search(qc, 10, vectors=q))


def test_files_of_layouts_1_and_2_still_load(tmp_path):
    v, codes, q, qc = _data()
    for index, layout in ((cofisearch.IVFBinaryIndex(32, 8), 1), (_index(v, codes), 2)):
        if layout == 1:
            index.train(codes, v)
            index.add(codes, v)
        settings, *arrays = index._parts()
        path = tmp_path / f"layout{layout}.cofi"
        ivf_module._save(str(path), settings._replace(next_id=-1), *arrays)
        assert int.from_bytes(path.read_bytes()[36:40], "little") == layout
        _same(cofisearch.load_index(path).search(qc, 10, vectors=q), index.search(qc, 10, vectors=q))


def test_pickles_keep_the_screen_and_old_pickles_load():
    v, codes, q, qc = _data()
    index = _index(v, codes, nprobe=3)
    copy = pickle.loads(pickle.dumps(index))
    _same(copy.search(qc, 10, vectors=q), index.search(qc, 10, vectors=q))
    untrained = pickle.loads(pickle.dumps(cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric")))
    assert untrained.screen == "asymmetric"
    # A Hamming index pickled before the screen existed: nine settings, no screen parts.
    plain = cofisearch.IVFBinaryIndex(32, 8, nprobe=3)
    plain.train(codes, v)
    plain.add(codes, v)
    settings, *rest = plain.__reduce__()[1]
    arrays = [*rest[:4], None, None, None, None]
    legacy = ivf_module._checksum(ivf_module._Settings(*settings[:9]), arrays)
    old = ivf_module._restore(settings[:9], *rest[:4], legacy)
    _same(old.search(qc, 10, vectors=q), plain.search(qc, 10, vectors=q))


@pytest.mark.parametrize(
    "position, change, fragment",
    [
        (-1, lambda a: a + 1, "checksum mismatch"),
        (-1, lambda a: -a, "factors must be >= 0"),
        (-3, lambda a: np.full_like(a, np.nan), "must be finite"),
        (-4, lambda a: a[:, :-1], "rotation must be a"),
    ],
)
def test_unpickling_refuses_tampered_screen_parts(position, change, fragment):
    v, codes, _, _ = _data()
    args = list(_index(v, codes).__reduce__()[1])
    args[position] = change(args[position])
    with pytest.raises(ValueError, match=fragment):
        ivf_module._restore(*args)


def test_the_cascade_screens_with_the_estimates_and_reranks_exactly():
    v, codes, q, qc = _data()
    index = _index(v, codes, nprobe=8)
    fine = cofisearch.FloatIndex(v.shape[1])
    fine.add(v)
    result = cofisearch.Cascade(index, fine, n_candidates=100).search(qc, q, 10)
    np.testing.assert_array_equal(result.candidates, index.search(qc, 100, vectors=q).ids)
    expected = fine.search(q, 10, candidates=result.candidates)
    assert np.array_equal(result.ids, expected.ids)
    truth = fine.search(q, 10).ids
    assert np.mean([np.isin(t, r).mean() for t, r in zip(truth, result.ids)]) > 0.95
    cascade = cofisearch.Cascade(cofisearch.IVFBinaryIndex(32, 8, screen="asymmetric"),
                                 cofisearch.FloatIndex(v.shape[1]))
    cascade.coarse.train(codes, v)
    cascade.add(codes, v)
    _same(cascade.search(qc, q, 10), cascade.search(qc, q, 10))

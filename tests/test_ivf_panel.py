"""The asymmetric screen's fast paths: the stored panel (cpp/ivf.h, AsymPanel) and the
probe order of the IVF driver (a search that reads the lists' codes from their stored
panel answers exactly what one that packs every block answers, at every SIMD level, for
one query and for batches; the index keeps its panel in step with adds and removals),
and the query quantisation, bit for bit the reference's."""

import threading

import numpy as np
import pytest

import cofisearch
from cofisearch import _core
from cofisearch._bits import code_panel
from cofisearch._reference import quantize_queries

def _case(rng, nbytes, nq, nlist, qbits=4):
    # Lists of sizes off the group of 8 (and an empty one), laid out with room between
    # them as adds leave it.
    size = rng.integers(0, 90, nlist).astype(np.int64)
    size[1] = 0
    size[2] = 8
    start = np.cumsum(size + 5) - size - 5
    n = int(start[-1] + size[-1] + 3)
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    factors = rng.random(n).astype(np.float32)
    codes[7], factors[7] = codes[3], factors[3]  # a tie, to the smaller id
    ids = rng.permutation(n).astype(np.int64)
    planes = rng.integers(0, 256, (nq, qbits * nbytes), dtype=np.uint8)
    consts = rng.standard_normal((nq, 3)).astype(np.float32)
    return codes, factors, ids, start, size, planes, consts


def _panel(codes, start, size):
    rows = np.concatenate([np.arange(s, s + n) for s, n in zip(start, size)])
    return code_panel(codes[rows], size)


@pytest.mark.parametrize("nbytes", [8, 16, 64, 72, 96, 136])
@pytest.mark.parametrize("nq, threads", [(1, 1), (1, 2), (3, 2), (40, 1), (40, 2)])
def test_the_stored_panel_answers_what_packing_answers(simd, nbytes, nq, threads):
    rng = np.random.default_rng(nbytes * 100 + nq * 10 + threads)
    nlist, qbits = 11, 4
    codes, factors, ids, start, size, planes, consts = _case(rng, nbytes, nq, nlist, qbits)
    probes = rng.integers(-1, nlist, (nq, 6)).astype(np.int64)
    probes[0, 4] = probes[0, 0]  # named twice: scanned once, its first bias counts
    bias = rng.standard_normal(probes.shape).astype(np.float32)
    panel, panel_start = _panel(codes, start, size)
    for k in (1, 10, 500):
        args = (codes, factors, ids, start, size, planes, qbits, consts, probes, bias, k, threads)
        want = _core.ivf_asym_search(*args)
        got = _core.ivf_asym_search(*args, panel=panel, panel_start=panel_start)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def _items(rng, n, dim, nbits):
    """(vectors, codes) of n items: Gaussian vectors and the signs of a random projection."""
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v, np.packbits(v @ rng.standard_normal((dim, nbits)) > 0, axis=1)


def _trained(codes, v, nlist, *, nprobe):
    """An asymmetric index over these codes, trained on them and v, still empty."""
    index = cofisearch.IVFBinaryIndex(codes.shape[1] * 8, nlist, nprobe=nprobe, screen="asymmetric")
    index.train(codes, v)
    return index


@pytest.mark.parametrize("threads", [1, 2])
def test_one_query_at_a_time_equals_the_batch(threads):
    # One query takes the few-queries path (lists dealt to threads nearest first), a batch
    # the list-major one (the nearest lists of each query first): both exact.
    rng = np.random.default_rng(5)
    v, codes = _items(rng, 3000, 32, 64)
    q = (v[:50] + 0.3 * rng.standard_normal((50, 32))).astype(np.float32)
    index = _trained(codes, v, 16, nprobe=5)
    index.add(codes, v)
    for screen in ("asymmetric", "hamming"):
        batch = index.search(codes[:50], 40, vectors=q, num_threads=threads, screen=screen)
        for i in range(0, 50, 7):
            one = index.search(codes[i], 40, vectors=q[i], num_threads=threads, screen=screen)
            np.testing.assert_array_equal(one.ids[0], batch.ids[i])
            np.testing.assert_array_equal(one.distances[0], batch.distances[i])


def test_the_panel_follows_adds_and_removals():
    rng = np.random.default_rng(6)
    n = 2000
    v, codes = _items(rng, n, 24, 32)
    q = rng.standard_normal((9, 24)).astype(np.float32)
    index = _trained(codes, v, 8, nprobe=8)
    index.add(codes[:1000], v[:1000])
    index.search(codes[:9], 20, vectors=q)  # builds the panel of this snapshot
    index.add(codes[1000:], v[1000:])
    index.remove(np.arange(0, n, 3))
    fresh = _trained(codes, v, 8, nprobe=8)
    fresh.add(codes, v)
    fresh.remove(np.arange(0, n, 3))
    for got, want in ((index.search(codes[:9], 20, vectors=q), fresh.search(codes[:9], 20, vectors=q)),
                      (index.search(codes[0], 20, vectors=q[0]), fresh.search(codes[0], 20, vectors=q[0]))):
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.distances, want.distances)


def test_concurrent_searches_build_the_panel_and_see_each_snapshot_whole():
    # The stored panel is built by whichever search first meets a snapshot, with no lock:
    # searches racing each other and an add must each get the answer of the index before
    # or after the add, as the class promises.
    rng = np.random.default_rng(7)
    v, codes = _items(rng, 4000, 24, 64)
    q = rng.standard_normal((5, 24)).astype(np.float32)
    index = _trained(codes, v, 8, nprobe=4)
    index.add(codes[:2000], v[:2000])
    before = index.search(codes[:5], 15, vectors=q, num_threads=1)
    twin = _trained(codes, v, 8, nprobe=4)
    twin.add(codes, v)
    after = twin.search(codes[:5], 15, vectors=q, num_threads=1)
    assert not np.array_equal(before.ids, after.ids)
    index._panel = None  # the searches below race to build it
    results, errors = [], []
    start = threading.Barrier(5)

    def search():
        try:
            start.wait()
            for _ in range(20):
                results.append(index.search(codes[:5], 15, vectors=q, num_threads=2))
        except Exception as exc:  # reported after join
            errors.append(exc)

    def add():
        start.wait()
        index.add(codes[2000:], v[2000:])

    threads = [threading.Thread(target=search) for _ in range(4)] + [threading.Thread(target=add)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        want = before if np.array_equal(got.ids, before.ids) else after
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.distances, want.distances)
    final = index.search(codes[:5], 15, vectors=q, num_threads=1)
    np.testing.assert_array_equal(final.ids, after.ids)


@pytest.mark.parametrize("qbits", [1, 4, 8])
@pytest.mark.parametrize("shape", [(1, 512), (7, 64), (3, 8), (2, 8192)])
def test_quantize_is_the_reference_bit_for_bit(shape, qbits):
    rng = np.random.default_rng(shape[1] + qbits)
    w = (rng.standard_normal(shape) * rng.random((shape[0], 1)) * 10).astype(np.float32)
    w[0, :3] = w[0].max()  # ties at the top level
    if shape[0] > 1:
        w[1] = 0.25  # a constant row: step 1
    if shape[0] > 2:
        # Values halfway between two levels, which round to the even one, and a row far
        # from the origin, whose sum of levels and lo * nbits need their own roundings.
        w[2] = np.float32(-1) + np.arange(shape[1], dtype=np.float32) % 5 * np.float32(0.5)
        w[2, 0], w[2, 1] = -1, np.float32(-1) + np.float32(2**qbits - 1)
    w[-1] += np.float32(1e4)
    planes, consts = _core.quantize_queries(w, qbits)
    ref_planes, ref_consts = quantize_queries(w, qbits)
    np.testing.assert_array_equal(planes, ref_planes)
    np.testing.assert_array_equal(consts, ref_consts)
    assert planes.dtype == np.uint8 and consts.dtype == np.float32 and planes.flags.c_contiguous


def test_quantize_refuses_what_it_cannot_quantise():
    good = np.zeros((2, 64), np.float32)
    with pytest.raises(TypeError, match="rotated must have dtype float32"):
        _core.quantize_queries(good.astype(np.float64), 4)
    with pytest.raises(ValueError, match="multiple of 8 columns"):
        _core.quantize_queries(np.zeros((2, 12), np.float32), 4)
    with pytest.raises(ValueError, match="qbits must be in"):
        _core.quantize_queries(good, 9)
    bad = good.copy()
    bad[1, 5] = np.inf
    with pytest.raises(ValueError, match="finite"):
        _core.quantize_queries(bad, 4)

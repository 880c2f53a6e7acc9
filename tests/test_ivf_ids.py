"""The caller's ids, removals and the `allowed` filter of IVFBinaryIndex and Cascade.

Probing every list, a Hamming search must equal a NumPy model of the present, allowed
items (ties by the smaller id) on both filter paths (bitmap on the hit path, or the
allowed items alone), every SIMD level and thread count. The asymmetric screen has no
exact reference: it is checked against an index of the same training that holds only
the items that should be found, whose estimates are the same numbers.
"""

import pickle
import zlib

import cofisearch
import numpy as np
import pytest
from cofisearch import BinaryIndex, Cascade, FloatIndex, IVFBinaryIndex
from cofisearch import ivf as ivf_module
from cofisearch.ivf import _lists as lists_module
from test_ids import Model


@pytest.fixture(params=["bitmap", "pack", "gather"])
def filter_path(request, monkeypatch):
    """Forces a filtered search onto the bitmap probe, the probe of lists of the allowed
    items alone, or those lists probed everywhere."""
    if request.param in ("bitmap", "pack"):
        monkeypatch.setattr(lists_module, "GATHER_ROWS", -1)
        monkeypatch.setattr(lists_module, "_GATHER_FRACTION", 1 << 62)
        monkeypatch.setattr(lists_module, "PACK_QUERIES", 1 << 62 if request.param == "bitmap" else 0)
    else:
        monkeypatch.setattr(lists_module, "GATHER_ROWS", 1 << 62)
    return request.param


def _codes(rng, n, nbits=64):
    # Few distinct bits: many ties, which must go to the smaller id.
    return rng.integers(0, 4, (n, nbits // 8), dtype=np.uint8)


def _trained(rng, nbits=64, nlist=8):
    index = IVFBinaryIndex(nbits, nlist, nprobe=nlist)
    index.train(rng.integers(0, 256, (400, nbits // 8), dtype=np.uint8))
    return index


def _check(index, model, queries, k, allowed=None, threads=1):
    got = index.search(queries, k, allowed=allowed, num_threads=threads)
    want = model.search(queries, k, allowed)
    np.testing.assert_array_equal(got.ids, want[1])
    np.testing.assert_array_equal(got.distances, want[0])


@pytest.mark.parametrize("nbits", [64, 136])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_adds_removes_and_filters_match_numpy(simd, filter_path, nbits, threads):
    rng = np.random.default_rng(zlib.crc32(repr((nbits, threads, simd, filter_path)).encode()))
    index, model = _trained(rng, nbits), Model("binary", nbits)
    for step in range(12):
        n = int(rng.integers(1, 300))
        codes = _codes(rng, n, nbits)
        if rng.integers(0, 2):
            ids = None
        else:
            pool = np.setdiff1d(rng.integers(0, 3 * (model.next_id + n), 3 * n), list(model.rows))
            ids = rng.permutation(pool)[:n]
            codes = codes[: ids.size]
        index.add(codes, ids=ids)
        model.add(codes, ids)
        if step % 3 == 1:
            present = np.array(sorted(model.rows))
            gone = rng.choice(present, int(rng.integers(0, len(present) // 3 + 1)), replace=False)
            gone = np.concatenate([gone, [10**12, model.next_id + 5]])
            assert index.remove(gone) == model.remove(gone)
        if step % 5 == 4:
            index.compact()
        assert index.ntotal == len(model.rows) == int(index.list_sizes.sum())
        queries = _codes(rng, int(rng.integers(1, 40)), nbits)
        k = int(rng.integers(1, 30))
        _check(index, model, queries, k, threads=threads)
        everything = np.array(sorted(model.rows) + [10**12])
        for keep in (0.5, 0.1, 0.01):
            allowed = rng.choice(everything, max(1, int(keep * everything.size)), replace=False)
            _check(index, model, queries, k, allowed, threads)
    assert sorted(index.ids.tolist()) == sorted(model.rows)
    # Probing every list, the IVF answers as BinaryIndex does over the same ids.
    flat = BinaryIndex(nbits)
    flat.add(np.stack([model.rows[i] for i in sorted(model.rows)]), ids=sorted(model.rows))
    queries = _codes(rng, 30, nbits)
    np.testing.assert_array_equal(index.search(queries, 9).ids, flat.search(queries, 9).ids)


def test_a_selective_filter_is_ranked_over_every_list_and_a_wide_one_over_the_probed(monkeypatch):
    monkeypatch.setattr(lists_module, "GATHER_ROWS", 100)
    rng = np.random.default_rng(3)
    index = IVFBinaryIndex(64, 16, nprobe=1)
    codes = rng.integers(0, 256, (4000, 8), dtype=np.uint8)
    index.train(codes)
    index.add(codes)
    model = Model("binary", 64)
    model.add(codes, None)
    queries = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    few = rng.choice(4000, 50, replace=False)
    # A few items: all of them ranked, whatever nprobe, so k results come back.
    _check(index, model, queries, 10, few)
    empty = index.search(queries, 5, allowed=[10**12])
    assert (empty.ids == -1).all() and (empty.distances == cofisearch.HAMMING_SENTINEL).all()
    # Most items: the probed list only, filtered on the hit path.
    most = np.arange(0, 4000, 2)
    got = index.search(queries, 10, allowed=most)
    probed = index.probe(queries, 1)[:, 0]
    for q in range(20):
        found = got.ids[q][got.ids[q] >= 0]
        assert np.isin(found, most).all()
        assert np.isin(found, index.list_ids(int(probed[q]))).all()


def _asym_pair(rng, keep):
    """An asymmetric index over every item and one of the same training over ``keep``."""
    v = rng.standard_normal((1500, 32)).astype(np.float32)
    codes = np.packbits(v > 0, axis=1)
    ids = rng.permutation(10**6)[:1500]
    out = []
    for subset in (np.arange(1500), keep):
        index = IVFBinaryIndex(32, 8, nprobe=8, screen="asymmetric")
        index.train(codes, v)
        index.add(codes[subset], v[subset], ids=ids[subset])
        out.append(index)
    return v, codes, ids, out


def test_the_asymmetric_screen_filters_and_removes_like_an_index_of_the_survivors(filter_path):
    rng = np.random.default_rng(5)
    keep = np.sort(rng.choice(1500, 300, replace=False))
    v, codes, ids, (full, subset) = _asym_pair(rng, keep)
    q = rng.standard_normal((25, 32)).astype(np.float32)
    qc = np.packbits(q > 0, axis=1)
    want = subset.search(qc, 12, vectors=q)
    got = full.search(qc, 12, vectors=q, allowed=ids[keep])
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.distances, want.distances)
    assert full.remove(np.delete(ids, keep)) == 1500 - keep.size
    removed = full.search(qc, 12, vectors=q)
    np.testing.assert_array_equal(removed.ids, want.ids)
    np.testing.assert_array_equal(removed.distances, want.distances)


def test_bad_ids_are_refused_and_nothing_is_added():
    rng = np.random.default_rng(1)
    index = _trained(rng)
    index.add(_codes(rng, 5), ids=[10, 11, 12, 13, 14])
    before = index.ids.copy()
    for ids, fragment in [([1, 1, 2], "unique"), ([-1, 2, 3], "non-negative"),
                          ([14, 20, 21], "already present"), ([1, 2], "one id per row")]:
        with pytest.raises(ValueError, match=fragment):
            index.add(_codes(rng, 3), ids=ids)
    with pytest.raises(TypeError, match="ids"):
        index.add(_codes(rng, 3), ids=[1.5, 2.0, 3.0])
    np.testing.assert_array_equal(index.ids, before)
    with pytest.raises(TypeError, match="allowed"):
        index.search(_codes(rng, 1), 3, allowed=np.array([1.0]))


def test_sequential_ids_continue_above_every_id_and_removed_ids_are_not_reused():
    rng = np.random.default_rng(2)
    index = _trained(rng)
    index.add(_codes(rng, 3), ids=[7, 100, 3])
    index.add(_codes(rng, 2))
    assert sorted(index.ids.tolist()) == [3, 7, 100, 101, 102]
    assert index.remove([101, 102, 555]) == 2
    index.add(_codes(rng, 1))
    assert 103 in index.ids
    assert index.remove(index.ids) == 4
    assert index.ntotal == 0
    index.train(rng.integers(0, 256, (400, 8), dtype=np.uint8))
    index.add(_codes(rng, 1))
    assert index.ids.tolist() == [104]


def test_removals_rewrite_lists_in_the_free_room_or_into_new_buffers():
    rng = np.random.default_rng(4)
    index, model = _trained(rng), Model("binary", 64)
    queries = _codes(rng, 16)
    for _ in range(6):
        codes = _codes(rng, 500)
        index.add(codes)
        model.add(codes, None)
        # One item (one list rewritten into the free room), then a third of them (every
        # list: more than the room, so new buffers).
        for count in (1, len(model.rows) // 3):
            gone = rng.choice(np.array(sorted(model.rows)), count, replace=False)
            assert index.remove(gone) == model.remove(gone) == count
            _check(index, model, queries, 20)


def test_a_memory_mapped_index_removes_and_adds_into_memory(tmp_path):
    rng = np.random.default_rng(6)
    index, model = _trained(rng), Model("binary", 64)
    codes = _codes(rng, 800)
    index.add(codes, ids=np.arange(800) * 3)
    model.add(codes, np.arange(800) * 3)
    index.save(tmp_path / "ivf.cofi")
    mapped = cofisearch.load_index(tmp_path / "ivf.cofi", mmap=True)
    assert mapped.remove(np.arange(0, 2400, 9)) == model.remove(np.arange(0, 2400, 9))
    more = _codes(rng, 50)
    mapped.add(more)
    model.add(more, None)
    _check(mapped, model, _codes(rng, 10), 15)
    # The file is untouched.
    assert cofisearch.load_index(tmp_path / "ivf.cofi").ntotal == 800


def test_ids_removals_and_the_next_id_survive_save_load_and_pickle(tmp_path):
    rng = np.random.default_rng(8)
    index, model = _trained(rng), Model("binary", 64)
    codes = _codes(rng, 300)
    ids = rng.permutation(10**5)[:300]
    index.add(codes, ids=ids)
    model.add(codes, ids)
    index.remove(ids[::4])
    model.remove(ids[::4])
    index.save(tmp_path / "ivf.cofi")
    for copy in (cofisearch.load_index(tmp_path / "ivf.cofi"),
                 cofisearch.load_index(tmp_path / "ivf.cofi", mmap=True),
                 pickle.loads(pickle.dumps(index))):
        _check(copy, model, _codes(rng, 10), 12)
        assert copy._next_id() == int(ids.max()) + 1


def test_files_and_pickles_of_the_layouts_before_ids_still_load(tmp_path):
    rng = np.random.default_rng(9)
    index = _trained(rng)
    index.add(_codes(rng, 200))
    settings, *arrays = index._parts()
    legacy = settings._replace(next_id=-1)
    ivf_module._save(str(tmp_path / "old.cofi"), legacy, *arrays)
    assert (tmp_path / "old.cofi").read_bytes()[36] == 1  # layout 1: Hamming, before ids
    old = cofisearch.load_index(tmp_path / "old.cofi")
    queries = _codes(rng, 10)
    np.testing.assert_array_equal(old.search(queries, 7).ids, index.search(queries, 7).ids)
    old.add(_codes(rng, 1))
    assert old.ids.max() == 200
    pickled = ivf_module._restore(tuple(settings)[:11], *arrays[:4],
                                  ivf_module._checksum(legacy, arrays))
    np.testing.assert_array_equal(pickled.search(queries, 7).ids, index.search(queries, 7).ids)


def test_a_checksummed_file_with_repeated_ids_is_refused(tmp_path):
    rng = np.random.default_rng(10)
    index = _trained(rng)
    index.add(_codes(rng, 50))
    settings, centroids, sizes, ids, codes, *screened = index._parts()
    ids = ids.copy()
    ids[1] = ids[0]
    ivf_module._save(str(tmp_path / "ivf.cofi"), settings, centroids, sizes, ids, codes, *screened)
    with pytest.raises(ValueError, match="unique"):
        cofisearch.load_index(tmp_path / "ivf.cofi")


# ---- the cascade -----------------------------------------------------------------------


def _cascade(rng, coarse_kind):
    dim = 16
    v = rng.standard_normal((900, dim)).astype(np.float32)
    codes = np.packbits(v > 0, axis=1)
    if coarse_kind == "flat":
        coarse = BinaryIndex(16)
    else:
        coarse = IVFBinaryIndex(16, 6, nprobe=6)
        coarse.train(codes, v)
    return Cascade(coarse, FloatIndex(dim), n_candidates=900), v, codes


@pytest.mark.parametrize("coarse_kind", ["flat", "ivf"])
def test_the_cascade_keeps_one_id_per_item_in_both_stages(coarse_kind):
    rng = np.random.default_rng(11)
    cascade, v, codes = _cascade(rng, coarse_kind)
    ids = rng.permutation(10**6)[:600]
    cascade.add(codes[:600], v[:600], ids=ids)
    cascade.add(codes[600:], v[600:])
    every = np.concatenate([ids, ids.max() + 1 + np.arange(300)])
    assert cascade.remove(every[::5]) == 180
    survivors = np.setdiff1d(np.arange(900), np.arange(900)[::5])
    q = rng.standard_normal((12, 16)).astype(np.float32)
    qc = np.packbits(q > 0, axis=1)
    # With every candidate kept, the cascade is exact float search over the survivors.
    got = cascade.search(qc, q, 10)
    scores = q @ v[survivors].T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(got.distances, np.take_along_axis(scores, best, 1), rtol=1e-5)
    assert set(got.ids.ravel()) <= set(every[survivors])
    allowed = every[survivors[::3]]
    filtered = cascade.search(qc, q, 10, allowed=allowed)
    assert np.isin(filtered.ids, allowed).all()
    assert np.isin(filtered.candidates[filtered.candidates >= 0], allowed).all()
    # A duplicate id is refused by both stages before either changes.
    with pytest.raises(ValueError, match="already present"):
        cascade.add(codes[:2], v[:2], ids=[ids[1], 5 * 10**6])
    assert cascade.coarse.ntotal == cascade.fine.ntotal == 720
    cascade.compact()
    after = cascade.search(qc, q, 10)
    np.testing.assert_array_equal(after.ids, got.ids)
    np.testing.assert_array_equal(after.distances, got.distances)


def test_a_cascade_over_stages_with_different_ids_is_refused():
    coarse, fine = BinaryIndex(16), FloatIndex(4)
    coarse.add(np.zeros((2, 2), np.uint8), ids=[1, 2])
    fine.add(np.zeros((2, 4), np.float32), ids=[1, 3])
    with pytest.raises(ValueError, match="same ids"):
        Cascade(coarse, fine)


def test_a_cascade_pickles_both_stages_at_one_moment_and_old_pickles_load():
    from cofisearch import cascade as cascade_module

    rng = np.random.default_rng(12)
    cascade, v, codes = _cascade(rng, "flat")
    cascade.add(codes, v, ids=np.arange(900) * 2)
    restorer, args = cascade.__reduce__()
    copy = restorer(*args)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    qc = np.packbits(q > 0, axis=1)
    np.testing.assert_array_equal(copy.search(qc, q, 7).ids, cascade.search(qc, q, 7).ids)
    # Written before: the stages themselves rather than their reductions.
    old = restorer(cascade.coarse, cascade.fine, *args[2:])
    np.testing.assert_array_equal(old.search(qc, q, 7).ids, cascade.search(qc, q, 7).ids)
    with pytest.raises(ValueError, match="reduction"):
        cascade_module._restore_cascade((print, ("not an index",)), *args[1:])

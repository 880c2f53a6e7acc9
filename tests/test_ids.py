"""The caller's ids, removals and the `allowed` filter of the exact indexes, against a
NumPy model of the present items: every search equals the reference over the present,
allowed items, ties by the smaller caller's id, on every path (fused bitmap scan and
gather), SIMD level, Hamming kernel and thread count."""

import pickle
import threading
import time
import zlib

import cofisearch
import numpy as np
import pytest
from cofisearch import BinaryIndex, FloatIndex, _rows
from cofisearch._reference import hamming_distances, topk_by_id
from conftest import hamming_path_forced


@pytest.fixture(params=["scan", "pack", "gather"])
def filter_path(request, monkeypatch):
    """Forces a filtered search onto the fused scan, the scan of a packed copy of its rows
    or the gather of its rows."""
    if request.param in ("scan", "pack"):
        monkeypatch.setattr(_rows, "GATHER_ROWS", -1)
        monkeypatch.setattr(_rows, "_GATHER_FRACTION", {"binary": 1 << 62, "float": 1 << 62})
        if request.param == "scan":
            monkeypatch.setattr(_rows, "PACK_BYTES", -1)
        else:
            monkeypatch.setattr(_rows, "_PACK_MOST", 1.0)
            monkeypatch.setattr(_rows, "_PACK_FEW", 1.0)
    else:
        monkeypatch.setattr(_rows, "GATHER_ROWS", 1 << 62)
        monkeypatch.setattr(_rows, "PACK_QUERIES", 1 << 62)
    return request.param


class Model:
    """The present items of an index, as NumPy sees them."""

    def __init__(self, kind, width):
        self.kind = kind
        self.rows = {}
        self.next_id = 0
        self.width = width

    def add(self, data, ids):
        if ids is None:
            ids = range(self.next_id, self.next_id + len(data))
        for i, row in zip(ids, data):
            self.rows[int(i)] = row
            self.next_id = max(self.next_id, int(i) + 1)

    def remove(self, ids):
        return sum(self.rows.pop(int(i), None) is not None for i in set(np.asarray(ids).tolist()))

    def search(self, queries, k, allowed=None):
        ids = np.array(sorted(self.rows), dtype=np.int64)
        if allowed is not None:
            ids = ids[np.isin(ids, allowed)]
        if ids.size == 0:
            sentinel = cofisearch.HAMMING_SENTINEL if self.kind == "binary" else cofisearch.SCORE_SENTINEL
            return np.full((len(queries), k), sentinel), np.full((len(queries), k), -1)
        data = np.stack([self.rows[int(i)] for i in ids])
        if self.kind == "binary":
            return topk_by_id(hamming_distances(queries, data), ids, k, largest=False)
        return topk_by_id(queries @ data.T, ids, k, largest=True)


def _data(rng, kind, n, width):
    if kind == "binary":
        return rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
    # Small integers: every score is exact in float32, and ties are common.
    return rng.integers(-2, 3, (n, width)).astype(np.float32)


def _index_of(kind, width):
    return BinaryIndex(width) if kind == "binary" else FloatIndex(width)


def _check(index, model, queries, k, allowed=None, threads=1):
    got = index.search(queries, k, allowed=allowed, num_threads=threads)
    want = model.search(queries, k, allowed)
    np.testing.assert_array_equal(got.ids, want[1])
    np.testing.assert_array_equal(got.distances, want[0])


@pytest.mark.parametrize("kind,width", [("binary", 64), ("binary", 136), ("float", 24)])
@pytest.mark.parametrize("order", ["ascending", "shuffled"])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_adds_removes_and_filters_match_numpy(simd, filter_path, kind, width, order, threads):
    rng = np.random.default_rng(zlib.crc32(repr((kind, width, order, threads, simd, filter_path)).encode()))
    index, model = _index_of(kind, width), Model(kind, width)
    for step in range(14):
        n = int(rng.integers(1, 400))
        data = _data(rng, kind, n, width)
        choice = rng.integers(0, 3)
        if choice == 0:
            ids = None
        elif order == "ascending":
            ids = model.next_id + 3 + np.cumsum(rng.integers(1, 4, n))
        else:
            # Any order, and sometimes an id removed earlier (a tombstone's) again.
            pool = np.setdiff1d(rng.integers(0, 3 * (model.next_id + n), 3 * n), list(model.rows))
            ids = rng.permutation(pool)[:n]
            data = data[: ids.size]
        index.add(data, ids=ids)
        model.add(data, ids)
        if step % 3 == 1:
            present = np.array(sorted(model.rows))
            gone = rng.choice(present, int(rng.integers(0, len(present) // 3 + 1)), replace=False)
            gone = np.concatenate([gone, [10**12, model.next_id + 5]])
            assert index.remove(gone) == model.remove(gone)
        if step % 5 == 4:
            index.compact()
        assert index.ntotal == len(model.rows)
        queries = _data(rng, kind, int(rng.integers(1, 40)), width)
        k = int(rng.integers(1, 30))
        _check(index, model, queries, k, threads=threads)
        everything = np.array(sorted(model.rows) + [10**12])
        for keep in (0.5, 0.1, 0.01):
            allowed = rng.choice(everything, max(1, int(keep * everything.size)), replace=False)
            _check(index, model, queries, k, allowed, threads)
    assert sorted(index.ids.tolist()) == sorted(model.rows)


@pytest.mark.parametrize("path", ["stream", "panel", "dense"])
def test_every_hamming_path_filters_and_names_by_id(simd, path):
    rng = np.random.default_rng(7)
    index, model = BinaryIndex(64), Model("binary", 64)
    codes = rng.integers(0, 4, (3000, 8), dtype=np.uint8)  # few bits: many ties
    ids = rng.permutation(10**6)[:3000]
    index.add(codes[:1000])
    model.add(codes[:1000], None)
    index.add(codes[1000:], ids=ids[1000:] + 2000)
    model.add(codes[1000:], ids[1000:] + 2000)
    model_ids = np.array(sorted(model.rows))
    index.remove(model_ids[::7])
    model.remove(model_ids[::7])
    queries = rng.integers(0, 4, (64, 8), dtype=np.uint8)
    with hamming_path_forced(path):
        for k in (1, 10, 100):
            _check(index, model, queries, k, threads=2)
            _check(index, model, queries, k, model_ids[::3], threads=2)


def test_a_plain_index_keeps_no_id_map():
    index = BinaryIndex(64)
    index.add(np.zeros((10, 8), np.uint8))
    index.add(np.ones((5, 8), np.uint8))
    assert index._store.items is None
    assert index.search(np.zeros(8, np.uint8), 3).ids.tolist() == [[0, 1, 2]]
    assert index.ids.tolist() == list(range(15))


@pytest.mark.parametrize("kind", ["binary", "float"])
def test_bad_ids_are_refused_and_nothing_is_added(kind):
    rng = np.random.default_rng(1)
    index = _index_of(kind, 64)
    index.add(_data(rng, kind, 4, 64), ids=[10, 11, 12, 13])
    data = _data(rng, kind, 3, 64)
    for ids, message in (
        ([20, -1, -5], "non-negative, got -1, -5"),
        ([20, 21, 20], "repeated id\\(s\\) 20"),
        ([20, 11, 13], "already present in the index: 11, 13"),
    ):
        with pytest.raises(ValueError, match=message):
            index.add(data, ids=ids)
        assert index.ntotal == 4
    with pytest.raises(ValueError, match="one id per row \\(3\\), got 2"):
        index.add(data, ids=[1, 2])
    with pytest.raises(TypeError, match="integer array of ids"):
        index.add(data, ids=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D array of ids"):
        index.search(data, 2, allowed=[[1, 2]])
    assert index.ids.tolist() == [10, 11, 12, 13]


def test_remove_counts_present_ids_and_a_removed_id_can_come_back():
    index = FloatIndex(4)
    x = np.eye(4, dtype=np.float32)
    index.add(x, ids=[5, 6, 7, 8])
    assert index.remove([6, 6, 9, 7]) == 2
    assert index.remove([6]) == 0
    assert index.ntotal == 2 and len(index) == 2
    assert index.search(x[1], 4).ids.tolist() == [[5, 8, -1, -1]]
    index.add(x[1], ids=[6])
    assert index.search(x[1], 1).ids.tolist() == [[6]]
    # Without ids, the next id is one past the largest ever held.
    index.add(x[2])
    assert index.ids.tolist() == [5, 8, 6, 9]
    assert index.vectors.shape == (4, 4)


def test_an_add_compacts_once_a_quarter_is_removed():
    index = BinaryIndex(64)
    index.add(np.arange(800, dtype=np.uint8).reshape(100, 8))
    index.remove(np.arange(0, 100, 2))
    assert index._store.n == 100
    index.add(np.zeros((1, 8), np.uint8))
    assert index._store.n == 51 and index.ntotal == 51
    assert index.ids.tolist() == list(range(1, 100, 2)) + [100]


def test_allowed_with_absent_ids_and_an_empty_filter():
    index = BinaryIndex(64)
    index.add(np.zeros((10, 8), np.uint8), ids=np.arange(100, 110))
    r = index.search(np.zeros((2, 8), np.uint8), 3, allowed=np.array([], dtype=np.int64))
    assert (r.ids == -1).all() and (r.distances == cofisearch.HAMMING_SENTINEL).all()
    r = index.search(np.zeros((1, 8), np.uint8), 3, allowed=[3, 105, 10**15])
    assert r.ids.tolist() == [[105, -1, -1]]


@pytest.mark.parametrize("kind", ["binary", "float"])
def test_ids_and_removals_survive_pickle(kind):
    rng = np.random.default_rng(3)
    index, model = _index_of(kind, 64), Model(kind, 64)
    data = _data(rng, kind, 200, 64)
    ids = rng.permutation(1000)[:200]
    index.add(data, ids=ids)
    model.add(data, ids)
    index.remove(ids[:50])
    model.remove(ids[:50])
    back = pickle.loads(pickle.dumps(index))
    queries = _data(rng, kind, 5, 64)
    _check(back, model, queries, 10)
    back.add(data[:1])
    assert back.ids[-1] == model.next_id


def test_float_candidates_are_item_ids_once_ids_are_given():
    index = FloatIndex(2)
    x = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    index.add(x, ids=[30, 10, 20])
    r = index.search(x[0], 3, candidates=[[30, 10, 20, -1]])
    # Tied scores: the smaller id first.
    assert r.ids.tolist() == [[10, 30, 20]]
    index.remove([10])
    r = index.search(x[0], 3, candidates=[[30, 10, 20]], allowed=[30, 10])
    assert r.ids.tolist() == [[30, -1, -1]]


@pytest.mark.parametrize("kind", ["binary", "float"])
def test_a_search_sees_each_remove_and_compaction_whole(kind):
    # Batches are removed in order, with compactions between them: any search must see
    # exactly the batches not yet removed (a suffix), never part of one.
    rng = np.random.default_rng(11)
    batches, size = 20, 100
    index = _index_of(kind, 64)
    index.add(_data(rng, kind, batches * size, 64), ids=rng.permutation(10**6)[: batches * size])
    groups = index.ids.reshape(batches, size)
    seen, done = [], threading.Event()

    def search():
        q = _data(rng, kind, 2, 64)
        while not done.is_set():
            seen.append(index.search(q, batches * size).ids[0])

    reader = threading.Thread(target=search)
    reader.start()
    try:
        for j in range(batches - 1):
            # Let a search start on each state (the GIL would otherwise let the removes
            # run through before the reader's first search).
            waited = len(seen)
            while len(seen) == waited and reader.is_alive():
                time.sleep(0.0005)
            assert index.remove(groups[j]) == size
            if j % 4 == 3:
                index.compact()
    finally:
        done.set()
        reader.join()
    assert seen
    for ids in seen:
        present = set(ids[ids >= 0].tolist())
        first = batches - len(present) // size
        assert len(present) % size == 0
        assert present == set(groups[first:].reshape(-1).tolist())

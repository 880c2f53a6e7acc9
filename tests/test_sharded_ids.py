"""The caller's ids, removals and the `allowed` filter of the sharded index and the sharded
cascade, against a NumPy model of the present items (ties by the smaller id), through
saves, loads, version-1 manifests and restored shards."""

import json
import struct
import time
import zlib

import cofisearch
import numpy as np
import pytest
from cofisearch._reference import hamming_distances, merge_topk, topk_by_id
from test_ids import Model

ray = pytest.importorskip("ray")

from cofisearch.distributed import (  # needs Ray, checked just above
    ShardedCascade,
    ShardedIndex,
    ShardLostError,
    _manifest,
    load_sharded,
)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the whole module: starting it costs seconds."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _data(rng, kind, n, width):
    if kind == "binary":
        # Few distinct bits: many tied distances, across shards.
        return rng.integers(0, 4, (n, width // 8), dtype=np.uint8)
    # Small integers: every score is exact in float32, and ties are common.
    return rng.integers(-2, 3, (n, width)).astype(np.float32)


def _template(kind, width):
    return cofisearch.BinaryIndex(width) if kind == "binary" else cofisearch.FloatIndex(width)


def _check(index, model, queries, k, allowed=None):
    got = index.search(queries, k, allowed=allowed)
    want = model.search(queries, k, allowed)
    np.testing.assert_array_equal(got.ids, want[1])
    np.testing.assert_array_equal(got.distances, want[0])


def _check_sizes(index, model):
    present = np.array(sorted(model.rows), dtype=np.int64)
    assert index.ntotal == len(index) == present.size
    np.testing.assert_array_equal(index.ids, present)
    routed = np.bincount(present % index.n_shards, minlength=index.n_shards)
    assert index.shard_sizes == tuple(routed.tolist())


def _new_ids(rng, model, n, order):
    if order == "ascending":
        return model.next_id + 3 + np.cumsum(rng.integers(1, 4, n))
    # Any order, and sometimes an id removed earlier again.
    pool = np.setdiff1d(rng.integers(0, 3 * (model.next_id + n), 3 * n), list(model.rows))
    return rng.permutation(pool)[:n]


@pytest.mark.parametrize("kind,width", [("binary", 64), ("float", 8)])
@pytest.mark.parametrize("n_shards", [2, 3])
@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_random_adds_removes_and_filters_match_numpy(tmp_path, kind, width, n_shards, order):
    rng = np.random.default_rng(zlib.crc32(repr((kind, n_shards, order)).encode()))
    index, model = ShardedIndex(_template(kind, width), n_shards), Model(kind, width)
    try:
        for step in range(9):
            # Some adds large enough that a 50% filter takes the shards' fused scan
            # rather than the gather of its rows.
            n = int(rng.integers(1, 400 if step % 3 else 9000))
            data = _data(rng, kind, n, width)
            ids = None if rng.integers(0, 3) == 0 else _new_ids(rng, model, n, order)
            if ids is not None:
                data = data[: ids.size]
            index.add(data, ids=ids)
            model.add(data, ids)
            if step % 3 == 1:
                present = np.array(sorted(model.rows))
                gone = rng.choice(present, int(rng.integers(0, len(present) // 3 + 1)), replace=False)
                gone = np.concatenate([gone, [10**12, model.next_id + 5, -3]])
                assert index.remove(gone) == model.remove(gone[gone >= 0])
            if step == 5:
                index.compact()
            if step == 6:
                index.save(tmp_path)
                index.close()
                index = load_sharded(tmp_path)
            _check_sizes(index, model)
            queries = _data(rng, kind, int(rng.integers(1, 30)), width)
            k = int(rng.integers(1, 40))
            _check(index, model, queries, k)
            everything = np.array(sorted(model.rows) + [10**12, -1])
            for keep in (0.5, 0.1, 0.01):
                allowed = rng.choice(everything, max(1, int(keep * everything.size)), replace=False)
                _check(index, model, queries, k, allowed)
        # Without ids, the next id is one past the largest ever held, even after a load.
        top, first = max(model.rows), model.next_id
        assert index.remove([top]) == model.remove([top]) == 1
        extra = _data(rng, kind, 5, width)
        index.add(extra)
        model.add(extra, None)
        _check_sizes(index, model)
        assert index.ids[-1] == first + 4
        _check(index, model, queries, 50)
    finally:
        index.close()


def test_a_filter_allowing_nothing_present_pads_every_query():
    rng = np.random.default_rng(1)
    with ShardedIndex(cofisearch.BinaryIndex(64), 3) as index:
        index.add(_data(rng, "binary", 50, 64), ids=np.arange(100, 150))
        queries = _data(rng, "binary", 2, 64)
        for allowed in ([], [3, 99, 150, 10**15]):
            got = index.search(queries, 4, allowed=np.array(allowed, dtype=np.int64))
            assert (got.ids == -1).all() and (got.distances == cofisearch.HAMMING_SENTINEL).all()
        got = index.search(queries[0], 3, allowed=[7, 120, 101])
        assert sorted(got.ids[0, :2].tolist()) == [101, 120] and got.ids[0, 2] == -1


def test_float_candidates_and_allowed_are_ids_and_equal_the_single_index():
    rng = np.random.default_rng(2)
    vectors = _data(rng, "float", 600, 8)
    ids = np.concatenate([[4999], rng.permutation(4999)[:599]])
    single = cofisearch.FloatIndex(8)
    single.add(vectors, ids=ids)
    single.remove(ids[::5])
    with ShardedIndex(cofisearch.FloatIndex(8), 3) as index:
        index.add(vectors, ids=ids)
        assert index.remove(ids[::5]) == 120
        queries = _data(rng, "float", 6, 8)
        # Present, removed and never-added ids, another shard's, and padding.
        candidates = rng.choice(np.concatenate([ids, [4999, 0, 1, 2]]), (6, 80))
        candidates[:, :5] = -1
        allowed = ids[::2]
        for k in (5, 90):
            for kwargs in ({}, {"allowed": allowed}):
                got = index.search(queries, k, candidates=candidates, **kwargs)
                want = single.search(queries, k, candidates=candidates, **kwargs)
                np.testing.assert_array_equal(got.ids, want.ids)
                np.testing.assert_array_equal(got.distances, want.distances)
        with pytest.raises(ValueError, match="candidates must hold ids in \\[0, 5000\\)"):
            index.search(queries, 5, candidates=np.full((6, 2), 5000))


# ---- bad input --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_ids():
    rng = np.random.default_rng(3)
    index = ShardedIndex(cofisearch.BinaryIndex(64), 3)
    index.add(_data(rng, "binary", 6, 64), ids=[10, 11, 12, 13, 14, 30])
    yield index
    index.close()


@pytest.mark.parametrize(
    "ids, error, message",
    [
        ([20, -1, -5], ValueError, "ids must be non-negative, got -1, -5"),
        ([20, 21, 20], ValueError, "ids must be unique, got repeated id\\(s\\) 20"),
        # Present on two different shards: both are named.
        ([20, 11, 13], ValueError, "ids already present in the index: 11, 13"),
        ([40, 41, 30], ValueError, "ids already present in the index: 30"),
        ([1, 2], ValueError, "ids must hold one id per row \\(3\\), got 2"),
        ([1.0, 2.0, 3.0], TypeError, "ids must be an integer array of ids"),
        ([[1, 2, 3]], ValueError, "ids must be a 1-D array of ids"),
    ],
)
def test_bad_ids_are_refused_and_no_shard_changes(with_ids, ids, error, message):
    before = (with_ids.shard_sizes, with_ids.ids.tolist())
    with pytest.raises(error, match=message):
        with_ids.add(np.zeros((3, 8), np.uint8), ids=ids)
    assert (with_ids.shard_sizes, with_ids.ids.tolist()) == before
    # Nothing of the refused call is held anywhere: its new ids are still free.
    assert with_ids.remove([20, 21, 40, 41]) == 0


def test_bad_filters_and_removals_are_refused(with_ids):
    q = np.zeros((1, 8), np.uint8)
    with pytest.raises(ValueError, match="allowed must be a 1-D array of ids"):
        with_ids.search(q, 2, allowed=[[10, 11]])
    with pytest.raises(TypeError, match="allowed must be an integer array of ids"):
        with_ids.search(q, 2, allowed=[10.0])
    with pytest.raises(ValueError, match="ids must be a 1-D array of ids"):
        with_ids.remove([[10]])
    assert with_ids.ntotal == 6


def test_remove_counts_present_ids_and_a_removed_id_can_come_back():
    x = np.eye(4, dtype=np.float32)
    with ShardedIndex(cofisearch.FloatIndex(4), 2) as index:
        index.add(x, ids=[5, 6, 7, 8])
        assert index.remove([6, 6, 9, 7, -1]) == 2
        assert index.remove([6]) == 0
        assert (index.ntotal, index.shard_sizes) == (2, (1, 1))
        assert index.search(x[1], 4).ids.tolist() == [[5, 8, -1, -1]]
        index.add(x[1], ids=[6])
        assert index.search(x[1], 1).ids.tolist() == [[6]]
        index.add(x[2])
        assert index.ids.tolist() == [5, 6, 8, 9]


def test_sequential_ids_keep_round_robin_and_ids_continue_after_given_ones():
    rng = np.random.default_rng(4)
    with ShardedIndex(cofisearch.BinaryIndex(64), 3) as index:
        index.add(_data(rng, "binary", 7, 64))
        assert index.shard_sizes == (3, 2, 2)
        index.add(_data(rng, "binary", 2, 64), ids=[100, 50])
        index.add(_data(rng, "binary", 4, 64))
        assert index.ids.tolist() == list(range(7)) + [50, 100, 101, 102, 103, 104]
        assert index.shard_sizes == (4, 4, 5)


# ---- persistence ------------------------------------------------------------------------


def _file_version(path):
    with open(path, "rb") as f:
        return struct.unpack_from("<I", f.read(12), 8)[0]


def test_save_writes_manifest_version_2_and_keeps_plain_shards_without_id_maps(tmp_path):
    rng = np.random.default_rng(5)
    with ShardedIndex(cofisearch.BinaryIndex(64), 3) as index:
        index.add(_data(rng, "binary", 10, 64))
        index.remove([4])  # shard 1's
        index.save(tmp_path)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        assert (manifest["version"], manifest["ntotal"], manifest["next_id"]) == (2, 9, 10)
        assert [e["sequential"] for e in manifest["shards"]] == [True, False, True]
        assert [e["count"] for e in manifest["shards"]] == [4, 2, 3]
        assert all("ids" not in e for e in manifest["shards"])
        versions = [_file_version(tmp_path / e["files"]["codes"]) for e in manifest["shards"]]
        # Shard files without ids are version 1, readable by builds before ids.
        assert versions == [1, 2, 1]


@pytest.mark.parametrize("kind", ["binary", "float"])
def test_save_and_load_keep_ids_removals_and_next_id(tmp_path, kind):
    rng = np.random.default_rng(6)
    width = 64 if kind == "binary" else 8
    model = Model(kind, width)
    with ShardedIndex(_template(kind, width), 3) as index:
        for ids in (None, 300 + rng.permutation(10**6)[:300], None):
            data = _data(rng, kind, 300, width)
            index.add(data, ids=ids)
            model.add(data, ids)
        gone = np.concatenate([np.array(sorted(model.rows))[::4], [max(model.rows)]])
        assert index.remove(gone) == model.remove(gone)
        index.save(tmp_path)
    queries = _data(rng, kind, 10, width)
    with load_sharded(tmp_path, mmap=True) as loaded:
        _check_sizes(loaded, model)
        allowed = np.array(sorted(model.rows))[::3]
        _check(loaded, model, queries, 25)
        _check(loaded, model, queries, 25, allowed)
        # The removed largest id is not given again.
        data = _data(rng, kind, 4, width)
        loaded.add(data)
        model.add(data, None)
        _check_sizes(loaded, model)
        _check(loaded, model, queries, 25)


def _write_v1_directory(directory, codes, n_shards):
    """A sharded binary index as builds before ids saved it: version-1 manifest, shard
    ``s`` holding the rows ``s, s + n_shards, ...`` in a plain file, local id ``i`` meaning
    global id ``s + n_shards * i``."""
    directory.mkdir()
    entries = []
    for s in range(n_shards):
        shard = cofisearch.BinaryIndex(codes.shape[1] * 8)
        shard.add(codes[s::n_shards])
        name = f"shard-{s:05d}-0123456789ab.codes.cfs"
        shard.save(directory / name)
        entries.append({
            "count": shard.ntotal,
            "ids": {"start": s, "step": n_shards, "stop": codes.shape[0]},
            "files": {"codes": name},
            "checksums": [cofisearch._index.index_file_checksum(directory / name)],
        })
    manifest = {
        "format": "cofisearch-sharded", "version": 1, "kind": "binary", "n_shards": n_shards,
        "ntotal": codes.shape[0], "nbits": codes.shape[1] * 8,
        "routing": "round-robin: global id = shard + n_shards * local id", "shards": entries,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))


def test_a_version_1_directory_loads_and_takes_ids_and_removals(tmp_path):
    rng = np.random.default_rng(7)
    codes = _data(rng, "binary", 1000, 64)
    _write_v1_directory(tmp_path / "v1", codes, 3)
    model = Model("binary", 64)
    model.add(codes, None)
    queries = _data(rng, "binary", 12, 64)
    with load_sharded(tmp_path / "v1") as loaded:
        assert loaded.shard_sizes == (334, 333, 333)
        _check_sizes(loaded, model)
        _check(loaded, model, queries, 30)
        _check(loaded, model, queries, 30, np.arange(0, 1000, 7))
        more = _data(rng, "binary", 20, 64)
        loaded.add(more[:10])
        loaded.add(more[10:], ids=np.arange(5000, 5010))
        model.add(more[:10], None)
        model.add(more[10:], np.arange(5000, 5010))
        assert loaded.remove([0, 500, 1005, 5003]) == model.remove([0, 500, 1005, 5003]) == 4
        _check_sizes(loaded, model)
        _check(loaded, model, queries, 30)
        loaded.save(tmp_path / "v2")
    with load_sharded(tmp_path / "v2") as again:
        _check_sizes(again, model)
        _check(again, model, queries, 30)


def test_whole_manifest_entries_moved_are_refused(tmp_path):
    # Files and checksums moved together: only the entries' shard numbers tell.
    with ShardedIndex(cofisearch.BinaryIndex(64), 3) as index:
        index.add(_data(np.random.default_rng(10), "binary", 5, 64))
        index.save(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"].reverse()
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="shard 0 entry says it is shard 2"):
        load_sharded(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"next_id": 3}, "next_id must be an int in \\[9, 2\\*\\*63\\]"),
        ({"next_id": 2**63 + 1}, "next_id must be an int"),
        ({"next_id": 9.0}, "next_id must be an int"),
        ({"shard0": {"sequential": 1}}, "shard 0 sequential must be true or false"),
        ({"shard0": {"count": 5}}, "counts add up to 10, not ntotal 9"),
        ({"shard0": {"count": -1}}, "shard 0 entry is corrupt"),
        ({"shard0": {"shard": 1}}, "shard 0 entry says it is shard 1 \\(entries moved\\?\\)"),
        ({"version": 3}, "format version 3 is not supported"),
    ],
)
def test_corrupt_version_2_manifests_are_refused(tmp_path, change, message):
    manifest = {
        "format": "cofisearch-sharded", "version": 2, "kind": "binary", "n_shards": 2,
        "ntotal": 9, "next_id": 12, "nbits": 64, "routing": "by id",
        "shards": [
            {"shard": 0, "count": 4, "sequential": False, "files": {"codes": "a.cfs"},
             "checksums": [1]},
            {"shard": 1, "count": 5, "sequential": True, "files": {"codes": "b.cfs"},
             "checksums": [2]},
        ],
    }
    for key, value in change.items():
        if key == "shard0":
            manifest["shards"][0].update(value)
        else:
            manifest[key] = value
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message):
        _manifest.read_manifest(str(tmp_path))


# ---- faults -----------------------------------------------------------------------------


def _kill(actor):
    """Kills a shard's actor and waits until Ray reports it dead."""
    ray.kill(actor)
    for _ in range(400):
        try:
            ray.get(actor.count.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the actor did not die")


def _saved_with_removals(tmp_path):
    rng = np.random.default_rng(8)
    index, model = ShardedIndex(cofisearch.BinaryIndex(64), 3), Model("binary", 64)
    for ids in (None, 400 + rng.permutation(10**5)[:400]):
        data = _data(rng, "binary", 400, 64)
        index.add(data, ids=ids)
        model.add(data, ids)
    gone = np.array(sorted(model.rows))[::3]
    index.remove(gone)
    model.remove(gone)
    index.save(tmp_path)
    return index, model, _data(rng, "binary", 10, 64)


def test_a_killed_shard_is_restored_with_its_ids_and_removals(tmp_path):
    index, model, queries = _saved_with_removals(tmp_path)
    with index:
        _kill(index.actors[0])
        _check(index, model, queries, 20, np.array(sorted(model.rows))[::2])
        _kill(index.actors[1])
        # A remove reaching a restored shard: the restored shard holds the saved items.
        present = np.array(sorted(model.rows))
        assert index.remove(present[:30]) == model.remove(present[:30])
        _check(index, model, queries, 20)
        _check_sizes(index, model)


def test_a_shard_killed_after_a_remove_since_its_save_is_lost(tmp_path):
    index, model, queries = _saved_with_removals(tmp_path)
    with index:
        on_shard_2 = [i for i in sorted(model.rows) if i % 3 == 2][:5]
        assert index.remove(on_shard_2) == 5
        _kill(index.actors[2])
        with pytest.raises(ShardLostError, match="shard 2 of 3.*added or removed since its last save"):
            index.search(queries, 5)


# ---- cascade ----------------------------------------------------------------------------


def _cascade_reference(model_codes, model_vectors, qc, qv, n_candidates, k, allowed=None):
    """Stage 1 (Hamming top n_candidates among the present allowed items, ties by id) and
    stage 2 (exact inner products of those, ties by id), in NumPy."""
    ids = np.array(sorted(model_codes.rows), dtype=np.int64)
    if allowed is not None:
        ids = ids[np.isin(ids, allowed)]
    if ids.size == 0:
        candidates = np.full((qc.shape[0], n_candidates), -1, dtype=np.int64)
        scores = np.full(candidates.shape, cofisearch.SCORE_SENTINEL, dtype=np.float32)
        return candidates, merge_topk([(scores, candidates)], k, largest=True)
    codes = np.stack([model_codes.rows[int(i)] for i in ids])
    vectors = np.stack([model_vectors.rows[int(i)] for i in ids])
    _, candidates = topk_by_id(hamming_distances(qc, codes), ids, n_candidates, largest=False)
    where = np.searchsorted(ids, np.maximum(candidates, 0))
    scores = np.einsum("qd,qcd->qc", qv, vectors[where]).astype(np.float32)
    scores[candidates < 0] = cofisearch.SCORE_SENTINEL
    return candidates, merge_topk([(scores, candidates)], k, largest=True)


@pytest.mark.parametrize("screen", ["global", "per_shard"])
def test_cascade_ids_removals_and_filters_match_numpy(tmp_path, screen):
    rng = np.random.default_rng(9)
    codes_model, vectors_model = Model("binary", 64), Model("float", 8)
    index = ShardedCascade(
        cofisearch.BinaryIndex(64), cofisearch.FloatIndex(8), 3, n_candidates=30, screen=screen
    )
    try:
        for ids in (None, 700 + rng.permutation(10**5)[:700], None):
            codes = _data(rng, "binary", 700, 64)
            vectors = _data(rng, "float", 700, 8)
            index.add(codes, vectors, ids=ids)
            codes_model.add(codes, ids)
            vectors_model.add(vectors, ids)
        gone = np.array(sorted(codes_model.rows))[::5]
        assert index.remove(gone) == codes_model.remove(gone) == vectors_model.remove(gone)
        qc, qv = _data(rng, "binary", 8, 64), _data(rng, "float", 8, 8)
        present = np.array(sorted(codes_model.rows))
        # The per-shard screen equals the single cascade (one screening every item) when
        # it holds every shard's items.
        depth = 30 if screen == "global" else max(index.shard_sizes)
        screened = 30 if screen == "global" else index.ntotal
        index.n_candidates = index.n_rerank = depth
        for round_ in range(2):
            for allowed in (None, present[::2], present[::40], np.array([], dtype=np.int64)):
                got = index.search(qc, qv, 10, allowed=allowed)
                candidates, (scores, ids) = _cascade_reference(
                    codes_model, vectors_model, qc, qv, screened, 10, allowed
                )
                np.testing.assert_array_equal(got.ids, ids)
                np.testing.assert_array_equal(got.distances, scores)
                if screen == "global":
                    np.testing.assert_array_equal(got.candidates, candidates)
                if allowed is not None:
                    assert np.isin(got.candidates[got.candidates >= 0], allowed).all()
            if round_ == 0:
                index.save(tmp_path)
                index.close()
                index = load_sharded(tmp_path)
                assert index.n_candidates == depth
        _check_sizes(index, codes_model)
    finally:
        index.close()


def test_cascade_refuses_bad_ids_before_either_stage_changes():
    with ShardedCascade(cofisearch.BinaryIndex(64), cofisearch.FloatIndex(8), 2) as index:
        index.add(np.zeros((3, 8), np.uint8), np.ones((3, 8), np.float32), ids=[1, 2, 3])
        with pytest.raises(ValueError, match="already present in the index: 2"):
            index.add(np.zeros((2, 8), np.uint8), np.ones((2, 8), np.float32), ids=[2, 4])
        assert index.ids.tolist() == [1, 2, 3]
        assert index.remove([2]) == 1
        got = index.search(np.zeros((1, 8), np.uint8), np.ones((1, 8), np.float32), 3)
        assert got.ids.tolist() == [[1, 3, -1]]

"""Sharded search on Ray: every answer must equal the single-machine index's answer."""

import json
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cofisearch

ray = pytest.importorskip("ray")

from cofisearch.distributed import (  # noqa: E402  (needs Ray, checked just above)
    ShardedCascade,
    ShardedIndex,
    ShardLostError,
    load_sharded,
)

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(cofisearch.__file__)))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the whole module: starting it costs seconds."""
    started = not ray.is_initialized()
    if started:
        # "shard_slot" is a custom resource for the placement test.
        ray.init(
            num_cpus=2, resources={"shard_slot": 4}, include_dashboard=False, log_to_driver=False
        )
    yield
    if started:
        ray.shutdown()


def _binary_data(n=3001, nbits=16, nq=40, seed=0):
    # 16-bit codes over 3001 rows: most distances are shared by many rows, so the merge's
    # tie-break by id decides much of every top-k.
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (nq, nbits // 8), dtype=np.uint8)
    return codes, queries


def _float_data(n=2999, dim=24, nq=40, seed=1):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    # Exact duplicates give exactly tied scores, landing on different shards.
    vectors[1::7] = vectors[0]
    vectors[500:600] = vectors[100:200]
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    queries[0] = vectors[0]
    return vectors, queries


def _add_in_batches(index, rows):
    # Uneven batches, including ones smaller than the shard count, so that routing starts
    # each batch on a different shard.
    for lo, hi in [(0, 1), (1, 3), (3, 700), (700, 701), (701, rows.shape[0])]:
        index.add(rows[lo:hi])


def _single(template, rows):
    index = (
        cofisearch.BinaryIndex(template.nbits)
        if template.kind == "binary"
        else cofisearch.FloatIndex(template.dim, metric=template.metric)
    )
    index.add(rows)
    return index


def _assert_same(got, expected):
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.distances, expected.distances)
    assert got.distances.dtype == expected.distances.dtype
    assert got.ids.dtype == np.int64


@pytest.fixture(scope="module")
def binary_pair():
    codes, queries = _binary_data()
    sharded = ShardedIndex(cofisearch.BinaryIndex(16), n_shards=3)
    _add_in_batches(sharded, codes)
    yield sharded, _single(sharded, codes), codes, queries
    sharded.close()


@pytest.fixture(scope="module", params=["ip", "cosine"])
def float_pair(request):
    vectors, queries = _float_data()
    sharded = ShardedIndex(cofisearch.FloatIndex(24, metric=request.param), n_shards=4)
    _add_in_batches(sharded, vectors)
    yield sharded, _single(sharded, vectors), vectors, queries
    sharded.close()


# ---- optional dependency ------------------------------------------------------------


def _run_python(code):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )



def _kill(actor):
    """Kills a shard's actor and waits until Ray reports it dead: ray.kill only asks, so a
    call made right after it may still be answered by the living actor."""
    ray.kill(actor)
    for _ in range(400):
        try:
            ray.get(actor.count.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the actor did not die")

def test_importing_cofisearch_does_not_import_ray():
    done = _run_python("import sys, cofisearch; print('ray' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_without_ray_the_module_names_the_extra_to_install():
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"  # what an interpreter without Ray sees
        "try:\n"
        "    import cofisearch.distributed\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    assert 'pip install "cofisearch[ray]"' in done.stdout


class _InitCalled(Exception):
    """Stops a constructor right after it asked Ray to start, before any actor exists."""


def _ray_init_calls(monkeypatch):
    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise _InitCalled

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    return calls


def test_starts_a_local_ray_without_dashboard_when_none_is_running(monkeypatch):
    calls = _ray_init_calls(monkeypatch)
    with pytest.raises(_InitCalled):
        ShardedIndex(cofisearch.BinaryIndex(8), 2)
    assert calls == [{"include_dashboard": False}]


def test_joins_the_cluster_at_the_given_address(monkeypatch):
    calls = _ray_init_calls(monkeypatch)
    with pytest.raises(_InitCalled):
        ShardedIndex(cofisearch.BinaryIndex(8), 2, address="auto")
    assert calls == [{"address": "auto"}]


# ---- exactness ----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 10, 64])
def test_binary_results_equal_the_single_index(binary_pair, k):
    sharded, single, _, queries = binary_pair
    _assert_same(sharded.search(queries, k), single.search(queries, k))


@pytest.mark.parametrize("n_shards", [2, 4])
def test_binary_results_equal_the_single_index_for_any_shard_count(n_shards):
    codes, queries = _binary_data(n=1500, seed=n_shards)
    with ShardedIndex(cofisearch.BinaryIndex(16), n_shards) as sharded:
        _add_in_batches(sharded, codes)
        _assert_same(sharded.search(queries, 25), _single(sharded, codes).search(queries, 25))


def test_one_dimensional_query_is_a_batch_of_one(binary_pair):
    sharded, single, _, queries = binary_pair
    _assert_same(sharded.search(queries[3], 5), single.search(queries[3], 5))


def test_num_threads_does_not_change_results(binary_pair):
    sharded, _, _, queries = binary_pair
    _assert_same(
        sharded.search(queries, 10, num_threads=1), sharded.search(queries, 10, num_threads=2)
    )


@pytest.mark.parametrize("k", [1, 17, 300])
def test_float_results_equal_the_single_index(float_pair, k):
    sharded, single, _, queries = float_pair
    _assert_same(sharded.search(queries, k), single.search(queries, k))


def test_float_rerank_of_global_candidates_equals_the_single_index(float_pair):
    sharded, single, vectors, queries = float_pair
    rng = np.random.default_rng(2)
    candidates = rng.integers(-1, vectors.shape[0], (queries.shape[0], 60))
    candidates[:, 10:20] = candidates[:, :10]  # duplicates count once
    candidates[:, 20:25] = -1
    candidates[0, :] = -1  # a query with no candidate at all
    for k in (5, 80):  # k beyond the 60 candidates pads
        _assert_same(
            sharded.search(queries, k, candidates=candidates),
            single.search(queries, k, candidates=candidates),
        )


def test_fewer_rows_than_shards_and_k_pads_like_the_single_index():
    codes, queries = _binary_data(n=2, seed=3)
    with ShardedIndex(cofisearch.BinaryIndex(16), n_shards=4) as sharded:
        sharded.add(codes)
        assert sharded.shard_sizes == (1, 1, 0, 0)
        got = sharded.search(queries, 5)
    _assert_same(got, _single(sharded, codes).search(queries, 5))
    assert (got.ids[:, 2:] == -1).all()
    assert (got.distances[:, 2:] == cofisearch.HAMMING_SENTINEL).all()


def test_sizes_and_layout_mirror_the_single_index(binary_pair, float_pair):
    sharded, single, codes, _ = binary_pair
    assert sharded.ntotal == len(sharded) == single.ntotal == codes.shape[0]
    assert sharded.shard_sizes == (1001, 1000, 1000)
    assert (sharded.kind, sharded.nbits, sharded.code_size) == ("binary", 16, 2)
    assert not hasattr(sharded, "dim")
    fsharded, fsingle, _, _ = float_pair
    assert (fsharded.kind, fsharded.dim, fsharded.metric) == ("float", 24, fsingle.metric)
    assert not hasattr(fsharded, "nbits")
    assert fsharded.template.ntotal == 0


def test_concurrent_searches_from_several_threads_agree(binary_pair):
    sharded, single, _, queries = binary_pair
    expected = single.search(queries, 10)
    results = [None] * 4

    def worker(i):
        results[i] = sharded.search(queries, 10)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        _assert_same(got, expected)


# ---- errors -------------------------------------------------------------------------


def _search_errors(binary, floats):
    q2 = np.zeros((3, 2), np.uint8)
    qf = np.zeros((3, 24), np.float32)
    return [
        (lambda: binary.search(q2.astype(np.int8), 5), TypeError, "uint8"),
        (lambda: binary.search(np.zeros((3, 3), np.uint8), 5), ValueError, "2 bytes per code"),
        (lambda: binary.search(q2, 0), ValueError, "k must be >= 1"),
        (lambda: binary.search(q2, 5, num_threads=0), ValueError, "num_threads"),
        (lambda: binary.search(q2, 5, candidates=np.zeros((3, 2), np.int64)), TypeError, "float"),
        (lambda: binary.add(np.zeros((3, 4), np.uint8)), ValueError, "codes must have 2 bytes"),
        (lambda: floats.search(qf.astype(np.int32), 5), TypeError, "floating-point"),
        (lambda: floats.search(np.zeros((3, 5), np.float32), 5), ValueError, "24 columns"),
        (lambda: floats.search(qf, 5, candidates=np.full((3, 2), 10**6)), ValueError, "candidates"),
        (lambda: floats.search(qf, 5, candidates=np.zeros((2, 2), np.int64)), ValueError, "(3, c)"),
        (lambda: floats.add(np.full((1, 24), np.nan, np.float32)), ValueError, "finite"),
    ]


def test_bad_arguments_raise_like_the_single_index(binary_pair, float_pair):
    sharded, _, _, _ = binary_pair
    fsharded, _, _, _ = float_pair
    for call, error, match in _search_errors(sharded, fsharded):
        with pytest.raises(error, match=match):
            call()
    assert sharded.ntotal == 3001  # the rejected add left the shards alone


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ShardedIndex(np.zeros(3), 2), TypeError, "BinaryIndex or FloatIndex"),
        (lambda: ShardedIndex(cofisearch.BinaryIndex(8), 0), ValueError, "n_shards must be >= 1"),
        (lambda: ShardedIndex(cofisearch.BinaryIndex(8), 2.0), TypeError, "n_shards"),
        (
            lambda: ShardedIndex(cofisearch.BinaryIndex(8), 2, actor_options=[{}]),
            ValueError,
            "list of 2 dicts",
        ),
        (lambda: ShardedIndex(cofisearch.BinaryIndex(8), 2, actor_options=3), TypeError, "dict"),
        (
            lambda: ShardedIndex(cofisearch.BinaryIndex(8), 2, start_timeout_s=0),
            ValueError,
            "start_timeout_s",
        ),
        (
            lambda: ShardedCascade(cofisearch.FloatIndex(4), cofisearch.FloatIndex(4), 2),
            TypeError,
            "coarse must be a BinaryIndex",
        ),
        (
            lambda: ShardedCascade(
                cofisearch.BinaryIndex(8), cofisearch.FloatIndex(4), 2, screen="both"
            ),
            ValueError,
            "screen must be one of",
        ),
    ],
)
def test_bad_construction_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_template_with_rows_is_rejected():
    template = cofisearch.BinaryIndex(8)
    template.add(np.zeros((2, 1), np.uint8))
    with pytest.raises(ValueError, match="template must be an empty BinaryIndex.*2 rows"):
        ShardedIndex(template, 2)


def test_searching_an_empty_sharded_index_raises():
    with ShardedIndex(cofisearch.BinaryIndex(8), 2) as sharded:
        with pytest.raises(ValueError, match="empty"):
            sharded.search(np.zeros((1, 1), np.uint8), 1)


def test_actors_the_cluster_cannot_place_time_out_with_advice():
    with pytest.raises(TimeoutError, match="actor_options"):
        ShardedIndex(
            cofisearch.BinaryIndex(8), 2, actor_options={"num_cpus": 64}, start_timeout_s=1
        )


def test_per_shard_actor_options_place_each_shard():
    if "shard_slot" not in ray.cluster_resources():
        pytest.skip("Ray was started outside this module, without the test's resource")
    codes, queries = _binary_data(n=500, seed=11)
    options = [{"resources": {"shard_slot": 1}}, {"resources": {"shard_slot": 2}}]
    with ShardedIndex(cofisearch.BinaryIndex(16), 2, actor_options=options) as sharded:
        sharded.add(codes)
        # The resource view reaches the driver a little after the actors start.
        deadline = time.monotonic() + 10
        while ray.available_resources().get("shard_slot", 0) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ray.available_resources().get("shard_slot", 0) == 1
        _assert_same(sharded.search(queries, 10), _single(sharded, codes).search(queries, 10))


def test_shard_lost_error_survives_pickling():
    error = ShardLostError([2], 4, {2: "its Ray actor died"})
    again = pickle.loads(pickle.dumps(error))
    assert (again.shards, again.n_shards, str(again)) == ((2,), 4, str(error))


def test_a_closed_index_refuses_calls():
    sharded = ShardedIndex(cofisearch.BinaryIndex(8), 2)
    sharded.close()
    with pytest.raises(RuntimeError, match="closed"):
        sharded.search(np.zeros((1, 1), np.uint8), 1)


def test_pickling_points_to_save(binary_pair):
    with pytest.raises(TypeError, match="save"):
        pickle.dumps(binary_pair[0])


# ---- persistence --------------------------------------------------------------------


def test_save_and_load_round_trip(binary_pair, tmp_path):
    sharded, single, _, queries = binary_pair
    sharded.save(tmp_path / "idx")
    with load_sharded(tmp_path / "idx") as loaded:
        assert isinstance(loaded, ShardedIndex)
        assert (loaded.n_shards, loaded.shard_sizes, loaded.nbits) == (3, sharded.shard_sizes, 16)
        _assert_same(loaded.search(queries, 10), single.search(queries, 10))


def test_loaded_index_keeps_growing_with_the_next_ids(float_pair, tmp_path):
    sharded, _, vectors, queries = float_pair
    sharded.save(tmp_path)
    extra = np.random.default_rng(4).standard_normal((11, 24)).astype(np.float32)
    with ShardedIndex.load(tmp_path, mmap=True) as loaded:
        loaded.add(extra)
        expected = _single(loaded, np.concatenate([vectors, extra])).search(queries, 30)
        _assert_same(loaded.search(queries, 30), expected)


def test_manifest_records_layout_counts_and_next_id(binary_pair, tmp_path):
    sharded = binary_pair[0]
    sharded.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["kind"], manifest["nbits"], manifest["n_shards"]) == ("binary", 16, 3)
    assert (manifest["version"], manifest["ntotal"], manifest["next_id"]) == (2, 3001, 3001)
    assert [e["count"] for e in manifest["shards"]] == [1001, 1000, 1000]
    assert all(e["sequential"] for e in manifest["shards"])
    for entry in manifest["shards"]:
        assert (tmp_path / entry["files"]["codes"]).is_file()


def test_saving_again_replaces_the_previous_files(binary_pair, tmp_path):
    sharded = binary_pair[0]
    sharded.save(tmp_path)
    sharded.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".cfs") == sorted(
        e["files"]["codes"]
        for e in json.loads((tmp_path / "manifest.json").read_text())["shards"]
    )
    assert len(list(tmp_path.iterdir())) == 4


def test_loading_a_directory_without_manifest_raises(tmp_path):
    with pytest.raises(ValueError, match="manifest"):
        load_sharded(tmp_path)


def test_loading_with_a_missing_shard_file_names_the_shard(binary_pair, tmp_path):
    binary_pair[0].save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["shards"][2]["files"]["codes"]).unlink()
    with pytest.raises(ValueError, match="shard 2"):
        load_sharded(tmp_path)


def test_loading_a_manifest_whose_counts_disagree_raises(binary_pair, tmp_path):
    binary_pair[0].save(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["count"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="counts add up to 3002, not ntotal 3001"):
        load_sharded(tmp_path)
    manifest["ntotal"] += 1
    manifest["next_id"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="shard 0 .* holds 1001 items, the manifest says 1002"):
        load_sharded(tmp_path)


@pytest.mark.parametrize("kind", [[], {}, ["binary"]])
def test_a_manifest_whose_kind_is_not_a_string_is_refused(binary_pair, tmp_path, kind):
    # Found by the manifest fuzzer: a list or object kind raised "unhashable type".
    binary_pair[0].save(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["kind"] = kind
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="kind must be one of"):
        load_sharded(tmp_path)


def test_swapped_shard_files_are_refused_not_served(binary_pair, tmp_path):
    # Shards 1 and 2 of 3001 rows both hold 1000 codes: counts cannot tell them apart.
    binary_pair[0].save(tmp_path)
    entries = json.loads((tmp_path / "manifest.json").read_text())["shards"]
    files = [tmp_path / entry["files"]["codes"] for entry in entries]
    one, two = files[1].read_bytes(), files[2].read_bytes()
    files[1].write_bytes(two)
    files[2].write_bytes(one)
    with pytest.raises(ValueError, match="shard 1.*not the file this shard saved"):
        load_sharded(tmp_path)


def test_moved_manifest_entries_are_refused(tmp_path):
    # Same counts, files exchanged between entries: only the checksums tell.
    index = ShardedIndex(cofisearch.BinaryIndex(16), 2)
    codes, _ = _binary_data(n=400, seed=8)
    index.add(codes)
    index.save(tmp_path)
    index.close()
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    a, b = manifest["shards"]
    a["files"], b["files"] = b["files"], a["files"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not the file this shard saved"):
        load_sharded(tmp_path)


def test_a_manifest_without_checksums_still_loads(binary_pair, tmp_path):
    binary_pair[0].save(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["shards"]:
        del entry["checksums"]
    path.write_text(json.dumps(manifest))
    with load_sharded(tmp_path) as again:
        assert again.ntotal == binary_pair[0].ntotal


# ---- faults -------------------------------------------------------------------------


def _saved_index(tmp_path, n_shards=3):
    codes, queries = _binary_data(n=1200, seed=5)
    sharded = ShardedIndex(cofisearch.BinaryIndex(16), n_shards)
    sharded.add(codes)
    sharded.save(tmp_path)
    return sharded, _single(sharded, codes), codes, queries


def test_killed_saved_shard_is_restored_and_results_stay_identical(tmp_path):
    sharded, single, _, queries = _saved_index(tmp_path)
    with sharded:
        _assert_same(sharded.search(queries, 10), single.search(queries, 10))
        dead = sharded.actors[1]
        _kill(dead)
        _assert_same(sharded.search(queries, 10), single.search(queries, 10))
        assert sharded.actors[1] is not dead


def test_shard_killed_while_searches_run_never_changes_an_answer(tmp_path):
    sharded, single, _, queries = _saved_index(tmp_path)
    expected = single.search(queries, 10)
    answers, errors = [], []
    first_done = threading.Event()

    def searcher():
        try:
            for _ in range(15):
                answers.append(sharded.search(queries, 10))
                first_done.set()
        except Exception as exc:  # recorded, then asserted on the main thread
            errors.append(exc)
            first_done.set()

    with sharded:
        thread = threading.Thread(target=searcher)
        thread.start()
        first_done.wait(timeout=60)
        _kill(sharded.actors[2])
        thread.join(timeout=120)
    assert not errors
    assert len(answers) == 15
    for got in answers:
        _assert_same(got, expected)


def test_killed_shard_with_rows_added_since_its_save_is_reported_lost(tmp_path):
    sharded, _, codes, queries = _saved_index(tmp_path)
    with sharded:
        sharded.add(codes[:3])  # one row reaches each shard, so no save matches any more
        _kill(sharded.actors[0])
        with pytest.raises(
            ShardLostError, match="shard 0 of 3.*added or removed since its last save"
        ) as info:
            sharded.search(queries, 10)
        assert isinstance(info.value, RuntimeError)
        assert info.value.shards == (0,)


def test_killed_unsaved_shard_raises_shard_lost_and_keeps_raising():
    codes, queries = _binary_data(n=900, seed=6)
    with ShardedIndex(cofisearch.BinaryIndex(16), 3) as sharded:
        sharded.add(codes)
        _kill(sharded.actors[2])
        with pytest.raises(ShardLostError, match="shard 2 of 3.*never saved"):
            sharded.search(queries, 10)
        # The survivors are alive, but an answer from them alone would be wrong.
        with pytest.raises(ShardLostError, match="shard 2"):
            sharded.search(queries, 10)
        with pytest.raises(ShardLostError):
            sharded.add(codes[:1])


def test_shard_restarted_empty_by_ray_is_caught_by_its_row_count():
    codes, queries = _binary_data(n=900, seed=7)
    with ShardedIndex(cofisearch.BinaryIndex(16), 2, actor_options={"max_restarts": 1}) as sharded:
        sharded.add(codes)
        actor = sharded.actors[1]
        ray.kill(actor, no_restart=False)
        # Wait for Ray's restart: the actor answers again, with the constructor's state.
        # The kill is asynchronous, so an answer of 450 rows still comes from the old actor.
        for _ in range(200):
            try:
                rows, _ = ray.get(actor.count.remote(), timeout=30)
                if rows == 0:
                    break
            except ray.exceptions.RayActorError:
                pass
            time.sleep(0.05)
        # Ray may still be restarting the actor when the search reaches it: either way the
        # shard is reported lost, never answered for with an empty shard.
        with pytest.raises(ShardLostError, match="shard 1 of 2.*(reported 0 items where 450|died)"):
            sharded.search(queries, 10)


def test_shard_killed_before_an_add_is_restored_and_receives_its_rows(tmp_path):
    sharded, _, codes, queries = _saved_index(tmp_path)
    extra, _ = _binary_data(n=10, seed=8)
    with sharded:
        _kill(sharded.actors[0])
        sharded.add(extra)
        expected = _single(sharded, np.concatenate([codes, extra])).search(queries, 10)
        _assert_same(sharded.search(queries, 10), expected)


# ---- cascade ------------------------------------------------------------------------


def _cascade_data(n=2400, dim=32, nbits=16, nq=30, seed=9):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors[1::9] = vectors[0]  # tied scores across shards
    projection = rng.standard_normal((dim, nbits))
    codes = cofisearch.pack_bits(vectors @ projection > 0)  # 16 bits: many Hamming ties
    queries = vectors[:nq] + 0.3 * rng.standard_normal((nq, dim)).astype(np.float32)
    query_codes = cofisearch.pack_bits(queries @ projection > 0)
    coarse = cofisearch.BinaryIndex(nbits)
    coarse.add(codes)
    fine = cofisearch.FloatIndex(dim)
    fine.add(vectors)
    return coarse, fine, query_codes, queries


@pytest.fixture(scope="module")
def cascade_pair():
    coarse, fine, qc, qv = _cascade_data()
    sharded = ShardedCascade(
        cofisearch.BinaryIndex(coarse.nbits), cofisearch.FloatIndex(fine.dim), 3, n_candidates=40
    )
    _add_in_batches_pairs(sharded, np.asarray(coarse.codes), np.asarray(fine.vectors))
    yield sharded, coarse, fine, qc, qv
    sharded.close()


def _add_in_batches_pairs(sharded, codes, vectors):
    for lo, hi in [(0, 2), (2, 1001), (1001, codes.shape[0])]:
        sharded.add(codes[lo:hi], vectors[lo:hi])


def test_global_screen_equals_the_single_cascade_at_any_depth(cascade_pair):
    sharded, coarse, fine, qc, qv = cascade_pair
    sharded.screen = "global"
    try:
        for n_candidates in (7, 40, 300):
            sharded.n_candidates = sharded.n_rerank = n_candidates
            got = sharded.search(qc, qv, 10)
            expected = cofisearch.Cascade(coarse, fine, n_candidates).search(qc, qv, 10)
            _assert_same(got, expected)
            np.testing.assert_array_equal(got.candidates, expected.candidates)
    finally:
        sharded.screen, sharded.n_candidates, sharded.n_rerank = "per_shard", 40, 40


def test_per_shard_screen_at_full_depth_equals_the_single_cascade(cascade_pair):
    sharded, coarse, fine, qc, qv = cascade_pair
    sharded.n_candidates = sharded.n_rerank = max(sharded.shard_sizes)
    try:
        got = sharded.search(qc, qv, 10)
    finally:
        sharded.n_candidates = sharded.n_rerank = 40
    _assert_same(got, cofisearch.Cascade(coarse, fine, coarse.ntotal).search(qc, qv, 10))


def test_per_shard_screen_scores_every_rank_at_least_as_well(cascade_pair):
    sharded, coarse, fine, qc, qv = cascade_pair
    got = sharded.search(qc, qv, 10)
    single = cofisearch.Cascade(coarse, fine, 40).search(qc, qv, 10)
    assert (got.distances >= single.distances).all()
    assert (got.distances > single.distances).any()  # the wider screen does find more
    # Scores are the engine's own for the returned ids.
    exact = np.einsum("qd,qkd->qk", qv, fine.vectors[got.ids])
    np.testing.assert_allclose(got.distances, exact, rtol=1e-5, atol=1e-5)


def test_per_shard_candidates_start_with_the_global_screen(cascade_pair):
    sharded, coarse, fine, qc, qv = cascade_pair
    got = sharded.search(qc, qv, 10)
    single = cofisearch.Cascade(coarse, fine, 40).search(qc, qv, 10)
    assert got.candidates.shape == (qc.shape[0], 3 * 40)
    np.testing.assert_array_equal(got.candidates[:, :40], single.candidates)
    assert set(got.timings) == {"coarse", "fine", "rerank", "total"}


def test_one_shard_per_shard_screen_equals_the_single_cascade():
    coarse, fine, qc, qv = _cascade_data(n=800, seed=10)
    with ShardedCascade(
        cofisearch.BinaryIndex(coarse.nbits), cofisearch.FloatIndex(fine.dim), 1, n_candidates=25
    ) as sharded:
        sharded.add(coarse.codes, fine.vectors)
        got = sharded.search(qc, qv, 10)
    _assert_same(got, cofisearch.Cascade(coarse, fine, 25).search(qc, qv, 10))


def test_reranker_runs_on_global_ids_like_the_single_cascade(cascade_pair):
    sharded, coarse, fine, qc, qv = cascade_pair

    def prefer_large_ids(queries, ids):
        return ids.astype(np.float64)

    sharded.screen, sharded.reranker, sharded.n_rerank = "global", prefer_large_ids, 15
    try:
        got = sharded.search(qc, qv, 5)
    finally:
        sharded.screen, sharded.reranker, sharded.n_rerank = "per_shard", None, 40
    single = cofisearch.Cascade(coarse, fine, 40, reranker=prefer_large_ids, n_rerank=15)
    _assert_same(got, single.search(qc, qv, 5))


def test_per_shard_reranker_at_full_depth_equals_the_single_cascade(cascade_pair):
    sharded, coarse, fine, qc, qv = cascade_pair

    def prefer_large_ids(queries, ids):
        return ids.astype(np.float64)

    sharded.n_candidates = max(sharded.shard_sizes)
    sharded.reranker, sharded.n_rerank = prefer_large_ids, 15
    try:
        got = sharded.search(qc, qv, 5)
    finally:
        sharded.reranker, sharded.n_candidates, sharded.n_rerank = None, 40, 40
    single = cofisearch.Cascade(
        coarse, fine, coarse.ntotal, reranker=prefer_large_ids, n_rerank=15
    ).search(qc, qv, 5)
    _assert_same(got, single)
    assert isinstance(got, cofisearch.CascadeResult) and got.timings["rerank"] > 0


def test_cascade_add_needs_as_many_codes_as_vectors(cascade_pair):
    sharded = cascade_pair[0]
    with pytest.raises(ValueError, match="same items: got 2 and 3 rows"):
        sharded.add(np.zeros((2, 2), np.uint8), np.zeros((3, 32), np.float32))


def test_cascade_save_and_load_keep_the_stages(cascade_pair, tmp_path):
    sharded, _, _, qc, qv = cascade_pair
    sharded.save(tmp_path)
    with load_sharded(tmp_path) as loaded:
        assert isinstance(loaded, ShardedCascade)
        assert (loaded.n_candidates, loaded.screen) == (40, "per_shard")
        _assert_same(loaded.search(qc, qv, 10), sharded.search(qc, qv, 10))
    with pytest.raises(ValueError, match="ShardedCascade.load"):
        ShardedIndex.load(tmp_path)

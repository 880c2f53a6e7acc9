import sys
import threading

import numpy as np
import pytest

import cofisearch


def _run_in_threads(fn, n):
    results, errors = [None] * n, []

    def work(slot):
        try:
            results[slot] = fn(slot)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_four_python_threads_share_one_binary_index():
    rng = np.random.default_rng(0)
    index = cofisearch.BinaryIndex(256)
    index.add(rng.integers(0, 256, (50_000, 32), dtype=np.uint8))
    queries = [rng.integers(0, 256, (30, 32), dtype=np.uint8) for _ in range(4)]
    expected = [index.search(q, 10, num_threads=1) for q in queries]
    for _ in range(3):
        got = _run_in_threads(lambda t: index.search(queries[t], 10, num_threads=2), 4)
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(e.ids, g.ids)
            np.testing.assert_array_equal(e.distances, g.distances)


def test_four_python_threads_share_one_float_index():
    rng = np.random.default_rng(1)
    index = cofisearch.FloatIndex(64)
    index.add(rng.standard_normal((20_000, 64)))
    queries = [rng.standard_normal(((t + 1) * 3, 64)).astype(np.float32) for t in range(4)]
    expected = [index.search(q, 10, num_threads=1) for q in queries]
    got = _run_in_threads(lambda t: index.search(queries[t], 10), 4)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e.ids, g.ids)
        np.testing.assert_array_equal(e.distances, g.distances)


def test_search_releases_the_gil():
    # While a long native scan runs in one thread, another Python thread keeps running.
    rng = np.random.default_rng(2)
    db = rng.integers(0, 256, (2_000_000, 16), dtype=np.uint8)
    queries = rng.integers(0, 256, (512, 16), dtype=np.uint8)
    done = threading.Event()
    ticks = []

    def scan():
        cofisearch.hamming_knn(db, queries, 5, num_threads=1)
        done.set()

    t = threading.Thread(target=scan)
    t.start()
    while not done.is_set():
        ticks.append(1)
        done.wait(0.001)
    t.join()
    assert len(ticks) > 5


def _search_while_adding(index, rows, batch, searcher, n_searchers):
    """Adds ``rows`` batch by batch (the first batch before any search) while
    ``n_searchers`` threads call ``searcher(done)`` until it returns; ``done`` is set
    once the last batch is in. Returns the searchers' results."""
    index.add(rows[:batch])
    done = threading.Event()

    def adder():
        for start in range(batch, rows.shape[0], batch):
            index.add(rows[start : start + batch])
        done.set()

    t = threading.Thread(target=adder)
    t.start()
    try:
        return _run_in_threads(lambda _: searcher(done), n_searchers)
    finally:
        t.join()


@pytest.fixture
def frequent_switches():
    """Python threads switch every microsecond instead of every 5 ms, so that races
    between adds and searches show within a test's few seconds."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("frequent_switches")
def test_concurrent_adds_lose_nothing_and_save_what_was_acknowledged(tmp_path):
    # Every row names its thread and sequence number, so a lost, duplicated or torn row
    # shows. Adds are serialised: each thread's rows keep their order.
    # Batches large enough that NumPy releases the GIL while copying them, which is
    # where unserialised adds used to tear the buffer.
    index = cofisearch.BinaryIndex(1024)
    per_thread, batch = 60, 500

    def adder(t):
        for s in range(per_thread):
            rows = np.zeros((batch, 128), dtype=np.uint8)
            rows[:, 0] = t
            rows[:, 1:3] = np.frombuffer(np.uint16(s).tobytes(), dtype=np.uint8)
            rows[:, 3:5] = np.arange(batch, dtype=np.uint16)[:, None].view(np.uint8)
            index.add(rows)

    _run_in_threads(adder, 4)
    assert index.ntotal == 4 * per_thread * batch
    codes = index.codes
    for t in range(4):
        mine = codes[codes[:, 0] == t]
        seq = mine[:, 1:3].copy().view(np.uint16)[:, 0]
        np.testing.assert_array_equal(seq, np.repeat(np.arange(per_thread), batch))
        pos = mine[:, 3:5].copy().view(np.uint16)[:, 0]
        np.testing.assert_array_equal(pos, np.tile(np.arange(batch), per_thread))
    index.save(tmp_path / "codes.cofi")
    np.testing.assert_array_equal(cofisearch.load_index(tmp_path / "codes.cofi").codes, codes)


@pytest.mark.usefixtures("frequent_switches")
def test_a_search_sees_the_index_before_or_after_an_add_never_between():
    # With k above every size the index reaches, a search returns every row it saw: a
    # whole number of batches, ids 0 .. m-1, and the exact distances of those rows.
    rng = np.random.default_rng(5)
    batch, batches = 1000, 40
    rows = rng.integers(0, 256, (batch * batches, 128), dtype=np.uint8)
    query = rows[:1]
    index = cofisearch.BinaryIndex(1024)

    def searcher(done):
        seen = 0
        while not done.is_set() or seen < batch * batches:
            d, i = index.search(query, batch * batches, num_threads=1)
            valid = i[0] >= 0
            m = int(valid.sum())
            assert m % batch == 0 and m >= seen
            np.testing.assert_array_equal(np.sort(i[0, valid]), np.arange(m))
            truth = np.unpackbits(rows[i[0, valid]] ^ query, axis=1).sum(axis=1)
            np.testing.assert_array_equal(d[0, valid], truth)
            seen = m
        return seen

    seen = _search_while_adding(index, rows, batch, searcher, 3)
    assert seen == [batch * batches] * 3


@pytest.mark.usefixtures("frequent_switches")
def test_float_searches_during_adds_use_a_norm_bound_that_covers_their_rows():
    # Each batch is longer than every earlier one, so a stale norm bound would be too
    # small for the newest rows; every search must still equal NumPy over what it saw.
    rng = np.random.default_rng(6)
    batch, batches, dim = 25, 80, 48
    base = rng.standard_normal((batch * batches, dim)).astype(np.float32)
    scale = np.repeat(np.float32(1.1) ** np.arange(batches, dtype=np.float32), batch)
    vectors = base * scale[:, None]
    query = rng.standard_normal((1, dim)).astype(np.float32)
    index = cofisearch.FloatIndex(dim)

    def searcher(done):
        checks = 0
        while not done.is_set() or checks == 0:
            before = index.ntotal
            s, i = index.search(query, 5, num_threads=1)
            after = index.ntotal
            # The result is NumPy's top-5 over one of the states the search could see.
            states = [
                np.argsort(-(vectors[:m] @ query[0]), kind="stable")[:5]
                for m in range(before, after + 1, batch)
            ]
            assert any(np.array_equal(i[0], ids) for ids in states)
            checks += 1
        return checks

    _search_while_adding(index, vectors, batch, searcher, 2)

import threading

import numpy as np

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

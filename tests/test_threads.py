"""The native thread pool: shared by concurrent callers, fork-safe, quiet at exit, and
exact at every split of the work (query chunks, row parts) that it runs."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cofisearch
from conftest import hamming_reference

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cofisearch.__file__)))


def _python(code, timeout=120):
    """Runs ``code`` in a fresh interpreter that imports this same package."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False, capture_output=True, text=True, env=env, timeout=timeout,
    )


def _codes(rng, n, nbytes=8):
    return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)


def _search_in_child(db, queries, k, out):
    d, i = cofisearch.hamming_knn(db, queries, k, num_threads=2)
    out.put((d, i, len(os.listdir("/proc/self/task"))))


def _fork_and_search(db, queries, k):
    """Searches with two threads in a child forked from this process; the child's answer
    and how many threads it then had, or a failure if it hangs, crashes or answers
    nothing."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_search_in_child, args=(db, queries, k, out))
    child.start()
    try:
        d, i, threads = out.get(timeout=60)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    return d, i, threads


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_searches_on_threads_after_the_parent_did():
    # The parent's pool is running (its workers exist only in the parent); the child
    # must start its own rather than count on workers that were not forked (the caller
    # running every part itself would answer, on one thread).
    rng = np.random.default_rng(0)
    db = _codes(rng, 600_000, 32)
    queries = _codes(rng, 3, 32)  # a few queries: the threads split the rows
    batch = _codes(rng, 64, 32)  # many: the threads split the queries
    want = hamming_reference(db, queries, 10)
    for q in (queries, batch):
        cofisearch.hamming_knn(db, q, 10, num_threads=2)
    for _ in range(2):  # a second child, too: the parent keeps its pool
        d, i, threads = _fork_and_search(db, queries, 10)
        assert threads >= 2
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(i, want[1])


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_fork_while_other_threads_search_does_not_hang_the_child():
    # fork() can catch the pool's lock held and jobs half done by other threads.
    rng = np.random.default_rng(1)
    db = _codes(rng, 300_000)
    queries = _codes(rng, 2)
    want = hamming_reference(db, queries, 5)
    stop = threading.Event()
    errors = []

    def keep_searching():
        try:
            while not stop.is_set():
                cofisearch.hamming_knn(db, queries, 5, num_threads=2)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    searchers = [threading.Thread(target=keep_searching) for _ in range(2)]
    for t in searchers:
        t.start()
    try:
        for _ in range(4):
            d, i, _ = _fork_and_search(db, queries, 5)
            np.testing.assert_array_equal(d, want[0])
            np.testing.assert_array_equal(i, want[1])
    finally:
        stop.set()
        for t in searchers:
            t.join()
    assert not errors, errors


def test_concurrent_callers_share_the_pool_and_get_their_own_results():
    # Jobs of several callers interleave on the same workers; each caller also runs a
    # share itself, so no caller waits for another's job.
    # 32 MB of codes: a lone query is split by rows too.
    rng = np.random.default_rng(2)
    db = _codes(rng, 1_000_000, 32)
    batches = [_codes(rng, nq, 32) for nq in (1, 3, 40, 100, 2, 17)]
    want = [cofisearch.hamming_knn(db, q, 12, num_threads=1) for q in batches]
    errors = []

    def search(slot):
        try:
            for _ in range(4):
                d, i = cofisearch.hamming_knn(db, batches[slot], 12, num_threads=3)
                np.testing.assert_array_equal(d, want[slot].distances)
                np.testing.assert_array_equal(i, want[slot].ids)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(s,)) for s in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_batches_cut_into_many_query_chunks_match_the_reference(simd, threads):
    # k = 600 makes a chunk hold few queries (its selectors are large), so a batch of 150
    # runs as many chunks, claimed by threads as they come free; 1,000-bit codes take the
    # heap selector, 64-bit codes the counting one.
    rng = np.random.default_rng(3)
    for nbytes in (8, 128):
        db = _codes(rng, 3_000, nbytes)
        db[::5] = db[1]  # ties across chunks and parts
        queries = np.concatenate([db[1:2], _codes(rng, 149, nbytes)])
        d, i = cofisearch.hamming_knn(db, queries, 600, num_threads=threads)
        want = hamming_reference(db, queries, 600)
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(i, want[1])


@pytest.mark.parametrize("k", [1, 7, 300])
def test_row_parts_merge_exactly(simd, k):
    # A lone query over enough rows (32 MB) is cut into parts of rows, up to four per
    # thread at small k; ties straddle every part.
    rng = np.random.default_rng(4)
    db = _codes(rng, 1_000_000, 32)
    db[::3] = db[0]
    query = db[:1].copy()
    query[0, 0] ^= 1
    want = hamming_reference(db, query, k)
    for threads in (2, 3, 8):
        d, i = cofisearch.hamming_knn(db, query, k, num_threads=threads)
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(i, want[1])


def test_float_and_rerank_chunks_match_one_thread():
    rng = np.random.default_rng(5)
    index = cofisearch.FloatIndex(48)
    index.add(rng.standard_normal((30_000, 48)))
    queries = rng.standard_normal((301, 48)).astype(np.float32)
    one = index.search(queries, 20, num_threads=1)
    cand = rng.integers(-1, 30_000, (301, 500))
    rerank_one = index.search(queries, 20, candidates=cand, num_threads=1)
    for threads in (2, 7):
        got = index.search(queries, 20, num_threads=threads)
        np.testing.assert_array_equal(got.ids, one.ids)
        np.testing.assert_array_equal(got.distances, one.distances)
        got = index.search(queries, 20, candidates=cand, num_threads=threads)
        np.testing.assert_array_equal(got.ids, rerank_one.ids)
        np.testing.assert_array_equal(got.distances, rerank_one.distances)


def test_interpreter_exits_cleanly_with_the_pool_running():
    # The pool is never torn down: exit must neither hang on its workers (asleep, or
    # still spinning after the last search) nor crash in a destructor.
    for pause in ("", "time.sleep(0.05)"):
        out = _python(
            f"""
            import time
            import numpy as np
            import cofisearch
            rng = np.random.default_rng(0)
            db = rng.integers(0, 256, (1_000_000, 32), dtype=np.uint8)
            q = rng.integers(0, 256, (2, 32), dtype=np.uint8)
            cofisearch.hamming_knn(db, q, 10, num_threads=4)
            {pause}
            print("ok")
            """,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ok"


def test_interpreter_exits_cleanly_while_daemon_threads_search():
    # Searches that end while the interpreter shuts down: CPython ends such threads with
    # pthread_exit as they take the GIL back. That used to abort the process ("terminate
    # called without an active exception") or crash it, nearly every time.
    for entry in ("hamming", "dot", "rerank", "ivf"):
        out = _python(
            f"""
            import threading, time
            import numpy as np
            import cofisearch
            rng = np.random.default_rng(0)
            codes = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
            vecs = rng.standard_normal((5_000, 64)).astype(np.float32)
            floats = cofisearch.FloatIndex(64)
            floats.add(vecs)
            ivf = cofisearch.IVFBinaryIndex(256, 16)
            ivf.train(codes)
            ivf.add(codes)
            cand = rng.integers(0, 5_000, (20, 300))
            searches = {{
                "hamming": lambda t: cofisearch.hamming_knn(codes, codes[:20], 10, num_threads=t),
                "dot": lambda t: floats.search(vecs[:20], 10, num_threads=t),
                "rerank": lambda t: floats.search(vecs[:20], 10, candidates=cand, num_threads=t),
                "ivf": lambda t: ivf.search(codes[:20], 10, nprobe=4, num_threads=t),
            }}

            def work(t):
                while True:
                    searches["{entry}"](t)

            for t in (1, 2, 1, 2):
                threading.Thread(target=work, args=(t,), daemon=True).start()
            time.sleep(0.3)
            print("ok")
            """,
            timeout=60,
        )
        assert out.returncode == 0, (entry, out.returncode, out.stderr[-2000:])
        assert out.stdout.strip() == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics")
def test_allocation_failure_inside_a_threaded_search_raises_and_the_pool_survives():
    # Under an address-space limit, the selectors of a search for k = n (which need more
    # than its output) cannot grow in the parts the threads run; a part's std::bad_alloc
    # must reach the caller as MemoryError after every part finished, and the next search
    # must work.
    out = _python(
        """
        import resource
        import numpy as np
        import cofisearch
        rng = np.random.default_rng(0)
        n = 1_000_000
        db = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        q = rng.integers(0, 256, (1, 32), dtype=np.uint8)
        small = cofisearch.hamming_knn(db, q, 5, num_threads=2)
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.RLIM_INFINITY))
        try:
            cofisearch._core.hamming_search(db, n, q, n, 2)
        except MemoryError:
            print("MemoryError")
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        again = cofisearch.hamming_knn(db, q, 5, num_threads=2)
        assert (again.ids == small.ids).all() and (again.distances == small.distances).all()
        print("ok")
        """,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["MemoryError", "ok"]

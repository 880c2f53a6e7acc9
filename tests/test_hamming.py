import os

import numpy as np
import pytest

import cofisearch
from conftest import block_rows, hamming_path_forced, hamming_reference

# 1032 bits: the first width past the counting selector (a heap from there on). 24, 192,
# 384 and 640 bits: widths between the powers of two, each with its own kernel loop.
NBITS = [8, 24, 64, 72, 128, 192, 256, 384, 520, 640, 1024, 1032]


def _sizes(nbytes, nq):
    """Tails, and row counts on either side of the block edges the driver reports: the
    first edge, then the start and the end of the first full-size block (blocks double
    from the first one up to the full size)."""
    full = block_rows("hamming", nbytes, nq)
    blocks = cofisearch._core._scan_blocks("hamming", nbytes, nq, 4 * full)
    first, start = blocks[0], sum(blocks[: blocks.index(full)])
    # The driver's own cut: one row past each edge is a block of one row.
    assert cofisearch._core._scan_blocks("hamming", nbytes, nq, first + 1)[-2:] == [first, 1]
    assert cofisearch._core._scan_blocks("hamming", nbytes, nq, start + 1)[-1] == 1
    assert cofisearch._core._scan_blocks("hamming", nbytes, nq, start + full + 1)[-2:] == [full, 1]
    edges = (first, start, start + full)
    return sorted({1, 7, 8, 9} | {e + d for e in edges for d in (-1, 0, 1)})


@pytest.mark.parametrize("nbits", NBITS)
def test_matches_reference_at_tails_and_block_edges(simd, hamming_path, nbits):
    rng = np.random.default_rng(nbits)
    nbytes = nbits // 8
    queries = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
    for n in _sizes(nbytes, len(queries)):
        db = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        db[n // 2 :: 61] = db[0]  # ties on both sides of the edges
        index = cofisearch.BinaryIndex(nbits)
        index.add(db)
        for k in (1, 10, n, n + 3):
            # One thread: the edges above are those of a scan of all n rows.
            d, i = index.search(queries, k, num_threads=1)
            rd, ri = hamming_reference(db, queries, k)
            np.testing.assert_array_equal(d, rd, err_msg=f"n={n} k={k}")
            np.testing.assert_array_equal(i, ri, err_msg=f"n={n} k={k}")


@pytest.mark.parametrize("nbits", NBITS)
def test_ties_break_by_smaller_id(simd, hamming_path, nbits):
    rng = np.random.default_rng(1 + nbits)
    nbytes = nbits // 8
    pool = rng.integers(0, 256, (3, nbytes), dtype=np.uint8)
    db = pool[rng.integers(0, 3, 700)]
    queries = np.concatenate([pool, rng.integers(0, 256, (14, nbytes), dtype=np.uint8)])
    index = cofisearch.BinaryIndex(nbits)
    index.add(db)
    for k in (1, 10, 300, 700):
        d, i = index.search(queries, k)
        rd, ri = hamming_reference(db, queries, k)
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("nq", [1, 3, 17, 40])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_and_query_tiles_do_not_change_results(simd, nq, threads):
    # Large enough (9.6 MB of codes) that a few queries make the threads split the
    # database; more queries split the queries instead.
    rng = np.random.default_rng(nq)
    db = rng.integers(0, 256, (1_200_000, 8), dtype=np.uint8)
    db[::7] = db[0]  # ties across the thread boundaries
    queries = rng.integers(0, 256, (nq, 8), dtype=np.uint8)
    queries[0] = db[0]
    d, i = cofisearch.hamming_knn(db, queries, 25, num_threads=threads)
    want_d, want_i = hamming_reference(db, queries, 25)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(i, want_i)


@pytest.mark.parametrize("nq", [1, 5, 40])
def test_packed_widths_split_over_threads_match(simd, hamming_path, nq):
    # 384-bit codes, 8.6 MB: few queries split the database over the threads, a
    # batch splits the queries; each thread packs its own blocks.
    rng = np.random.default_rng(100 + nq)
    db = rng.integers(0, 256, (180_000, 48), dtype=np.uint8)
    db[::5] = db[1]
    queries = np.concatenate([db[1:2], rng.integers(0, 256, (nq - 1, 48), dtype=np.uint8)])
    want = hamming_reference(db, queries, 12)
    for threads in (1, 2):
        d, i = cofisearch.hamming_knn(db, queries, 12, num_threads=threads)
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(i, want[1])


def test_path_choice_by_batch_and_width():
    # What the driver packs is a per-level policy (cpp/simd.cpp); a forced path is
    # reported for every batch and width, and a bad name is refused without effect.
    assert cofisearch._core._hamming_path(1000, 8) == "stream"
    if cofisearch.simd_level() == "avx512":
        assert cofisearch._core._hamming_path(1, 48) == "stream"
        assert cofisearch._core._hamming_path(1000, 48) == "panel"
        # Many queries over a small database: rows of byte distances, for codes whose
        # distances fit a byte in practice.
        assert cofisearch._core._hamming_path(1000, 8, 5000) == "dense"
        assert cofisearch._core._hamming_path(1000, 32, 5000) == "dense"
        assert cofisearch._core._hamming_path(8, 8, 5000) == "stream"
        assert cofisearch._core._hamming_path(1000, 8, 1_000_000) == "stream"
        assert cofisearch._core._hamming_path(1000, 48, 5000) == "panel"
    with pytest.raises(ValueError, match="path must be"):
        cofisearch._core._force_hamming_path("fastest")
    assert cofisearch._core._hamming_path(1000, 8) == "stream"


def test_forced_path_is_reported(hamming_path):
    assert cofisearch._core._hamming_path(1, 8) == hamming_path
    assert cofisearch._core._hamming_path(1000, 48) == hamming_path


def test_one_dimensional_query_is_a_batch_of_one():
    rng = np.random.default_rng(3)
    db = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    index = cofisearch.BinaryIndex(128)
    index.add(db)
    d1, i1 = index.search(db[4], 5)
    d2, i2 = index.search(db[4:5], 5)
    assert d1.shape == (1, 5)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(i1, i2)


def test_result_types_and_padding():
    index = cofisearch.BinaryIndex(64)
    index.add(np.zeros((2, 8), dtype=np.uint8))
    result = index.search(np.zeros((1, 8), dtype=np.uint8), 4)
    assert isinstance(result, cofisearch.SearchResult)
    assert result.distances.dtype == np.int32 and result.ids.dtype == np.int64
    assert result.ids.tolist() == [[0, 1, -1, -1]]
    assert result.distances[0, 2:].tolist() == [cofisearch.HAMMING_SENTINEL] * 2


def test_incremental_adds_keep_global_ids():
    rng = np.random.default_rng(5)
    db = rng.integers(0, 256, (1000, 8), dtype=np.uint8)
    index = cofisearch.BinaryIndex(64)
    for start in range(0, 1000, 137):
        index.add(db[start : start + 137])
    assert index.ntotal == 1000 and len(index) == 1000
    np.testing.assert_array_equal(index.codes, db)
    d, i = index.search(db[:9], 10)
    rd, ri = hamming_reference(db, db[:9], 10)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


def test_index_keeps_its_own_copy_of_added_codes():
    db = np.zeros((4, 8), dtype=np.uint8)
    index = cofisearch.BinaryIndex(64)
    index.add(db)
    db[:] = 255
    assert index.search(np.zeros(8, dtype=np.uint8), 1).distances[0, 0] == 0
    with pytest.raises(ValueError):
        index.codes[0, 0] = 1


def test_non_contiguous_inputs_are_accepted():
    rng = np.random.default_rng(6)
    wide = rng.integers(0, 256, (200, 16), dtype=np.uint8)
    db = wide[:, ::2]
    queries = wide[:5, 1::2]
    d, i = cofisearch.hamming_knn(db, queries, 7)
    rd, ri = hamming_reference(np.ascontiguousarray(db), np.ascontiguousarray(queries), 7)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


def test_very_wide_codes_use_the_heap_selector_and_match(simd, hamming_path):
    # Beyond 1,024 bits the driver keeps a heap instead of a counter per distance.
    rng = np.random.default_rng(12)
    nbytes = 65536 // 8 + 1
    db = rng.integers(0, 256, (40, nbytes), dtype=np.uint8)
    db[20:] = db[0]
    queries = rng.integers(0, 256, (3, nbytes), dtype=np.uint8)
    d, i = cofisearch.hamming_knn(db, queries, 25)
    rd, ri = hamming_reference(db, queries, 25)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("threads", [1, 2])
def test_large_k_with_sampled_ceiling_matches_reference(simd, hamming_path, threads):
    # k = 100 on 20,000 rows makes the driver estimate a ceiling from a sample (a 4%
    # sample of evenly spaced 64-row chunks).
    rng = np.random.default_rng(13)
    db = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    db[rng.integers(0, 20_000, 3_000)] = db[7]  # heavy ties
    queries = np.concatenate([db[7:8], rng.integers(0, 256, (20, 8), dtype=np.uint8)])
    d, i = cofisearch.hamming_knn(db, queries, 100, num_threads=threads)
    rd, ri = hamming_reference(db, queries, 100)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


def test_misleading_sample_falls_back_to_a_full_search(simd, hamming_path):
    # The first sampled chunk (rows 0-63) equals the query, so the sample promises that
    # distance 0 is enough; only 64 such rows exist, fewer than k = 100. (A batch of 4
    # queries, since single queries at this k are not sampled.)
    rng = np.random.default_rng(14)
    db = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    query = np.repeat(rng.integers(0, 256, (1, 8), dtype=np.uint8), 4, axis=0)
    db[0:64] = query[0]
    d, i = cofisearch.hamming_knn(db, query, 100, num_threads=1)
    rd, ri = hamming_reference(db, query, 100)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_of_byte_distances_fall_back_past_a_byte(simd, threads):
    # Rows of byte distances saturate at 255: a query whose k-th distance is 255 or more
    # (here: 320-bit codes, queries far from every row) is searched again exactly, in
    # the same tiles as queries whose k-th distance is small. Their order also makes the
    # k-th distance jump from query to query, away from the guess the selection starts at.
    rng = np.random.default_rng(21)
    n, nbytes = 1_000 + 13, 40
    # Rows with about 304 of their 320 bits set; far queries with at most 16.
    db = np.packbits(rng.random((n, 8 * nbytes)) >= 0.05, axis=1)
    near = db[rng.integers(0, n, 20)] ^ np.packbits(rng.random((20, 8 * nbytes)) < 0.02, axis=1)
    far = np.zeros((20, nbytes), dtype=np.uint8)
    far[:, :2] = rng.integers(0, 256, (20, 2), dtype=np.uint8)
    queries = np.empty((40, nbytes), dtype=np.uint8)
    queries[0::2], queries[1::2] = near, far
    for k in (1, 10, 400, n):
        with hamming_path_forced("dense"):
            d, i = cofisearch.hamming_knn(db, queries, k, num_threads=threads)
        rd, ri = hamming_reference(db, queries, k)
        assert (rd[1::2, min(k, n) - 1] >= 255).all() or k == 1
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_of_byte_distances_break_ties_across_blocks(simd, threads):
    # Few distinct codes: every distance is tied hundreds of times, within and across
    # blocks of 64 codes (whose bytes are stored transposed), and the k-th distance's
    # group is cut by id.
    rng = np.random.default_rng(22)
    palette = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    db = palette[rng.integers(0, 5, 777)]
    queries = np.concatenate([palette, rng.integers(0, 256, (30, 8), dtype=np.uint8)])
    for k in (1, 5, 63, 64, 65, 300, 777, 800):
        with hamming_path_forced("dense"):
            d, i = cofisearch.hamming_knn(db, queries, k, num_threads=threads)
        rd, ri = hamming_reference(db, queries, k)
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(i, ri)


@pytest.mark.parametrize("nbytes", [*range(1, 18), 24, 31, 32, 33, 63, 64, 128])
def test_rows_of_byte_distances_at_every_width_and_tail(simd, nbytes):
    # Each level lays the database out for its own row kernel (AVX-512: one plane per
    # byte of the codes, 64 codes a plane); every width, database sizes around the
    # 64-code blocks, 21 queries (a tile of 16 and a tail, groups of 4 and a tail), and
    # k on both sides of the selection's one-pass limit. Rows repeat, so distances tie
    # within and across blocks; the queries include a stored code and its complement.
    rng = np.random.default_rng(300 + nbytes)
    for n in (1, 63, 64, 65, 130):
        db = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        db[n // 3 :: 5] = db[0]
        queries = rng.integers(0, 256, (21, nbytes), dtype=np.uint8)
        queries[0], queries[1] = db[-1], ~db[-1]
        for k in (1, 10, 24, 25, n):
            with hamming_path_forced("dense"):
                d, i = cofisearch.hamming_knn(db, queries, k, num_threads=1)
            rd, ri = hamming_reference(db, queries, k)
            np.testing.assert_array_equal(d, rd, err_msg=f"n={n} k={k}")
            np.testing.assert_array_equal(i, ri, err_msg=f"n={n} k={k}")


def _peak_rss_growth(fn):
    """Bytes by which the process's peak resident set grew while fn ran (Linux)."""

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak to the current resident set
    base = hwm()
    fn()
    return hwm() - base


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_search_memory_does_not_grow_with_the_database():
    # The bound: O(threads x queries x k) beyond inputs and outputs. 16M codes
    # (128 MB) at k = 40 once sampled 1/8 of them into a 16 MB copy.
    rng = np.random.default_rng(21)
    db = rng.integers(0, 256, (16_000_000, 8), dtype=np.uint8)
    index = cofisearch.BinaryIndex(64)
    index.add(db)
    queries = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    index.search(queries, 40, num_threads=1)  # warm-up: first-call allocations
    grew = _peak_rss_growth(lambda: index.search(queries, 40, num_threads=2))
    assert grew < 6 << 20, f"peak memory grew by {grew / 2**20:.1f} MiB"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_batch_selection_memory_is_bounded_beside_the_output():
    # 4,000 queries at k = 1,000 return 48 MB; selecting them all at once held about
    # 33 bytes per query x k more (130 MB). The threads now select a bounded chunk of
    # queries at a time.
    rng = np.random.default_rng(22)
    db = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (4_000, 8), dtype=np.uint8)
    index = cofisearch.BinaryIndex(64)
    index.add(db)
    index.search(queries[:100], 1_000, num_threads=2)  # warm-up: first-call allocations
    output = queries.shape[0] * 1_000 * (4 + 8)
    grew = _peak_rss_growth(lambda: index.search(queries, 1_000, num_threads=2))
    assert grew < output + (24 << 20), f"peak memory grew by {grew / 2**20:.1f} MiB"

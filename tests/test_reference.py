"""The NumPy reference itself, checked against the most literal definitions there are:
``unpackbits`` for Hamming, a stable sort on (value, id) for top-k."""

import numpy as np
import pytest

import cofisearch
from cofisearch import _core, _reference


def literal_topk(values, ids, k, largest):
    """Top-k by sorting every (value, id) pair; padding ids (-1) last."""
    out_d, out_i = [], []
    for row_v, row_i in zip(values, ids):
        pairs = [(-v if largest else v, i, v) for v, i in zip(row_v.tolist(), row_i.tolist()) if i >= 0]
        pairs.sort()
        pairs = pairs[:k]
        out_d.append([p[2] for p in pairs])
        out_i.append([p[1] for p in pairs])
    return out_d, out_i


def test_sentinels_match_the_engine():
    assert _reference.HAMMING_SENTINEL == _core.HAMMING_SENTINEL == cofisearch.HAMMING_SENTINEL
    assert _reference.SCORE_SENTINEL == _core.SCORE_SENTINEL == cofisearch.SCORE_SENTINEL


@pytest.mark.parametrize("nbytes", [1, 2, 3, 4, 6, 8, 9, 24, 40])
def test_hamming_distances_match_unpackbits(nbytes):
    rng = np.random.default_rng(nbytes)
    db = rng.integers(0, 256, (37, nbytes), dtype=np.uint8)
    q = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
    literal = np.unpackbits(q[:, None, :] ^ db[None, :, :], axis=2).sum(axis=2)
    got = _reference.hamming_distances(q, db)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, literal)


def test_popcount_without_bitwise_count_sums_the_same():
    # NumPy 1.x has no bitwise_count; the byte-table fallback must give the same row sums.
    rng = np.random.default_rng(1)
    w = _reference.words(rng.integers(0, 256, (50, 24), dtype=np.uint8))
    fallback = _reference._popcount_bytes(w).sum(axis=1)
    literal = np.unpackbits(w.view(np.uint8), axis=1).sum(axis=1)
    np.testing.assert_array_equal(fallback, literal)


@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("k", [1, 3, 7, 20, 40])
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_topk_breaks_ties_by_smaller_id(largest, k, dtype):
    # Few distinct values: almost every k-th value is tied, so argpartition must split ties.
    rng = np.random.default_rng(k)
    values = rng.integers(0, 4, (30, 25)).astype(dtype)
    d, i = _reference.topk(values, k, largest=largest)
    want_d, want_i = literal_topk(values, np.broadcast_to(np.arange(25), values.shape), k, largest)
    kk = min(k, 25)
    np.testing.assert_array_equal(i[:, :kk], np.array(want_i))
    np.testing.assert_array_equal(d[:, :kk], np.array(want_d, dtype=dtype))
    sentinel = _reference.SCORE_SENTINEL if dtype == np.float32 else _reference.HAMMING_SENTINEL
    assert (i[:, kk:] == -1).all() and (d[:, kk:] == sentinel).all()


def test_topk_of_the_smallest_integer_when_largest():
    values = np.array([[np.iinfo(np.int32).min, 0, np.iinfo(np.int32).max]], dtype=np.int32)
    _, i = _reference.topk(values, 3, largest=True)
    np.testing.assert_array_equal(i, [[2, 1, 0]])


@pytest.mark.parametrize("largest", [False, True])
def test_merge_equals_topk_of_the_whole(largest):
    rng = np.random.default_rng(7)
    values = rng.integers(0, 5, (12, 60)).astype(np.int32)
    k = 9
    parts = []
    for lo, hi in [(0, 4), (4, 31), (31, 60)]:
        d, i = _reference.topk(values[:, lo:hi], k, largest=largest)
        parts.append((d, np.where(i >= 0, i + lo, -1)))
    got = _reference.merge_topk(parts, k, largest=largest)
    want = _reference.topk(values, k, largest=largest)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_merge_puts_padding_last_and_pads_to_k():
    d = np.array([[5.0, 9.0]], dtype=np.float32)
    i = np.array([[4, -1]])
    other = (np.array([[5.0]], dtype=np.float32), np.array([[2]]))
    got_d, got_i = _reference.merge_topk([(d, i), other], 4, largest=True)
    np.testing.assert_array_equal(got_i, [[2, 4, -1, -1]])
    np.testing.assert_array_equal(got_d, [[5.0, 5.0, -np.inf, -np.inf]])


@pytest.mark.parametrize(
    "dtype, low, high",
    [
        (np.int32, -5, 3),  # negative keys: the shift happens before any unsigned cast
        (np.int64, -(2**40), 2**40),  # folded key needs 64 bits
        (np.int64, -(2**62), 2**62),  # too wide to fold: the tie-settling path
        (np.uint8, 0, 3),
    ],
)
def test_smallest_k_equals_a_stable_sort_for_any_integer_range(dtype, low, high):
    rng = np.random.default_rng(3)
    key = rng.integers(low, high, (20, 300), dtype=np.int64).astype(dtype)
    key[:, ::7] = key[:, :1]  # ties at every depth
    for k in (1, 13, 299):
        want = np.argsort(key, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(_reference.smallest_k(key, k), want)

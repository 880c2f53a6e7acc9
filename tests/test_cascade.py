import copy
import pickle

import numpy as np
import pytest

import cofisearch
from cofisearch.cascade import Cascade, CascadeResult, feature_reranker


def _data(n=2000, dim=32, nbits=64, nq=25, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    projection = rng.standard_normal((dim, nbits))
    codes = cofisearch.pack_bits(vectors @ projection > 0)
    queries = vectors[:nq] + 0.1 * rng.standard_normal((nq, dim)).astype(np.float32)
    query_codes = cofisearch.pack_bits(queries @ projection > 0)
    coarse = cofisearch.BinaryIndex(nbits)
    coarse.add(codes)
    fine = cofisearch.FloatIndex(dim)
    fine.add(vectors)
    return coarse, fine, query_codes, queries


def test_full_depth_equals_exhaustive_float_search():
    coarse, fine, qc, qv = _data()
    result = Cascade(coarse, fine, n_candidates=coarse.ntotal).search(qc, qv, 10)
    exhaustive = fine.search(qv, 10)
    np.testing.assert_array_equal(result.ids, exhaustive.ids)
    np.testing.assert_array_equal(result.distances, exhaustive.distances)


def test_result_unpacks_like_search_result_and_carries_timings():
    coarse, fine, qc, qv = _data()
    result = Cascade(coarse, fine, n_candidates=50).search(qc, qv, 5)
    assert isinstance(result, CascadeResult) and isinstance(result, cofisearch.SearchResult)
    distances, ids = result
    assert distances.shape == ids.shape == (25, 5)
    assert set(result.timings) == {"coarse", "fine", "rerank", "total"}
    assert all(v >= 0 for v in result.timings.values())
    assert result.candidates.shape == (25, 50)


def _result():
    coarse, fine, qc, qv = _data(n=300, nq=4)
    return Cascade(coarse, fine, n_candidates=20).search(qc, qv, 5)


def test_result_is_a_two_item_search_result():
    result = _result()
    assert len(result) == 2
    assert result[0] is result.distances and result[1] is result.ids
    assert result[-1] is result.ids
    assert [a is b for a, b in zip(result, (result.distances, result.ids))] == [True, True]
    assert result._fields == ("distances", "ids")


def test_result_repr_shows_every_field():
    text = repr(_result())
    assert text.startswith("CascadeResult(distances=")
    for field in ("ids=", "timings={'coarse'", "candidates=array("):
        assert field in text


def test_result_survives_pickling_and_copying_with_every_field():
    result = _result()
    for again in (pickle.loads(pickle.dumps(result)), copy.copy(result), copy.deepcopy(result)):
        assert type(again) is CascadeResult
        assert again == result and not again != result
        assert again.timings == result.timings
        np.testing.assert_array_equal(again.candidates, result.candidates)


def test_result_replace_keeps_the_other_fields():
    result = _result()
    ids = result.ids.copy()
    ids[0, 0] = 299
    changed = result._replace(ids=ids)
    assert type(changed) is CascadeResult
    assert changed.ids is ids and changed.distances is result.distances
    assert changed.timings is result.timings and changed.candidates is result.candidates
    assert changed != result
    assert result._replace(timings={}).timings == {}
    with pytest.raises(ValueError, match="no fields \\['scores'\\]"):
        result._replace(scores=None)


def test_result_asdict_and_make_use_all_four_fields():
    result = _result()
    fields = result._asdict()
    assert list(fields) == ["distances", "ids", "timings", "candidates"]
    assert CascadeResult._make(fields.values()) == result
    assert CascadeResult(**fields) == result


def test_result_fields_are_read_only():
    result = _result()
    with pytest.raises(AttributeError):
        result.timings = {}
    with pytest.raises(AttributeError):
        result.candidates = None


def test_stage_two_reranks_exactly_the_stage_one_candidates():
    coarse, fine, qc, qv = _data()
    result = Cascade(coarse, fine, n_candidates=40).search(qc, qv, 10)
    _, cand = coarse.search(qc, 40)
    expected = fine.search(qv, 10, candidates=cand)
    np.testing.assert_array_equal(result.ids, expected.ids)
    for row, c in zip(result.ids, cand):
        assert set(row.tolist()) <= set(c.tolist())


def test_screen_deeper_than_the_database_pads_with_minus_one():
    coarse, fine, qc, qv = _data(n=30)
    result = Cascade(coarse, fine, n_candidates=100).search(qc, qv, 40)
    assert (result.ids[:, 30:] == -1).all()
    assert (result.distances[:, 30:] == cofisearch.SCORE_SENTINEL).all()


def test_reranker_reorders_the_top_n_rerank():
    coarse, fine, qc, qv = _data()
    # A reranker that prefers large ids, to make its effect visible.
    calls = []

    def prefer_large_ids(queries, ids):
        calls.append(ids.shape)
        return ids.astype(np.float64)

    cascade = Cascade(coarse, fine, n_candidates=60, reranker=prefer_large_ids, n_rerank=20)
    result = cascade.search(qc, qv, 5)
    stage2 = fine.search(qv, 20, candidates=coarse.search(qc, 60).ids)
    assert calls == [(25, 20)]
    np.testing.assert_array_equal(result.ids, -np.sort(-stage2.ids, axis=1)[:, :5])
    assert result.timings["rerank"] > 0


def test_reranker_ties_go_to_the_smaller_id_and_padding_last():
    coarse, fine, qc, qv = _data(n=30, nq=3)
    cascade = Cascade(coarse, fine, n_candidates=50, reranker=lambda q, ids: np.zeros(ids.shape))
    result = cascade.search(qc, qv, 40)
    expected_ids = np.concatenate([np.arange(30), np.full(10, -1)])
    np.testing.assert_array_equal(result.ids, np.tile(expected_ids, (3, 1)))
    assert (result.distances[:, :30] == 0).all()
    assert (result.distances[:, 30:] == cofisearch.SCORE_SENTINEL).all()
    assert result.distances.dtype == np.float32


def test_feature_reranker_gathers_candidate_features():
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)

    def scorer(q, c):
        return (c * q[:, None, :]).sum(axis=2)

    rerank = feature_reranker(scorer, feats)
    scores = rerank(np.array([[1.0, 0.0]]), np.array([[5, 0, -1]]))
    assert scores.tolist() == [[10.0, 0.0, 0.0]]


def test_reranker_with_wrong_output_shape_is_rejected():
    coarse, fine, qc, qv = _data()
    cascade = Cascade(coarse, fine, n_candidates=10, reranker=lambda q, ids: np.zeros(3))
    with pytest.raises(ValueError, match="reranker"):
        cascade.search(qc, qv, 5)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda c, f: Cascade(f, f), TypeError, "coarse"),
        (lambda c, f: Cascade(c, c), TypeError, "fine"),
        (lambda c, f: Cascade(c, f, n_candidates=0), ValueError, "n_candidates"),
        (lambda c, f: Cascade(c, f, reranker=3), TypeError, "reranker"),
        (lambda c, f: Cascade(c, f, n_rerank=5), ValueError, "n_rerank"),
    ],
)
def test_bad_construction_is_rejected(make, error, fragment):
    coarse, fine, _, _ = _data(n=20, nq=5)
    with pytest.raises(error, match=fragment):
        make(coarse, fine)


def test_mismatched_indexes_and_queries_are_rejected():
    coarse, fine, qc, qv = _data(n=50)
    with pytest.raises(ValueError, match="query_codes"):
        Cascade(coarse, fine).search(qc[:3], qv[:4], 5)
    fine.add(np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="same items"):
        Cascade(coarse, fine).search(qc, qv, 5)


def _cascade_pair(n=0, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    vectors = rng.standard_normal((n, 12)).astype(np.float32)
    return cofisearch.Cascade(cofisearch.BinaryIndex(64), cofisearch.FloatIndex(12),
                              n_candidates=20), codes, vectors


def test_add_gives_an_item_the_same_id_in_both_stages():
    cascade, codes, vectors = _cascade_pair(50)
    cascade.add(codes, vectors)
    assert cascade.coarse.ntotal == cascade.fine.ntotal == 50
    scores, ids = cascade.search(codes[:3], vectors[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])


def test_add_checks_both_parts_before_changing_either():
    cascade, codes, vectors = _cascade_pair(10)
    with pytest.raises(ValueError, match="same queries"):
        cascade.add(codes, vectors[:9])
    with pytest.raises(ValueError, match="vectors must have 12 columns"):
        cascade.add(codes, vectors[:, :5])
    assert cascade.coarse.ntotal == cascade.fine.ntotal == 0


def test_searches_during_cascade_adds_never_screen_an_unscorable_item():
    import threading

    cascade, codes, vectors = _cascade_pair(4000, seed=3)
    cascade.add(codes[:100], vectors[:100])
    done = threading.Event()
    errors = []

    def searcher():
        while not done.is_set():
            try:
                cascade.search(codes[:5], vectors[:5], 5)
            except BaseException as exc:  # reported after join
                errors.append(exc)
                return

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(100, 4000, 100):
        cascade.add(codes[start:start + 100], vectors[start:start + 100])
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[:1]


def test_a_cascade_pickles_with_its_indexes():
    import pickle

    cascade, codes, vectors = _cascade_pair(30)
    cascade.add(codes, vectors)
    again = pickle.loads(pickle.dumps(cascade))
    np.testing.assert_array_equal(again.search(codes[:4], vectors[:4], 3).ids,
                                  cascade.search(codes[:4], vectors[:4], 3).ids)
    again.add(codes[:1], vectors[:1])
    assert again.fine.ntotal == 31 and cascade.fine.ntotal == 30


def test_a_cascade_pickle_with_corrupted_stage_depths_is_refused():
    # Found by the unpickling fuzzer: a flipped bit in n_candidates restored a cascade of
    # another depth; the depths now carry a CRC, as the indexes' rows do.
    cascade, codes, vectors = _cascade_pair(30)
    cascade.add(codes, vectors)
    fn, args = cascade.__reduce__()
    args = list(args)
    args[2] += 1
    with pytest.raises(ValueError, match="checksum mismatch"):
        pickle.loads(pickle.dumps(_Reduced(fn, tuple(args))))
    assert fn(*cascade.__reduce__()[1]).n_candidates == cascade.n_candidates


class _Reduced:
    def __init__(self, fn, args):
        self.parts = (fn, args)

    def __reduce__(self):
        return self.parts

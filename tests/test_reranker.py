"""The fusion reranker trained on negatives mined with a cascade, and its cached stage 3
(the constructor, ``score`` and random-negative training are in test_encoders.py)."""

import numpy as np
import pytest

pytest.importorskip("torch")

import cofisearch
from cofisearch import encoders as enc
from cofisearch.encoders.reranker import cascade_negatives


def _pairs(n=48, dim=8, seed=0, noise=0.6):
    """Queries that are noisy copies of their candidate, unit rows, and sign codes."""
    rng = np.random.default_rng(seed)
    cand = rng.standard_normal((n, dim)).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    q2c = rng.permutation(n)
    queries = cand[q2c] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries, cand, q2c


def _cascade(cand, n_candidates=16):
    codes = np.packbits(cand >= 0, axis=1)
    coarse = cofisearch.BinaryIndex(8 * codes.shape[1])
    coarse.add(codes)
    fine = cofisearch.FloatIndex(cand.shape[1], metric="cosine")
    fine.add(cand)
    return cofisearch.Cascade(coarse, fine, n_candidates=n_candidates)


def _codes(x):
    return np.packbits(x >= 0, axis=1)


def _model(**kwargs):
    return enc.CrossAttentionReranker(8, 8, d_model=16, n_tokens=2, n_heads=2, hidden=16,
                                      **kwargs)


def test_cascade_negatives_are_the_cascades_list_without_the_match():
    queries, cand, q2c = _pairs()
    cascade = _cascade(cand)
    found = cascade.search(_codes(queries), queries, 6).ids
    mined, hit = cascade_negatives(cascade, (_codes(queries), queries), q2c, 5)
    assert mined.shape == (len(queries), 5) and mined.dtype == np.int64
    np.testing.assert_array_equal(hit, (found == q2c[:, None]).any(axis=1))
    assert hit.any() and not hit.all()
    for row, ids, match in zip(mined, found, q2c):
        assert match not in row
        want = [i for i in ids if i != match][:5]
        assert list(row) == want


def test_fit_leaves_out_queries_whose_match_the_cascade_missed():
    queries, cand, q2c = _pairs()
    cascade = _cascade(cand)
    _, hit = cascade_negatives(cascade, (_codes(queries), queries), q2c, 3)
    model = _model().fit(queries, cand, query_to_candidate=q2c, negatives="cascade",
                         cascade=cascade, cascade_queries=(_codes(queries), queries),
                         n_negatives=3, epochs=1, batch_size=8)
    assert model.is_fitted and 2 <= hit.sum() < len(hit)


def test_cascade_negatives_pad_short_screens_with_minus_one():
    queries, cand, q2c = _pairs()
    mined, _ = cascade_negatives(_cascade(cand, n_candidates=3),
                                 (_codes(queries), queries), q2c, 6)
    assert (mined[:, 3:] == -1).all()
    assert (mined[:, :2] >= 0).all()


def test_fit_with_cascade_negatives_is_deterministic_for_a_seed():
    queries, cand, q2c = _pairs()
    cascade = _cascade(cand)
    fit = {"query_to_candidate": q2c, "negatives": "cascade", "cascade": cascade,
               "cascade_queries": (_codes(queries), queries), "n_negatives": 7, "epochs": 2,
               "batch_size": 16}
    a = _model(seed=3).fit(queries, cand, **fit)
    b = _model(seed=3).fit(queries, cand, **fit)
    lists = cascade.search(_codes(queries), queries, 8).ids
    np.testing.assert_array_equal(a(queries, cand[lists]), b(queries, cand[lists]))
    assert len(a.loss_history_) == 2 and np.isfinite(a.loss_history_).all()


def test_fit_with_cascade_negatives_learns_the_match():
    # Candidates are random directions, queries noisy copies: after training on the
    # cascade's lists the match should lead its list far more often than by chance.
    queries, cand, q2c = _pairs(n=128, seed=1, noise=0.2)
    cascade = _cascade(cand, n_candidates=64)
    model = _model(input_cosine=False).fit(
        queries, cand, query_to_candidate=q2c, negatives="cascade", cascade=cascade,
        cascade_queries=(_codes(queries), queries), n_negatives=15, n_random=0,
        epochs=10, batch_size=32, lr=1e-2)
    lists = cascade.search(_codes(queries), queries, 16).ids
    scores = model(queries, cand[lists])
    top = lists[np.arange(len(lists)), scores.argmax(axis=1)]
    # One in 16 by chance.
    assert (top == q2c).mean() > 0.4


def test_for_candidates_scores_like_score_on_gathered_features():
    queries, cand, q2c = _pairs()
    model = _model().fit(queries, cand, query_to_candidate=q2c, epochs=1, batch_size=16)
    cached = model.for_candidates(cand, batch_size=7)
    assert cached.n_candidates == len(cand) and cached.encode_seconds >= 0
    rng = np.random.default_rng(2)
    ids = rng.integers(0, len(cand), (len(queries), 9))
    np.testing.assert_allclose(cached(queries, ids, batch_size=5),
                               model(queries, cand[ids]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pair_block", [1, 20, 4096])
@pytest.mark.parametrize("dims", [(8, 8, None), (6, 10, False)])
@pytest.mark.parametrize("candidate_tokens", [None, 1, 2])
def test_for_candidates_fused_path_matches_the_training_model(monkeypatch, pair_block, dims,
                                                              candidate_tokens):
    # The cached stage 3 regroups pair_scores' arithmetic (folded head, block matrices,
    # pairs in blocks); whatever the block size, either shortcut setting and however
    # many tokens a candidate has, it must give the model's own scores.
    from cofisearch.encoders import reranker

    monkeypatch.setattr(reranker, "_PAIR_BLOCK", pair_block)
    dq, dc, cosine = dims
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((23, dq)).astype(np.float32)
    cand = rng.standard_normal((31, dc)).astype(np.float32)
    model = enc.CrossAttentionReranker(dq, dc, d_model=12, n_tokens=3, n_heads=3, hidden=10,
                                       input_cosine=cosine, candidate_tokens=candidate_tokens,
                                       seed=1)
    model.fit(queries, cand[:23], epochs=1, batch_size=8)
    ids = rng.integers(-1, 31, (23, 7))
    got = model.for_candidates(cand, batch_size=5)(queries, ids, batch_size=6)
    np.testing.assert_allclose(got, model(queries, cand[np.maximum(ids, 0)]), rtol=1e-5,
                               atol=1e-5)


def test_candidate_tokens_default_to_n_tokens_and_survive_save_and_load(tmp_path):
    queries, cand, q2c = _pairs()
    assert _model().candidate_tokens == 2
    model = _model(candidate_tokens=1).fit(queries, cand, query_to_candidate=q2c, epochs=1,
                                           batch_size=16)
    assert "candidate_tokens=1" in repr(model)
    model.save(tmp_path / "rr.pt")
    back = enc.CrossAttentionReranker.load(tmp_path / "rr.pt")
    assert back.candidate_tokens == 1
    np.testing.assert_array_equal(back(queries, cand[None, :5].repeat(len(queries), 0)),
                                  model(queries, cand[None, :5].repeat(len(queries), 0)))


def test_for_candidates_serves_as_a_cascade_stage_3():
    queries, cand, q2c = _pairs()
    model = _model().fit(queries, cand, query_to_candidate=q2c, epochs=1, batch_size=16)
    cascade = _cascade(cand)
    staged = cofisearch.Cascade(cascade.coarse, cascade.fine, 16,
                                reranker=model.for_candidates(cand), n_rerank=8)
    found = staged.search(_codes(queries), queries, 5)
    lists = cascade.search(_codes(queries), queries, 8).ids
    scores = model(queries, cand[lists])
    for row, ids, s in zip(found.ids, lists, scores):
        assert set(row) <= set(ids)
        assert row[0] == ids[np.argmax(s)]


ZEROS = np.zeros((8, 8), np.float32)


def _bad_fit(**kwargs):
    return _model().fit(ZEROS, ZEROS, **kwargs)


ERRORS = [
    (lambda: _model(candidate_tokens=0), ValueError, "candidate_tokens must be >= 1"),
    (lambda: _bad_fit(negatives="hard"), ValueError, "negatives must be one of"),
    (lambda: _bad_fit(negatives=1), TypeError, "negatives must be a str"),
    (lambda: _bad_fit(negatives="cascade"), ValueError, "needs cascade="),
    (lambda: _bad_fit(cascade=_cascade(ZEROS)), ValueError,
     "only apply with negatives='cascade'"),
    (lambda: _bad_fit(negatives="cascade", cascade=_cascade(ZEROS),
                      cascade_queries=(_codes(ZEROS), ZEROS),
                      hard_negatives=np.zeros((8, 2), int)), ValueError,
     "hard_negatives is for negatives='random'"),
    (lambda: _bad_fit(negatives="cascade", cascade=object(),
                      cascade_queries=(_codes(ZEROS), ZEROS)), TypeError,
     "cascade must have a search"),
    (lambda: _bad_fit(negatives="cascade", cascade=_cascade(ZEROS), cascade_queries=ZEROS),
     TypeError, "cascade_queries must be a pair"),
    (lambda: _bad_fit(negatives="cascade", cascade=_cascade(ZEROS),
                      cascade_queries=(_codes(ZEROS[:4]), ZEROS[:4])), ValueError,
     "one row per training query"),
    (lambda: _bad_fit(negatives="cascade", cascade=_cascade(ZEROS),
                      cascade_queries=(_codes(ZEROS), ZEROS), n_negatives=0), ValueError,
     "n_negatives must be >= 1"),
    (lambda: _model().fit(ZEROS, ZEROS[:4], query_to_candidate=np.arange(8) % 4,
                          negatives="cascade", cascade=_cascade(ZEROS),
                          cascade_queries=(_codes(ZEROS), ZEROS)), ValueError,
     "its items must be the candidates"),
]


@pytest.mark.parametrize("call, error, message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_for_candidates_rejects_bad_ids():
    queries, cand, q2c = _pairs()
    cached = _model().fit(queries, cand, query_to_candidate=q2c, epochs=1,
                          batch_size=16).for_candidates(cand)
    with pytest.raises(ValueError, match="index the 48 cached candidates"):
        cached(queries[:2], np.full((2, 3), 48))
    with pytest.raises(TypeError, match="candidate_ids must be an integer array"):
        cached(queries[:2], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"candidate_ids must have shape \(2, c\)"):
        cached(queries[:2], np.zeros((3, 3), int))

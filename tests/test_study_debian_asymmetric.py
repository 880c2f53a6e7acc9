"""The Debian study's asymmetric ITQ screen and the binarisers' project / with_mean
against the NumPy references (no model needed)."""

import numpy as np
import pytest
from cofisearch import FloatIndex, _reference, study_debian
from cofisearch.encoders import ITQBinarizer, RandomRotationBinarizer


def _fitted(cls=ITQBinarizer, nbits=16, dim=24, n=200, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return cls(nbits, seed=0).fit(x), x


@pytest.mark.parametrize("cls", [ITQBinarizer, RandomRotationBinarizer])
def test_transform_is_the_sign_of_project(cls):
    model, x = _fitted(cls)
    v = model.project(x)
    assert v.shape == (len(x), 16) and v.dtype == np.float32
    np.testing.assert_allclose(v, (x - model.mean_) @ model.projection_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.transform(x, packed=False), np.where(v >= 0, 1, -1))


def test_with_mean_recentres_a_copy():
    model, x = _fitted()
    centre = x[:50].mean(axis=0)
    other = model.with_mean(centre)
    assert other is not model and other.projection_ is model.projection_
    np.testing.assert_array_equal(other.mean_, centre.astype(np.float32))
    assert model.mean_ is not other.mean_ and not np.array_equal(model.mean_, other.mean_)
    np.testing.assert_allclose(other.project(x), (x - centre) @ model.projection_,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mean, exc, match", [
    (np.zeros(5, np.float32), ValueError, r"mean must have shape \(24,\)"),
    (np.zeros((1, 24), np.float32), ValueError, "mean must have shape"),
    (np.zeros(24, np.int64), TypeError, "mean must be a floating-point array"),
    (np.full(24, np.nan, np.float32), ValueError, "mean"),
])
def test_with_mean_refuses_bad_means(mean, exc, match):
    model, _ = _fitted()
    with pytest.raises(exc, match=match):
        model.with_mean(mean)


def test_with_mean_needs_a_fitted_binarizer():
    with pytest.raises(ValueError, match="not fitted"):
        ITQBinarizer(8).with_mean(np.zeros(8, np.float32))


@pytest.mark.parametrize("nbits", [16, 128])  # packed per search; stored as a panel
@pytest.mark.parametrize("n_items, n", [(1, 1), (37, 5), (300, 300), (300, 1000)])
def test_asymmetric_screen_ranks_the_kernels_estimates(n_items, n, nbits):
    model, x = _fitted(nbits=nbits, dim=160, n=max(n_items, 30))
    rng = np.random.default_rng(1)
    # Repeated items: equal codes, so exact ties for every query.
    codes = model.transform(x[rng.integers(0, max(1, n_items // 3), n_items)])
    queries = rng.standard_normal((13, x.shape[1])).astype(np.float32)
    scores, ids = study_debian._AsymmetricScreen(model, codes).search(queries, n)
    projected = model.project(queries)
    planes, consts = _reference.quantize_queries(projected, study_debian.ASYMMETRIC_QUERY_BITS)
    est = _reference.asymmetric_estimates(planes, consts, np.zeros(len(queries), np.float32),
                                          codes, np.ones(n_items, np.float32))
    depth = min(n, n_items)
    order = np.lexsort((np.broadcast_to(np.arange(n_items), est.shape), -est), axis=1)[:, :depth]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(scores, np.take_along_axis(est, order, 1))
    # The estimates are <p, 2b - 1> up to the query's quantisation: half a step a dimension.
    signs = np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1
    step = consts[:, :1] / 2
    assert (np.abs(est - projected @ signs.T) <= step * codes.shape[1] * 8 / 2 + 1e-4).all()


def test_asymmetric_screen_breaks_ties_by_the_smaller_id():
    model, x = _fitted()
    codes = np.repeat(model.transform(x[:1]), 6, axis=0)  # six identical items
    screen = study_debian._AsymmetricScreen(model, codes)
    _, ids = screen.search(x[1:3], 4)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3]] * 2)


def test_screened_cascade_reranks_the_screens_candidates_exactly():
    model, x = _fitted(n=120)
    fine = FloatIndex(x.shape[1], metric="ip")
    fine.add(x)
    screen = study_debian._AsymmetricScreen(model, model.transform(x))
    q = x[:7] + 0.01
    found = study_debian._ScreenedCascade(screen, fine, 30).search(q, q, 5)
    _, candidates = screen.search(q, 30)
    np.testing.assert_array_equal(found.candidates, candidates)
    for row in range(len(q)):
        cand = candidates[row]
        exact = cand[np.lexsort((cand, -(x[cand] @ q[row])))][:5]
        np.testing.assert_array_equal(found.ids[row], exact)
    assert set(found.timings) >= {"coarse", "fine", "total"}

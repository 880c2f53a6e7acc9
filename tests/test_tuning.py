"""cofisearch.tune: the selection logic against recalls computed here by brute force
(every setting run through the cascade); no timing is asserted."""

import numpy as np
import pytest

import cofisearch
from cofisearch import BinaryIndex, Cascade, FloatIndex, IVFBinaryIndex, tune

K = 5


def _data(seed, n=1500, dim=16, nbits=32, nq=40, noise=0.8):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n, dim)).astype(np.float32)
    q = (db[rng.choice(n, nq, replace=False)] + noise * rng.standard_normal((nq, dim))).astype(
        np.float32)
    proj = rng.standard_normal((dim, nbits)).astype(np.float32)
    codes = cofisearch.pack_bits(db @ proj > 0)
    qcodes = cofisearch.pack_bits(q @ proj > 0)
    return db, q, codes, qcodes


def _cascade(seed, *, ivf=True, nlist=16, routing="vectors"):
    db, q, codes, qcodes = _data(seed)
    fine = FloatIndex(db.shape[1])
    fine.add(db)
    if ivf:
        coarse = IVFBinaryIndex(codes.shape[1] * 8, nlist, seed=seed)
        vectors = db if routing == "vectors" else None
        coarse.train(codes, vectors)
        coarse.add(codes, vectors)
    else:
        coarse = BinaryIndex(codes.shape[1] * 8)
        coarse.add(codes)
    return Cascade(coarse, fine), q, qcodes


def _recall(ids, truth):
    return float(np.mean([np.intersect1d(a, t).size / t.size for a, t in zip(ids, truth)]))


def _brute(cascade, qcodes, q, nprobe, n_candidates):
    """The recall@K of the cascade run at one setting, as users would run it."""
    truth = cascade.fine.search(q, K).ids
    c = Cascade(cascade.coarse, cascade.fine, n_candidates=n_candidates)
    before = getattr(cascade.coarse, "nprobe", None)
    if nprobe is not None:
        cascade.coarse.nprobe = nprobe
    try:
        return _recall(c.search(qcodes, q, K).ids, truth)
    finally:
        if nprobe is not None:
            cascade.coarse.nprobe = before


def _smallest_by_brute(cascade, qcodes, q, nprobe, target, limit):
    for nc in range(K, limit + 1):
        if _brute(cascade, qcodes, q, nprobe, nc) >= target - 1e-9:
            return nc
    return None


@pytest.mark.parametrize("routing", ["vectors", "codes"])
def test_each_explored_nprobe_has_the_smallest_depth_reaching_the_target(routing):
    cascade, q, qcodes = _cascade(1, routing=routing)
    limit = 120
    result = tune(cascade, qcodes, q, target_recall=0.9, k=K, max_candidates=limit, repeat=1)
    assert [p.nprobe for p in result.explored] == [1, 2, 4, 8, 16][: len(result.explored)]
    for pt in result.explored:
        expected = _smallest_by_brute(cascade, qcodes, q, pt.nprobe, 0.9, limit)
        assert pt.n_candidates == expected
        depth = limit if expected is None else expected
        assert pt.recall == pytest.approx(_brute(cascade, qcodes, q, pt.nprobe, depth))


def test_the_chosen_setting_is_a_frontier_point_that_reaches_the_target():
    cascade, q, qcodes = _cascade(2)
    result = tune(cascade, qcodes, q, target_recall=0.8, k=K, max_candidates=200, repeat=1)
    assert result.reached
    assert result.recall >= 0.8
    chosen = (result.nprobe, result.n_candidates)
    assert chosen == (result.frontier[0].nprobe, result.frontier[0].n_candidates)
    times = [p.seconds_per_query for p in result.frontier]
    assert times == sorted(times)
    for pt in result.frontier:
        assert pt.recall == pytest.approx(_brute(cascade, qcodes, q, pt.nprobe, pt.n_candidates))
        assert pt.recall >= 0.8


def test_the_frontier_drops_settings_beaten_on_both_knobs():
    cascade, q, qcodes = _cascade(3)
    result = tune(cascade, qcodes, q, target_recall=0.85, k=K, max_candidates=300, repeat=1)
    feasible = [p for p in result.explored if p.n_candidates is not None]
    kept = {(p.nprobe, p.n_candidates) for p in result.frontier}
    for p in feasible:
        beaten = any(o.nprobe < p.nprobe and o.n_candidates <= p.n_candidates for o in feasible)
        assert ((p.nprobe, p.n_candidates) in kept) == (not beaten)


def test_the_walk_stops_once_k_candidates_suffice():
    cascade, q, qcodes = _cascade(4)
    result = tune(cascade, qcodes, q, target_recall=0.05, k=K, repeat=1)
    assert result.explored[-1].n_candidates == K
    assert all(p.n_candidates is None or p.n_candidates > K for p in result.explored[:-1])


def test_an_unreachable_target_reports_how_close_it_came():
    cascade, q, qcodes = _cascade(5)
    result = tune(cascade, qcodes, q, target_recall=1.0, k=K, nprobe=[1, 2], max_candidates=K,
                  repeat=1)
    assert not result.reached and result.settings == {} and result.frontier == ()
    assert result.best_recall == pytest.approx(max(_brute(cascade, qcodes, q, p, K) for p in (1, 2)))
    with pytest.raises(ValueError, match="no setting reached"):
        result.apply(cascade)


def test_apply_sets_the_cascade_and_tune_leaves_it_alone():
    cascade, q, qcodes = _cascade(6)
    cascade.coarse.nprobe = 3
    cascade.n_candidates = 77
    result = tune(cascade, qcodes, q, target_recall=0.8, k=K, max_candidates=200, repeat=1)
    assert (cascade.coarse.nprobe, cascade.n_candidates) == (3, 77)
    result.apply(cascade)
    assert cascade.coarse.nprobe == result.nprobe
    assert cascade.n_candidates == result.n_candidates
    assert result.settings == {"nprobe": result.nprobe, "n_candidates": result.n_candidates}
    truth = cascade.fine.search(q, K).ids
    assert _recall(cascade.search(qcodes, q, K).ids, truth) == pytest.approx(result.recall)


def test_a_binary_index_screen_tunes_the_depth_alone():
    cascade, q, qcodes = _cascade(7, ivf=False)
    result = tune(cascade, qcodes, q, target_recall=0.7, k=K, max_candidates=150, repeat=1)
    assert [p.nprobe for p in result.explored] == [None]
    assert result.reached
    assert result.n_candidates == _smallest_by_brute(cascade, qcodes, q, None, 0.7, 150)
    assert "nprobe" not in result.settings
    with pytest.raises(ValueError, match="nprobe applies"):
        tune(cascade, qcodes, q, nprobe=[1])
    ivf_cascade, _, _ = _cascade(7)
    with pytest.raises(ValueError, match="tuned for a cascade over a BinaryIndex"):
        result.apply(ivf_cascade)


def test_given_truth_is_used_instead_of_the_exact_search():
    cascade, q, qcodes = _cascade(8)
    truth = cascade.fine.search(q, K).ids
    a = tune(cascade, qcodes, q, target_recall=0.8, k=K, max_candidates=100, repeat=1)
    b = tune(cascade, qcodes, q, target_recall=0.8, k=K, max_candidates=100, repeat=1,
             truth=truth)
    assert [(p.nprobe, p.n_candidates, p.recall) for p in a.explored] == [
        (p.nprobe, p.n_candidates, p.recall) for p in b.explored]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_recall": 0.0}, ValueError, "target_recall"),
        ({"target_recall": 1.5}, ValueError, "target_recall"),
        ({"target_recall": "high"}, TypeError, "target_recall"),
        ({"k": 0}, ValueError, "k"),
        ({"max_candidates": 0}, ValueError, "max_candidates"),
        ({"repeat": 0}, ValueError, "repeat"),
        ({"nprobe": [0]}, ValueError, "nprobe"),
        ({"truth": np.zeros((3, K), np.int64)}, ValueError, "truth"),
        ({"truth": np.zeros((40, K), np.float32)}, TypeError, "truth"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    cascade, q, qcodes = _cascade(9)
    args = {"k": K, **kwargs}
    with pytest.raises(error, match=match):
        tune(cascade, qcodes, q, **args)


def test_a_cascade_is_required():
    _, q, qcodes = _cascade(10)
    with pytest.raises(TypeError, match="cascade must be a Cascade"):
        tune(object(), qcodes, q)

"""The Debian study's own evaluation against a brute-force reference (no model needed)."""

import numpy as np
import pytest

from cofisearch import study_debian


def _reference(scores, truth, q_lab, db_lab, sample):
    """Full rankings, ties by the smaller id: ranks, AP@10, AP@100 and AP@N."""
    n = scores.shape[1]
    order = np.array([sorted(range(n), key=lambda j, r=row: (-r[j], j)) for row in scores])
    ranks = np.array([list(o).index(t) + 1 for o, t in zip(order, truth)])

    def ap(rel):
        hits = np.cumsum(rel, axis=1)
        prec = hits / np.arange(1, rel.shape[1] + 1)
        found = rel.sum(1)
        return np.where(found > 0, (prec * rel).sum(1) / np.maximum(found, 1), 0.0)

    rel = db_lab[order] == q_lab[:, None]
    return ranks, ap(rel[:, :10]).mean(), ap(rel[:, :100]).mean(), ap(rel[sample]).mean()


@pytest.mark.parametrize("metric", ["ip", "hamming"])
def test_quality_matches_full_rankings(metric):
    rng = np.random.default_rng(7)
    nq, n = 37, 230
    if metric == "ip":
        q = rng.standard_normal((nq, 16)).astype(np.float32)
        db = rng.standard_normal((n, 16)).astype(np.float32)
        scores = q @ db.T
    else:  # 16-bit codes: many ties
        q = rng.integers(0, 256, (nq, 2), dtype=np.uint8)
        db = rng.integers(0, 256, (n, 2), dtype=np.uint8)
        scores = -np.unpackbits(q[:, None] ^ db[None], axis=2).sum(2).astype(np.float64)
    truth = rng.integers(0, n, nq)
    q_lab, db_lab = rng.integers(0, 4, nq), rng.integers(0, 4, n)
    sample = np.array([0, 5, 36])
    side = study_debian._Side("title", None, "desc", None, truth, q_lab, db_lab)
    got = study_debian._quality(q, db, side, metric, sample, block=8)
    ranks, ap10, ap100, apn = _reference(scores, truth, q_lab, db_lab, sample)
    for k in study_debian.RECALL_KS:
        assert got[f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks <= k))
    assert got["MedianR"] == np.median(ranks)
    assert got["mAP@10"] == pytest.approx(ap10)
    assert got["mAP@100"] == pytest.approx(ap100)
    assert got["mAP@N"] == pytest.approx(apn)


def test_dedup_keeps_corpus_order_and_groups():
    rows = np.array([10, 11, 12, 14])
    db, group = study_debian._dedup(["b", "a", "b", "c"], rows)
    np.testing.assert_array_equal(db, [10, 11, 14])
    np.testing.assert_array_equal(group, [0, 1, 0, 2])


def test_sign_codes_are_sentence_transformers_ubinary():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 384)).astype(np.float32)
    import cofisearch

    np.testing.assert_array_equal(study_debian._sign(x), cofisearch.pack_bits(x > 0))
    quantization = pytest.importorskip("sentence_transformers.util.quantization")
    np.testing.assert_array_equal(study_debian._sign(x),
                                  quantization.quantize_embeddings(x, precision="ubinary"))

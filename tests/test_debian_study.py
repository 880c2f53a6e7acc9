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


def test_the_sublinear_benchmark_reads_each_distinct_description_once(tmp_path, monkeypatch):
    import cofisearch.encoders
    from cofisearch._bench.sections import debian_ann_data
    from test_debian import _lists

    class Encoder:
        """Stands in for MiniLM: a vector from each text's bytes, so that equal texts
        embed equally."""

        def __init__(self, **kwargs):
            pass

        def encode(self, texts):
            out = np.zeros((len(texts), 8), np.float32)
            for i, text in enumerate(texts):
                out[i, : min(8, len(text))] = [ord(c) % 7 - 3 for c in text[:8]]
                out[i, 7] += 1.0
            return out

    monkeypatch.setattr(cofisearch.encoders, "SentenceEncoder", Encoder)
    data = debian_ann_data(2, 8, directory=_lists(tmp_path))[8]
    # Alpha's, the shared one (two packages) and the viewer's; the summary-only package has none.
    assert data.vectors.shape == (3, 8) and data.query_vectors.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(data.vectors, axis=1), 1, rtol=1e-5)
    assert data.codes.shape == (3, 1) and data.query_codes.shape == (2, 1)
    with pytest.raises(ValueError, match="nq must be below"):
        debian_ann_data(3, 8, directory=_lists(tmp_path))

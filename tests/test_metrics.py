"""Tests for cofisearch.metrics: fico-itr compatibility, hand-computed cases, errors, and
the embeddings-in ``evaluate`` against the same metrics on the full similarity matrix."""

import re
import warnings

import numpy as np
import pytest

from cofisearch import metrics
from cofisearch.metrics import _scan, embeddings

# ---- helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fico_itr():
    """The reference implementation (the `test` extra); only the cross-checks need it."""
    return pytest.importorskip("fico_itr")


def fico(fn, *args, **kwargs):
    """Calls fico-itr, which warns when it transposes; the suite turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def for_fico(captions_per_image):
    # fico-itr 1.0.0 compares captions_per_image with 'auto' first, which fails for a
    # NumPy array (ambiguous truth value); it only takes plain lists.
    if isinstance(captions_per_image, np.ndarray):
        return captions_per_image.tolist()
    return captions_per_image


def assert_same(ours, theirs):
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b)
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key])
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def uneven_map(rng, n_images, low=1, high=8):
    """A shuffled caption -> image map with uneven counts, like MS-COCO's 25,010."""
    counts = rng.integers(low, high, n_images)
    return rng.permutation(np.repeat(np.arange(n_images), counts)), counts


def layout(name, rng):
    """(similarity matrix, captions_per_image, number of images) for each input form."""
    if name == "auto":
        return rng.standard_normal((20, 100)), "auto", 20
    if name == "int":
        return rng.standard_normal((20, 60)), 3, 20
    if name == "counts":
        counts = rng.integers(1, 8, 25)
        return rng.standard_normal((25, int(counts.sum()))), counts, 25
    cap2img, _ = uneven_map(rng, 25)
    sim = rng.standard_normal((25, len(cap2img)))
    if name == "map":
        return sim, cap2img, 25
    if name == "map_list":
        return sim, cap2img.tolist(), 25
    if name == "dict":
        return sim, {int(c): int(i) for c, i in enumerate(cap2img)}, 25
    if name == "transposed":
        return sim.T, cap2img, 25
    if name == "square_duplicated":
        return rng.standard_normal((50, 50)), 5, 10
    if name == "square":
        return rng.standard_normal((30, 30)), "auto", 30
    raise AssertionError(name)


LAYOUTS = ["auto", "int", "counts", "map", "map_list", "dict", "transposed",
           "square_duplicated", "square"]


def make_labels(kind, rng, n_images):
    if kind == "single":
        return rng.integers(0, 4, n_images)
    return (rng.random((n_images, 6)) < 0.3).astype(np.int64)


# ---- fico-itr compatibility ----------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
def test_instance_retrieval_matches_fico(name, fico_itr):
    rng = np.random.default_rng(1)
    sim, cpi, _ = layout(name, rng)
    ours = metrics.instance_retrieval(sim, captions_per_image=cpi)
    assert_same(ours, fico(fico_itr.instance_retrieval, sim, captions_per_image=for_fico(cpi)))


def test_instance_retrieval_default_captions_per_image_matches_fico(fico_itr):
    sim = np.random.default_rng(2).standard_normal((20, 100))
    assert_same(metrics.instance_retrieval(sim), fico(fico_itr.instance_retrieval, sim))


@pytest.mark.parametrize("t2i_transposed", [False, True])
def test_instance_retrieval_t2i_sim_matches_fico(t2i_transposed, fico_itr):
    rng = np.random.default_rng(3)
    cap2img, _ = uneven_map(rng, 20)
    sim = rng.standard_normal((20, len(cap2img)))
    t2i = rng.standard_normal((len(cap2img), 20))
    t2i = t2i.T if t2i_transposed else t2i
    ours = metrics.instance_retrieval(sim, t2i, cap2img)
    assert_same(ours, fico(fico_itr.instance_retrieval, sim, t2i, cap2img.tolist()))


@pytest.mark.parametrize("k", [None, 7])
@pytest.mark.parametrize("labels", ["single", "multi_hot"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_category_retrieval_matches_fico(name, labels, k, fico_itr):
    rng = np.random.default_rng(4)
    sim, cpi, n_images = layout(name, rng)
    lab = make_labels(labels, rng, n_images)
    ours = metrics.category_retrieval(sim, lab, k, captions_per_image=cpi)
    theirs = fico(fico_itr.category_retrieval, sim, lab, k, captions_per_image=for_fico(cpi))
    assert_same(ours, theirs)


def test_category_retrieval_sim2_matches_fico(fico_itr):
    rng = np.random.default_rng(5)
    sim, sim2 = rng.standard_normal((20, 100)), rng.standard_normal((100, 20))
    lab = make_labels("multi_hot", rng, 20)
    ours = metrics.category_retrieval(sim, lab, 10, sim2, 5)
    assert_same(ours, fico(fico_itr.category_retrieval, sim, lab, 10, sim2, 5))


def test_category_retrieval_k_above_candidates_matches_fico(fico_itr):
    rng = np.random.default_rng(6)
    sim, lab = rng.standard_normal((20, 60)), make_labels("single", rng, 20)
    ours = metrics.category_retrieval(sim, lab, k=1000)
    assert_same(ours, fico(fico_itr.category_retrieval, sim, lab, k=1000))


def test_category_retrieval_turns_around_sim2_given_as_images_by_captions():
    # fico-itr would score such a sim2 as image-to-text; here it is read as text-to-image.
    rng = np.random.default_rng(7)
    sim, sim2 = rng.standard_normal((20, 100)), rng.standard_normal((100, 20))
    lab = make_labels("multi_hot", rng, 20)
    expected = metrics.category_retrieval(sim, lab, None, sim2)
    assert metrics.category_retrieval(sim, lab, None, sim2.T) == expected


def test_category_metrics_agrees_with_category_retrieval_at_every_depth():
    rng = np.random.default_rng(8)
    cap2img, _ = uneven_map(rng, 30)
    sim = rng.standard_normal((30, len(cap2img)))
    lab = make_labels("multi_hot", rng, 30)
    i2t, t2i = metrics.category_metrics(sim, lab, captions_per_image=cap2img, map_at=(5, 40, None))
    for k, name in ((5, "mAP@5"), (40, "mAP@40"), (None, "mAP@N")):
        assert_same((i2t[name], t2i[name]), metrics.category_retrieval(sim, lab, k, None, cap2img))


# ---- ties and block boundaries, against an independent stable-sort reference ---------


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a few rows, so that every pass crosses many block boundaries."""
    monkeypatch.setattr(_scan, "BLOCK_ELEMENTS", 150)
    monkeypatch.setattr(embeddings, "_ENGINE_QUERY_CHUNK", 7)


def reference(sim, cap2img, labels, ks, map_at, precision_at):
    """Plain per-query loops over a stable best-first ranking (ties by smaller id)."""
    n_images = labels.shape[0]
    out = []
    for matrix, owner_q, owner_i in ((sim, np.arange(n_images), cap2img),
                                     (sim.T, cap2img, np.arange(n_images))):
        ranks, cat = [], {f"mAP@{k}": [] for k in map_at}
        cat.update({f"P@{k}": [] for k in precision_at})
        for q, row in enumerate(matrix):
            order = np.argsort(-row.astype(np.float64), kind="stable")
            ranks.append(np.flatnonzero(owner_i[order] == owner_q[q])[0])
            rel = (labels[owner_i[order]] & labels[owner_q[q]]).any(axis=1)
            for k in map_at:
                top = rel[:k]
                prec = np.cumsum(top) / np.arange(1, len(top) + 1)
                cat[f"mAP@{k}"].append(prec[top].mean() if top.any() else 0.0)
            for k in precision_at:
                cat[f"P@{k}"].append(rel[:k].sum() / min(k, len(rel)))
        ranks = np.array(ranks)
        d = {f"R@{k}": 100.0 * np.mean(ranks < k) for k in ks}
        d["MedianR"], d["MeanR"] = np.floor(np.median(ranks)) + 1, ranks.mean() + 1
        out.append((d, {key: float(np.mean(v)) for key, v in cat.items()}))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.int8,
                                   np.uint8, np.bool_, "wide_int"])
def test_tied_scores_across_blocks_match_stable_reference(dtype, tiny_blocks):
    rng = np.random.default_rng(15)
    cap2img, _ = uneven_map(rng, 12, 1, 6)
    values = rng.integers(0, 2 if dtype is np.bool_ else 4, (12, len(cap2img)))
    sim = values * 2**40 if dtype == "wide_int" else values.astype(dtype)
    labels = rng.random((12, 5)) < 0.3
    ks, map_at, precision_at = (1, 2, 5, 30), (2, 5, 1000), (1, 3, 1000)
    inst = metrics.instance_retrieval(sim, captions_per_image=cap2img, ks=ks)
    cat = metrics.category_metrics(sim, labels, captions_per_image=cap2img, map_at=map_at,
                                   precision_at=precision_at)
    for (ref_inst, ref_cat), ours_inst, ours_cat in zip(
            reference(sim, cap2img, labels, ks, map_at, precision_at), inst, cat):
        assert_same(ours_inst, ref_inst)
        assert_same(ours_cat, ref_cat)


def test_fico_agreement_holds_across_blocks(tiny_blocks, fico_itr):
    rng = np.random.default_rng(16)
    cap2img, _ = uneven_map(rng, 25)
    sim = rng.standard_normal((25, len(cap2img)))
    lab = make_labels("multi_hot", rng, 25)
    assert_same(metrics.instance_retrieval(sim, None, cap2img),
                fico(fico_itr.instance_retrieval, sim, None, cap2img.tolist()))
    for k in (None, 4):
        assert_same(metrics.category_retrieval(sim, lab, k, None, cap2img),
                    fico(fico_itr.category_retrieval, sim, lab, k, None, cap2img.tolist()))


# ---- hand-computed cases -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.bool_])
def test_instance_ties_rank_the_smaller_id_first(dtype):
    sim = np.ones((2, 4), dtype=dtype)  # two images, captions 0-1 and 2-3, all tied
    i2t, t2i = metrics.instance_retrieval(sim, captions_per_image=2)
    # image 1's best caption (2) has captions 0 and 1 ahead of it; captions 2-3 see image 0 first
    assert i2t == {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MedianR": 2.0, "MeanR": 2.0}
    assert t2i == {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MedianR": 1.0, "MeanR": 1.5}


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_category_ties_rank_the_smaller_id_first(dtype):
    sim = np.zeros((2, 4), dtype=dtype)
    # image 0 sees relevance 1,1,0,0 (AP 1); image 1 sees 0,0,1,1 (AP (1/3 + 2/4) / 2);
    # every caption sees image 0 then image 1: captions 0-1 find their label first (AP 1),
    # captions 2-3 second (AP 1/2)
    i2t, t2i = metrics.category_retrieval(sim, np.array([0, 1]), captions_per_image=2)
    assert i2t == pytest.approx((1 + 5 / 12) / 2)
    assert t2i == pytest.approx(0.75)


def test_instance_ks_reports_any_depth():
    sim = -np.arange(30, dtype=np.float64)[None, :].repeat(3, axis=0)
    # image i's captions are 10i..10i+9, all rows rank captions 0, 1, 2, ...
    i2t, _ = metrics.instance_retrieval(sim, ks=(1, 11, 21, 200))
    assert i2t["R@1"] == pytest.approx(100 / 3)
    assert i2t["R@11"] == pytest.approx(200 / 3)
    assert i2t["R@21"] == 100.0
    assert i2t["R@200"] == 100.0


# Two images (labels 0 and 1), three captions each.  Image 0 ranks the captions
# 0, 3, 2, 4, 5, 1 (relevance 1,0,1,0,0,1); image 1 ranks 5, 4, 3, 2, 1, 0 (1,1,1,0,0,0).
HAND_SIM = np.array([[0.9, 0.1, 0.5, 0.8, 0.3, 0.2],
                     [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
HAND_LABELS = np.array([0, 1])


def test_precision_at_k_hand_computed():
    i2t, t2i = metrics.precision_at_k(HAND_SIM, HAND_LABELS, ks=(1, 2, 3, 6), captions_per_image=3)
    assert i2t == pytest.approx({"P@1": 1.0, "P@2": 0.75, "P@3": 5 / 6, "P@6": 0.5})
    # captions 0, 2, 4, 5 rank their own label's image first; with 2 images P@3 = P@2
    assert t2i == pytest.approx({"P@1": 4 / 6, "P@2": 0.5, "P@3": 0.5, "P@6": 0.5})


def test_map_hand_computed():
    i2t, _ = metrics.category_metrics(HAND_SIM, HAND_LABELS, captions_per_image=3, map_at=(2, None))
    assert i2t["mAP@2"] == pytest.approx((1.0 + 1.0) / 2)
    assert i2t["mAP@N"] == pytest.approx(((1 + 2 / 3 + 3 / 6) / 3 + 1.0) / 2)


def test_pr_curve_hand_computed():
    i2t, _ = metrics.pr_curve(HAND_SIM, HAND_LABELS, captions_per_image=3)
    # image 0: precisions 1, 2/3, 1/2 at its 3 relevant items; image 1: 1, 1, 1
    first = np.array([1, 1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(i2t, (first + 1.0) / 2, rtol=1e-12)


def test_pr_curve_reaches_recall_levels_exactly_and_skips_queries_without_relevant_items():
    # Image 0 (10 captions, relevant) ranks 3 relevant, the 4 captions of image 1, then 7
    # relevant: recall 0.3 is reached exactly at the 3rd relevant item (precision 1).
    # Image 1 has no label, so no relevant item: it must not count in the average.
    ranked = [0, 1, 2, 10, 11, 12, 13, 3, 4, 5, 6, 7, 8, 9]
    sim = np.zeros((2, 14))
    sim[0, ranked] = -np.arange(14)
    labels = np.array([[1], [0]])
    i2t, _ = metrics.pr_curve(sim, labels, captions_per_image=[10, 4])
    expected = np.array([1.0] * 4 + [10 / 14] * 7)
    np.testing.assert_allclose(i2t, expected, rtol=1e-12)


def test_pr_curve_without_any_relevant_item_is_nan():
    i2t, _ = metrics.pr_curve(HAND_SIM, np.zeros((2, 3)), captions_per_image=3)
    assert np.isnan(i2t).all() and i2t.shape == metrics.RECALL_LEVELS.shape


def test_rsum_adds_both_directions():
    i2t = {"R@1": 10.0, "R@5": 20.0, "R@10": 30.0, "MeanR": 5.0}
    t2i = {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0}
    assert metrics.rsum(i2t, t2i) == 66.0
    assert metrics.rsum(i2t, t2i, ks=(10,)) == 33.0


# ---- evaluate: embeddings in, against the matrix metrics -----------------------------


def embedding_case(kind, rng):
    """(image_emb, text_emb, similarity matrix, captions_per_image, labels).

    The embeddings are chosen so that every score is exact in float32 whatever the
    summation order (small integers, or +-1 vectors of 64 dimensions for cosine): the
    engine and NumPy then agree bit for bit, ties included.
    """
    cap2img, _ = uneven_map(rng, 60, 1, 7)
    n_txt = len(cap2img)
    if kind == "ip":
        img = rng.integers(-2, 3, (60, 8)).astype(np.float32)
        txt = rng.integers(-2, 3, (n_txt, 8)).astype(np.float32)
        sim = img @ txt.T
    elif kind == "cosine":
        img = np.where(rng.random((60, 64)) < 0.5, -1, 1).astype(np.float32)
        txt = np.where(rng.random((n_txt, 64)) < 0.5, -1, 1).astype(np.float32)
        sim = (img / 8) @ (txt / 8).T
        img, txt = img * 3, txt * 0.5  # cosine must not depend on the norms
    else:
        width = 3 if kind == "hamming" else 8  # 24 bits (bytes) or 64 bits (one word)
        img = rng.integers(0, 256, (60, width), dtype=np.uint8)
        txt = rng.integers(0, 256, (n_txt, width), dtype=np.uint8)
        sim = -np.unpackbits(img[:, None, :] ^ txt[None, :, :], axis=2).sum(axis=2)
    labels = (rng.random((60, 70)) < 0.05).astype(np.uint8)  # 70 classes: two words
    return img, txt, sim, cap2img, labels


def matrix_reference(sim, cap2img, labels, ks, map_at, precision_at, pr, ranks=True):
    inst = metrics.instance_retrieval(sim, captions_per_image=cap2img, ks=ks)
    cat = metrics.category_metrics(sim, labels, captions_per_image=cap2img, map_at=map_at,
                                   precision_at=precision_at, pr_curve=pr)
    out = []
    for a, b in zip(inst, cat):
        if not ranks:
            del a["MedianR"], a["MeanR"]
        out.append({**a, **b})
    return tuple(out)


@pytest.mark.parametrize("kind", ["ip", "cosine", "hamming", "hamming64"])
def test_evaluate_matches_matrix_metrics(kind):
    pytest.importorskip("cofisearch._core")
    img, txt, sim, cap2img, labels = embedding_case(kind, np.random.default_rng(10))
    ks, map_at, precision_at = (1, 5, 10, 50, 500), (3, 10, None), (1, 5, 1000)
    ours = metrics.evaluate(img, txt, captions_per_image=cap2img, labels=labels, ks=ks,
                            map_at=map_at, precision_at=precision_at, pr_curve=True,
                            metric=None if kind != "ip" else "ip")
    assert_same(ours, matrix_reference(sim, cap2img, labels, ks, map_at, precision_at, True))


@pytest.mark.parametrize("kind", ["ip", "hamming"])
def test_evaluate_engine_top_k_path_matches_matrix_metrics(kind):
    pytest.importorskip("cofisearch._core")
    img, txt, sim, cap2img, labels = embedding_case(kind, np.random.default_rng(11))
    ks, map_at, precision_at = (1, 5, 10, 500), (3, 10, 1000), (1, 5)
    ours = metrics.evaluate(img, txt, captions_per_image=cap2img, labels=labels, ks=ks,
                            map_at=map_at, precision_at=precision_at, ranks=False,
                            metric="ip" if kind == "ip" else "hamming")
    expected = matrix_reference(sim, cap2img, labels, ks, map_at, precision_at, False, ranks=False)
    assert_same(ours, expected)


@pytest.mark.parametrize("ranks", [True, False])
@pytest.mark.parametrize("kind", ["ip", "hamming"])
def test_evaluate_across_blocks_matches_matrix_metrics(kind, ranks, tiny_blocks):
    pytest.importorskip("cofisearch._core")
    img, txt, sim, cap2img, labels = embedding_case(kind, np.random.default_rng(17))
    ks, precision_at = (1, 5, 20), (1, 4)
    map_at = (3, 10, None) if ranks else (3, 10)
    ours = metrics.evaluate(img, txt, captions_per_image=cap2img, labels=labels, ks=ks,
                            map_at=map_at, precision_at=precision_at, pr_curve=ranks,
                            ranks=ranks, metric="ip" if kind == "ip" else "hamming")
    expected = matrix_reference(sim, cap2img, labels, ks, map_at, precision_at, ranks, ranks)
    assert_same(ours, expected)


def test_evaluate_without_ranks_still_reports_map_at_n():
    pytest.importorskip("cofisearch._core")
    img, txt, sim, cap2img, labels = embedding_case("hamming64", np.random.default_rng(18))
    ours = metrics.evaluate(img, txt, captions_per_image=cap2img, labels=labels, ranks=False)
    expected = matrix_reference(sim, cap2img, labels, (1, 5, 10), (10, 100, None), (), False,
                                ranks=False)
    assert_same(ours, expected)


def test_evaluate_single_labels_match_matrix_metrics():
    pytest.importorskip("cofisearch._core")
    rng = np.random.default_rng(12)
    img, txt, sim, cap2img, _ = embedding_case("ip", rng)
    labels = rng.integers(0, 5, 60)
    ours = metrics.evaluate(img, txt, captions_per_image=cap2img, labels=labels, metric="ip")
    assert_same(ours, matrix_reference(sim, cap2img, labels, (1, 5, 10), (10, 100, None), (), False))


def test_evaluate_without_labels_reports_instance_metrics_only():
    pytest.importorskip("cofisearch._core")
    img, txt, sim, cap2img, _ = embedding_case("ip", np.random.default_rng(13))
    ours = metrics.evaluate(img, txt, captions_per_image=cap2img, metric="ip")
    assert_same(ours, metrics.instance_retrieval(sim, captions_per_image=cap2img))


# ---- input checking ------------------------------------------------------------------


S = np.random.default_rng(14).standard_normal((4, 8))
L = np.array([0, 1, 0, 1])
F = np.zeros((4, 3), dtype=np.float32)
T = np.ones((8, 3), dtype=np.float32)

ERRORS = [
    (lambda: metrics.instance_retrieval(np.array([["a", "b"]])), TypeError, "similarity_matrix"),
    (lambda: metrics.instance_retrieval(S[0]), ValueError, "2-D"),
    (lambda: metrics.instance_retrieval(np.zeros((0, 3))), ValueError, "empty"),
    (lambda: metrics.instance_retrieval(np.full((2, 4), np.nan)), ValueError, "NaN"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=3), ValueError, "expects 12 captions"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=0), ValueError, ">= 1"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=2.0), TypeError, "captions_per_image"),
    (lambda: metrics.instance_retrieval(S, captions_per_image="five"), ValueError, "'auto'"),
    (lambda: metrics.instance_retrieval(S[:, :7]), ValueError, "caption -> image map"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=np.full(8, 0.5)), TypeError, "dtype"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=np.ones((4, 2), int)), ValueError, "1-D"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=[2, 2, 2, 1]), ValueError, "sum"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=[0] * 7 + [4]), ValueError, "image ids"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=[0] * 6 + [1, 2]), ValueError, "without a caption"),
    (lambda: metrics.instance_retrieval(S, captions_per_image=[2, 2, 2]), ValueError, "length"),
    (lambda: metrics.instance_retrieval(S, captions_per_image={0: 0}), ValueError, "every caption"),
    (lambda: metrics.instance_retrieval(S, captions_per_image={"a": 0}), TypeError, "dict"),
    (lambda: metrics.instance_retrieval(S[:, :4], captions_per_image=[1, 1, 1, 1]), ValueError, "ambiguous"),
    (lambda: metrics.instance_retrieval(np.zeros((6, 6)), captions_per_image=4), ValueError, "multiple of 4"),
    (lambda: metrics.instance_retrieval(S, S[:3]), ValueError, "t2i_sim"),
    (lambda: metrics.instance_retrieval(S, ks=()), ValueError, "ks"),
    (lambda: metrics.instance_retrieval(S, ks=(0,)), ValueError, ">= 1"),
    (lambda: metrics.instance_retrieval(S, ks=(1.5,)), TypeError, "ks"),
    (lambda: metrics.instance_retrieval(S, ks=5), TypeError, "ks"),
    (lambda: metrics.category_retrieval(S, L, k=0), ValueError, "k must be >= 1"),
    (lambda: metrics.category_retrieval(S, L, k=-3), ValueError, "k must be >= 1"),
    (lambda: metrics.category_retrieval(S, L, k=2.0), TypeError, "k must be an int"),
    (lambda: metrics.category_retrieval(S, L[:3]), ValueError, "one row per image (4)"),
    (lambda: metrics.category_retrieval(S, L[:, None, None]), ValueError, "labels"),
    (lambda: metrics.category_retrieval(S, np.array([None] * 4)), TypeError, "labels"),
    (lambda: metrics.category_retrieval(S, np.zeros((4, 0))), ValueError, "class column"),
    (lambda: metrics.category_retrieval(S, np.array([0.0, np.nan, 1, 1])), ValueError, "NaN"),
    (lambda: metrics.category_retrieval(S, L, sim2=S[:3]), ValueError, "sim2"),
    (lambda: metrics.category_retrieval(np.zeros((6, 6)), L, captions_per_image=4), ValueError, "multiple of 4"),
    (lambda: metrics.category_metrics(S, L, map_at=()), ValueError, "nothing to compute"),
    (lambda: metrics.category_metrics(S, L, pr_curve=1), TypeError, "pr_curve"),
    (lambda: metrics.rsum({"R@1": 1.0}, {"R@1": 1.0}), ValueError, "R@5"),
    (lambda: metrics.rsum([1.0], {}), TypeError, "i2t"),
    (lambda: metrics.evaluate(F.astype(np.int64), T), TypeError, "float"),
    (lambda: metrics.evaluate(F, T.astype(np.uint8)), TypeError, "same dtype"),
    (lambda: metrics.evaluate(F, T[:, :2]), ValueError, "same width"),
    (lambda: metrics.evaluate(F[0], T), ValueError, "2-D"),
    (lambda: metrics.evaluate(F, T, metric="l2"), ValueError, "metric"),
    (lambda: metrics.evaluate(F, T, metric=2), TypeError, "metric"),
    (lambda: metrics.evaluate(F, T, metric="hamming"), TypeError, "packed uint8"),
    (lambda: metrics.evaluate(F.view(np.uint8), T.view(np.uint8), metric="ip"), TypeError, "float"),
    (lambda: metrics.evaluate(F, T), ValueError, "all-zero row"),
    (lambda: metrics.evaluate(T[:4], np.full((8, 3), np.inf, np.float32)), ValueError, "text_emb must be finite"),
    (lambda: metrics.evaluate(F + np.nan, T, metric="ip"), ValueError, "image_emb must be finite"),
    (lambda: metrics.evaluate(T[:4], T, metric="ip", captions_per_image=3), ValueError, "captions_per_image"),
    (lambda: metrics.evaluate(T[:4], T, precision_at=(5,)), ValueError, "need labels"),
    (lambda: metrics.evaluate(T[:4], T, ranks="yes"), TypeError, "ranks"),
]


@pytest.mark.parametrize("call, error, message", ERRORS)
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_ranking_metrics_match_evaluate_on_engine_rankings():
    import cofisearch

    rng = np.random.default_rng(11)
    images = rng.standard_normal((60, 16)).astype(np.float32)
    cap2img = np.repeat(np.arange(60), 5)
    texts = images[cap2img] + 0.8 * rng.standard_normal((300, 16)).astype(np.float32)
    labels = (rng.random((60, 6)) < 0.3).astype(np.uint8)
    expected = metrics.evaluate(images, texts, captions_per_image=cap2img, labels=labels,
                                ks=(1, 5, 10), map_at=(10, 50), metric="ip", ranks=False)
    i2t_ids = cofisearch.dot_knn(texts, images, 50).ids
    t2i_ids = cofisearch.dot_knn(images, texts, 50).ids
    for ids, direction, want in ((i2t_ids, "i2t", expected[0]), (t2i_ids, "t2i", expected[1])):
        got = metrics.ranking_metrics(ids, cap2img, direction=direction, labels=labels,
                                      ks=(1, 5, 10), map_at=(10, 50))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_ranking_metrics_ignore_padding():
    cap2img = np.array([0, 0, 1, 1])
    ids = np.array([[-1, -1], [3, -1]])
    got = metrics.ranking_metrics(ids, cap2img, direction="i2t", ks=(1, 2))
    assert got == {"R@1": 50.0, "R@2": 50.0}


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: metrics.ranking_metrics(np.zeros((2, 2)), np.array([0, 1]), direction="i2t"), TypeError),
        (lambda: metrics.ranking_metrics(np.zeros((2, 2), int), np.array([0, 1]), direction="x"), ValueError),
        (lambda: metrics.ranking_metrics(np.zeros((2, 2), int), np.array([0, 1]), direction="i2t", ks=(5,)), ValueError),
        (lambda: metrics.ranking_metrics(np.full((2, 2), 7), np.array([0, 1]), direction="i2t", ks=(1,)), ValueError),
        (lambda: metrics.ranking_metrics(np.zeros((3, 2), int), np.array([0, 1]), direction="i2t", ks=(1,)), ValueError),
    ],
)
def test_ranking_metrics_reject_bad_input(call, error):
    with pytest.raises(error):
        call()


@pytest.mark.parametrize("magnitude", [1e-22, 1e20])
def test_evaluate_cosine_does_not_depend_on_the_embeddings_scale(magnitude):
    rng = np.random.default_rng(12)
    images = rng.standard_normal((40, 16)).astype(np.float32)
    texts = images + 0.3 * rng.standard_normal((40, 16)).astype(np.float32)
    want = metrics.evaluate(images, texts, captions_per_image=1, metric="cosine")
    got = metrics.evaluate(images * np.float32(magnitude), texts * np.float32(magnitude),
                           captions_per_image=1, metric="cosine")
    assert got == want


@pytest.mark.parametrize("bad, message", [(np.nan, "got nan"), (-1, "labels > 0"), (2, "got 2")])
def test_multi_hot_labels_must_be_zero_or_one(bad, message):
    # NaN labels used to make every item relevant (mAP 1.0), -1 to count as "has label".
    sim = np.random.default_rng(0).standard_normal((10, 10))
    labels = np.eye(10, 3)
    labels[4, 1] = bad
    with pytest.raises(ValueError, match=message):
        metrics.category_retrieval(sim, labels)

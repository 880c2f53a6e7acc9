"""Tests for cofisearch.encoders: binarisers (NumPy only) and the torch encoders."""

import importlib
import sys

import numpy as np
import pytest

import cofisearch
from cofisearch import encoders as enc

IMAGE_DIM, TEXT_DIM, CAPTIONS = 48, 40, 2
TINY = dict(hidden=64)


def _paired(n_images, n_categories, seed):
    """Two different nonlinear noisy views of shared latents = cluster centre + instance part.

    Returns image features, text features (CAPTIONS per image, image-major), the
    caption -> image map and per-image integer category labels.
    """
    rng = np.random.default_rng(seed)
    d_latent = 16
    centres = 1.5 * rng.standard_normal((n_categories, d_latent))
    labels = rng.integers(0, n_categories, n_images)
    latent = centres[labels] + rng.standard_normal((n_images, d_latent))
    caption_to_image = np.repeat(np.arange(n_images), CAPTIONS)
    a_img = rng.standard_normal((d_latent, IMAGE_DIM)) / np.sqrt(d_latent)
    b_img = rng.standard_normal((IMAGE_DIM, IMAGE_DIM)) / np.sqrt(IMAGE_DIM)
    a_txt = rng.standard_normal((d_latent, TEXT_DIM)) / np.sqrt(d_latent)
    image = np.tanh(latent @ a_img) @ b_img
    image += 0.2 * rng.standard_normal(image.shape)
    text = np.sin(latent[caption_to_image] @ a_txt)
    text += 0.2 * rng.standard_normal(text.shape)
    return image.astype(np.float32), text.astype(np.float32), caption_to_image, labels


@pytest.fixture(scope="module")
def data():
    # One seeded draw split into train and test images (and their captions).
    image, text, c2i, labels = _paired(1400, 4, seed=7)
    n_train = 1000
    cut = n_train * CAPTIONS
    return dict(
        train=(image[:n_train], text[:cut], c2i[:cut], labels[:n_train]),
        test=(image[n_train:], text[cut:], c2i[cut:] - n_train, labels[n_train:]),
    )


def _rank_of_match(sim, c2i):
    """Rank (0 = top) of each caption's own image in a (n_text, n_image) similarity."""
    true = sim[np.arange(sim.shape[0]), c2i]
    # Ties count against the match, so a model that gives many items the same code
    # gets no credit for them.
    return (sim >= true[:, None]).sum(axis=1) - 1


def _hamming_similarity(a, b):
    ua = np.unpackbits(a, axis=1).astype(np.int64)
    ub = np.unpackbits(b, axis=1).astype(np.int64)
    # matches - mismatches, a similarity with the Hamming ranking.
    return (2 * ua - 1) @ (2 * ub - 1).T


# --------------------------------------------------------------------------- NumPy only


def test_works_without_torch_until_an_encoder_is_built(monkeypatch):
    # A None entry in sys.modules makes `import torch` raise ImportError; the encoders
    # package and its modules are imported afresh under that block, and the originals
    # put back afterwards.
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in [n for n in sys.modules if n.startswith("cofisearch.encoders")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(cofisearch, "encoders", cofisearch.encoders)
    module = importlib.import_module("cofisearch.encoders")
    x = np.random.default_rng(0).standard_normal((40, 16))
    assert module.ITQBinarizer(8).fit(x).transform(x).shape == (40, 1)
    with pytest.raises(ImportError, match=r'pip install "cofisearch\[torch\]"'):
        module.DualEncoder(16, 8)
    with pytest.raises(ImportError, match="needs PyTorch"):
        module.HashEncoder.load("model.pt")


@pytest.mark.parametrize("cls", [enc.RandomRotationBinarizer, enc.ITQBinarizer])
def test_binarizer_packed_codes_follow_packbits_order(cls):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    b = cls(24, seed=1).fit(x)
    packed, signs = b.transform(x), b.transform(x, packed=False)
    assert packed.dtype == np.uint8 and packed.shape == (300, 3)
    assert signs.dtype == np.int8 and signs.shape == (300, 24)
    assert set(np.unique(signs)) <= {-1, 1}
    np.testing.assert_array_equal(packed, np.packbits(signs > 0, axis=1))
    projected = (x - b.mean_) @ b.projection_
    np.testing.assert_array_equal(signs > 0, projected >= 0)


def test_random_rotation_is_orthogonal_and_seeded():
    x = np.random.default_rng(0).standard_normal((50, 16))
    b = enc.RandomRotationBinarizer(16, seed=3).fit(x)
    np.testing.assert_allclose(b.projection_.T @ b.projection_, np.eye(16), atol=1e-5)
    again = enc.RandomRotationBinarizer(16, seed=3).fit(x)
    np.testing.assert_array_equal(b.transform(x), again.transform(x))
    other = enc.RandomRotationBinarizer(16, seed=4).fit(x)
    assert not np.array_equal(b.projection_, other.projection_)


def test_random_rotation_allows_more_bits_than_dims():
    x = np.random.default_rng(0).standard_normal((20, 8))
    assert enc.RandomRotationBinarizer(64, seed=0).fit_transform(x).shape == (20, 8)


def test_itq_reduces_quantization_error_vs_random_rotation():
    # Clustered embeddings, scaled so a projected coordinate is O(1) like the codes.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 64))[rng.integers(0, 20, 2000)]
    x += 0.3 * rng.standard_normal(x.shape)
    x = (x / np.sqrt(x.var(axis=0).sum() / 32)).astype(np.float32)
    itq = enc.ITQBinarizer(32, n_iter=50, seed=0).fit(x)
    pca_random = enc.ITQBinarizer(32, n_iter=0, seed=0).fit(x)
    random_rotation = enc.RandomRotationBinarizer(32, seed=0).fit(x)
    errors = np.array(itq.quantization_errors_)
    assert len(errors) == 51
    assert np.all(np.diff(errors) <= 1e-6 * errors[0])
    np.testing.assert_allclose(itq.quantization_error(x), errors[-1], rtol=1e-4)
    assert itq.quantization_error(x) < 0.5 * pca_random.quantization_error(x)
    assert itq.quantization_error(x) < 0.5 * random_rotation.quantization_error(x)
    np.testing.assert_allclose(itq.projection_.T @ itq.projection_, np.eye(32), atol=1e-4)


BINARIZER_ERRORS = [
    (lambda: enc.ITQBinarizer(12), ValueError, "multiple of 8"),
    (lambda: enc.ITQBinarizer(0), ValueError, "nbits must be >= 8"),
    (lambda: enc.ITQBinarizer(8.0), TypeError, "nbits must be an int"),
    (lambda: enc.ITQBinarizer(8, n_iter=-1), ValueError, "n_iter"),
    (lambda: enc.ITQBinarizer(16).fit(np.zeros((10, 8))), ValueError, "nbits <= the embedding"),
    (lambda: enc.ITQBinarizer(8).fit(np.zeros((10, 8), np.int32)), TypeError, "dtype int32"),
    (lambda: enc.ITQBinarizer(8).fit(np.zeros(8)), ValueError, "2-D"),
    (lambda: enc.ITQBinarizer(8).fit(np.zeros((1, 8))), ValueError, "at least 2 rows"),
    (lambda: enc.RandomRotationBinarizer(8).fit(np.full((3, 8), np.nan)), ValueError, "NaN"),
    (lambda: enc.RandomRotationBinarizer(8).transform(np.zeros((3, 8))), ValueError,
     "not fitted"),
    (lambda: enc.RandomRotationBinarizer(8).fit(np.ones((3, 8))).transform(np.ones((3, 9))),
     ValueError, "8 columns"),
]


@pytest.mark.parametrize("call, error, message", BINARIZER_ERRORS)
def test_binarizer_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------- torch

torch = pytest.importorskip("torch")


def _fit_dual(train, **kwargs):
    image, text, c2i, _ = train
    model = enc.DualEncoder(IMAGE_DIM, TEXT_DIM, embed_dim=32, **TINY, seed=kwargs.pop("seed", 0))
    return model.fit(image, text, caption_to_image=c2i, epochs=kwargs.pop("epochs", 8),
                     batch_size=128, lr=3e-3, **kwargs)


def _fit_hash(train, loss, epochs=10):
    image, text, c2i, labels = train
    model = enc.HashEncoder(IMAGE_DIM, TEXT_DIM, nbits=32, loss=loss, **TINY, seed=0)
    return model.fit(image, text, caption_to_image=c2i, labels=labels, epochs=epochs,
                     batch_size=128, lr=3e-3)


@pytest.fixture(scope="module")
def dual(data):
    return _fit_dual(data["train"])


@pytest.fixture(scope="module")
def hashers(data):
    return {loss: _fit_hash(data["train"], loss) for loss in ("instance", "category")}


def test_dual_encoder_recall_far_above_chance(dual, data):
    image, text, c2i, _ = data["test"]
    img_emb, txt_emb = dual.encode_image(image), dual.encode_text(text)
    assert img_emb.dtype == np.float32 and img_emb.shape == (len(image), 32)
    assert txt_emb.shape == (len(text), 32)
    np.testing.assert_allclose(np.linalg.norm(img_emb, axis=1), 1.0, atol=1e-5)
    recall_at_10 = (_rank_of_match(txt_emb @ img_emb.T, c2i) < 10).mean()
    chance = 10 / len(image)
    assert recall_at_10 > 0.5 > 10 * chance
    assert dual.loss_history_[-1] < dual.loss_history_[0]


def test_instance_hashing_ranks_exact_match_above_category_hashing(hashers, data):
    image, text, c2i, _ = data["test"]
    recall = {}
    for loss, model in hashers.items():
        sim = _hamming_similarity(model.encode_text(text), model.encode_image(image))
        recall[loss] = (_rank_of_match(sim, c2i) < 10).mean()
    assert recall["instance"] > 0.3
    assert recall["instance"] > 3 * recall["category"]


def test_category_hashing_retrieves_same_category(hashers, data):
    image, text, c2i, labels = data["test"]
    model = hashers["category"]
    sim = _hamming_similarity(model.encode_text(text), model.encode_image(image))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :20]
    precision = (labels[top] == labels[c2i][:, None]).mean()
    chance = np.bincount(labels).max() / len(labels)
    assert precision > 0.85 > chance + 0.4


def test_hash_codes_shapes_dtypes_and_packbits_order(hashers, data):
    image, text, _, _ = data["test"]
    model = hashers["instance"]
    packed = model.encode_image(image[:37], batch_size=10)
    signs = model.encode_image(image[:37], packed=False)
    assert packed.dtype == np.uint8 and packed.shape == (37, 4)
    assert signs.dtype == np.int8 and signs.shape == (37, 32)
    assert set(np.unique(signs)) <= {-1, 1}
    np.testing.assert_array_equal(packed, np.packbits(signs == 1, axis=1))
    # MSB first: bit 0 of the code is the top bit of byte 0.
    np.testing.assert_array_equal(packed[:, 0] >> 7, (signs[:, 0] == 1).astype(np.uint8))
    assert model.encode_text(text[:0]).shape == (0, 4)


def test_hash_bits_are_balanced(hashers, data):
    image, _, _, _ = data["test"]
    signs = hashers["instance"].encode_image(image, packed=False)
    assert np.abs(signs.mean(axis=0)).max() < 0.6


@pytest.mark.parametrize("kind", ["dual", "hash", "reranker"])
def test_save_load_round_trip(kind, dual, hashers, data, tmp_path):
    image, text, _, _ = data["test"]
    path = tmp_path / "model.pt"
    if kind == "dual":
        dual.save(path)
        again = enc.DualEncoder.load(path)
        np.testing.assert_array_equal(dual.encode_text(text), again.encode_text(text))
        np.testing.assert_array_equal(dual.encode_image(image), again.encode_image(image))
        assert again.current_temperature == dual.current_temperature
    elif kind == "hash":
        model = hashers["category"]
        model.save(path)
        again = enc.HashEncoder.load(path)
        assert again.loss == "category" and again.nbits == 32
        np.testing.assert_array_equal(model.encode_image(image), again.encode_image(image))
        np.testing.assert_array_equal(model.encode_text(text), again.encode_text(text))
    else:
        rng = np.random.default_rng(0)
        model = _tiny_reranker().fit(rng.standard_normal((64, 6)),
                                     rng.standard_normal((64, 5)), epochs=1, batch_size=16)
        model.save(path)
        again = enc.CrossAttentionReranker.load(path)
        q, c = rng.standard_normal((4, 6)), rng.standard_normal((4, 3, 5))
        np.testing.assert_array_equal(model(q, c), again(q, c))


def test_read_only_inputs_are_accepted(data):
    image, text, c2i, _ = (np.array(a) for a in data["train"])
    for a in (image, text, c2i):
        a.flags.writeable = False
    model = enc.DualEncoder(IMAGE_DIM, TEXT_DIM, embed_dim=8, hidden=8)
    model.fit(image[:50], text[:100], caption_to_image=c2i[:100], epochs=1, batch_size=50)
    assert model.encode_image(image[:5]).shape == (5, 8)


def test_load_rejects_other_class(dual, tmp_path):
    path = tmp_path / "dual.pt"
    dual.save(path)
    with pytest.raises(ValueError, match="holds a DualEncoder"):
        enc.HashEncoder.load(path)


def test_training_is_deterministic_for_a_seed(data):
    image, text, c2i, labels = data["train"]
    train = (image[:200], text[:400], c2i[:400], labels[:200])
    text = text[:400]
    first = _fit_dual(train, epochs=2)
    second = _fit_dual(train, epochs=2)
    other = _fit_dual(train, epochs=2, seed=1)
    np.testing.assert_array_equal(first.encode_text(text), second.encode_text(text))
    assert first.loss_history_ == second.loss_history_
    assert not np.array_equal(first.encode_text(text), other.encode_text(text))


def test_torch_global_state_is_restored(data):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    image, text, c2i, _ = data["train"]
    model = enc.DualEncoder(IMAGE_DIM, TEXT_DIM, embed_dim=8, hidden=8, num_threads=1)
    model.fit(image[:50], text[:100], caption_to_image=c2i[:100], epochs=1, batch_size=50)
    model.encode_image(image[:5])
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng_state)


def _tiny_reranker(**kwargs):
    return enc.CrossAttentionReranker(6, 5, d_model=16, n_tokens=2, n_heads=2, hidden=16,
                                      **kwargs)


def test_reranker_input_cosine_defaults_to_equal_widths():
    assert enc.CrossAttentionReranker(8, 8, d_model=16, n_heads=2).input_cosine
    assert not enc.CrossAttentionReranker(8, 6, d_model=16, n_heads=2).input_cosine


def test_reranker_calling_contract():
    rng = np.random.default_rng(0)
    model = _tiny_reranker().fit(rng.standard_normal((40, 6)).astype(np.float32),
                                 rng.standard_normal((20, 5)).astype(np.float32),
                                 query_to_candidate=np.arange(40) % 20, epochs=1,
                                 batch_size=8)
    q = rng.standard_normal((7, 6)).astype(np.float32)
    c = rng.standard_normal((7, 9, 5)).astype(np.float32)
    scores = model(q, c, batch_size=3)
    assert scores.dtype == np.float32 and scores.shape == (7, 9)
    # A pair's score does not depend on the other candidates or on batching.
    np.testing.assert_allclose(model(q[2:3], c[2:3, 4:6]), scores[2:3, 4:6], atol=1e-5)
    assert model(q, c[:, :0]).shape == (7, 0)


def test_reranker_learns_to_pick_the_match(data):
    # Text -> image reranking from raw features: each held-out caption against its
    # image and 9 random others; a random order puts the match first 10% of the time.
    image, text, c2i, _ = data["train"]
    model = enc.CrossAttentionReranker(TEXT_DIM, IMAGE_DIM, d_model=32, n_tokens=2,
                                       n_heads=2, hidden=32)
    model.fit(text, image, query_to_candidate=c2i, epochs=4, batch_size=64, lr=3e-3)
    t_image, t_text, t_c2i, _ = data["test"]
    rng = np.random.default_rng(1)
    lists = rng.integers(0, len(t_image), (len(t_text), 10))
    lists[:, 0] = t_c2i
    scores = model(t_text, t_image[lists])
    is_match = lists == t_c2i[:, None]
    best = np.argmax(np.where(is_match, -np.inf, scores), axis=1)
    # Count a win only when the match beats every non-match in its list.
    assert (scores[:, 0] > scores[np.arange(len(scores)), best]).mean() > 0.5


def _fitted_hash():
    rng = np.random.default_rng(0)
    model = enc.HashEncoder(6, 5, nbits=8, hidden=4, loss="category")
    return model.fit(rng.standard_normal((8, 6)), rng.standard_normal((8, 5)),
                     labels=np.arange(8) % 2, epochs=1, batch_size=4)


ZEROS = np.zeros((8, 6), np.float32)
ZEROS_T = np.zeros((8, 5), np.float32)

TORCH_ERRORS = [
    (lambda: enc.HashEncoder(6, 5, nbits=12), ValueError, "multiple of 8"),
    (lambda: enc.HashEncoder(6, 5, loss="pairwise"), ValueError, "loss must be one of"),
    (lambda: enc.HashEncoder(6, 5, loss=1), TypeError, "loss must be a str"),
    (lambda: enc.DualEncoder(0, 5), ValueError, "image_dim must be >= 1"),
    (lambda: enc.DualEncoder(6, 5, hidden="wide"), TypeError, "hidden"),
    (lambda: enc.DualEncoder(6, 5, temperature=0), ValueError, "temperature must be > 0"),
    (lambda: enc.DualEncoder(6, 5, dropout=1.0), ValueError,
     r"dropout must be >= 0 and < 1, got 1\.0"),
    (lambda: enc.DualEncoder(6, 5).encode_image(ZEROS), ValueError, "not trained"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS.astype(np.int64), ZEROS_T), TypeError,
     "image_features must be a floating-point array.*int64"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T[:, :4]), ValueError,
     r"text_features must have 5 columns, got shape \(8, 4\)"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T[:6]), ValueError, "caption_to_image"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T, caption_to_image=np.zeros(8)),
     TypeError, "caption_to_image must be an integer array"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T, caption_to_image=np.full(8, 8)),
     ValueError, r"caption_to_image values must index image_features rows \(0 <= value < 8\)"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T, epochs=0), ValueError,
     "epochs must be >= 1"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T, batch_size=1.5), TypeError,
     "batch_size must be an int"),
    (lambda: enc.DualEncoder(6, 5).fit(ZEROS, ZEROS_T, lr=-1.0), ValueError, "lr must be > 0"),
    (lambda: enc.DualEncoder(6, 5).fit(np.full((8, 6), np.inf), ZEROS_T), ValueError,
     "image_features contains NaN or infinite"),
    (lambda: enc.HashEncoder(6, 5, loss="category").fit(ZEROS, ZEROS_T), ValueError,
     "needs labels"),
    (lambda: enc.HashEncoder(6, 5).fit(ZEROS, ZEROS_T, labels=np.zeros(7, int)), ValueError,
     r"labels must have shape \(8,\)"),
    (lambda: enc.HashEncoder(6, 5).fit(ZEROS, ZEROS_T, labels=np.zeros(8)), TypeError,
     "1-D labels must be integer"),
    (lambda: _fitted_hash().encode_text(ZEROS), ValueError, "text_features must have 5 columns"),
    (lambda: _fitted_hash().encode_image(ZEROS[0]), ValueError, "must be 2-D"),
    (lambda: _fitted_hash().encode_image(ZEROS, batch_size=0), ValueError,
     "batch_size must be >= 1"),
    (lambda: enc.CrossAttentionReranker(6, 5, d_model=10, n_heads=4), ValueError,
     "multiple of n_heads"),
    (lambda: _tiny_reranker(input_cosine=True), ValueError, "query_dim == candidate_dim"),
    (lambda: _tiny_reranker().fit(ZEROS, ZEROS_T, n_random=0), ValueError,
     "at least one negative"),
    (lambda: _tiny_reranker().fit(ZEROS, ZEROS_T, hard_negatives=np.zeros((8, 2))),
     TypeError, "hard_negatives must be an integer array"),
    (lambda: _tiny_reranker().fit(ZEROS, ZEROS_T, hard_negatives=np.full((8, 2), 9)),
     ValueError, "hard_negatives values must index"),
]


@pytest.mark.parametrize("call, error, message", TORCH_ERRORS)
def test_torch_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_reranker_rejects_misshapen_candidates():
    rng = np.random.default_rng(0)
    model = _tiny_reranker().fit(rng.standard_normal((16, 6)), rng.standard_normal((16, 5)),
                                 epochs=1, batch_size=8)
    q = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match=r"candidate_vectors must have shape \(3, c, 5\)"):
        model(q, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(3, c, 5\)"):
        model(q, np.zeros((2, 4, 5), np.float32))
    with pytest.raises(TypeError, match="candidate_vectors must be a floating-point"):
        model(q, np.zeros((3, 4, 5), np.int32))


def test_bfloat16_tensors_are_widened_exactly():
    torch = pytest.importorskip("torch")
    x = torch.randn(6, 16).to(torch.bfloat16)
    index = cofisearch.FloatIndex(16)
    index.add(x)
    np.testing.assert_array_equal(index.vectors, x.float().numpy())

import gzip
import struct

import numpy as np
import pytest

from cofisearch.datasets import (
    BLOCK_IMAGES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    iter_paired,
    load_fashion_mnist,
    load_fico,
    make_paired,
    read_idx,
)

# Small feature sizes keep the generation tests fast; structure tests use defaults.
SMALL = dict(d_image=24, d_text=16, d_latent=8, hidden_image=16, hidden_text=16)
ARRAYS = ("image_features", "text_features", "caption_to_image", "image_labels", "text_labels")


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fit_linear(data):
    """Ridge map text features -> image features on the training split."""
    train = data.train
    x = train.text_features.astype(np.float64)
    y = train.image_features[train.caption_to_image].astype(np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    gram = xc.T @ xc + 1e-3 * len(x) * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ (y - y_mean))
    return lambda text: (text - x_mean) @ weights, y_mean


@pytest.fixture(scope="module")
def structured():
    """Default-parameter data with text->image cosine scores on the test split."""
    data = make_paired(6000, n_test=1000, seed=3)
    to_image, image_mean = _fit_linear(data)
    test = data.test
    scores = _normalise(to_image(test.text_features)) @ _normalise(
        test.image_features - image_mean
    ).T
    return test, scores


# ---------------------------------------------------------------------------
# make_paired / iter_paired
# ---------------------------------------------------------------------------


def test_make_paired_shapes_and_dtypes():
    data = make_paired(300, captions_per_image=4, n_categories=7, seed=0, **SMALL)
    assert data.image_features.shape == (300, 24)
    assert data.image_features.dtype == np.float32
    assert data.text_features.shape == (1200, 16)
    assert data.text_features.dtype == np.float32
    assert data.caption_to_image.dtype == np.int64
    np.testing.assert_array_equal(data.caption_to_image, np.repeat(np.arange(300), 4))
    assert data.image_labels.shape == (300, 7)
    assert data.image_labels.dtype == np.uint8
    assert data.text_labels.shape == (1200, 7)
    assert data.text_labels.dtype == np.uint8


def test_make_paired_same_seed_same_bytes():
    first = make_paired(1500, seed=11, **SMALL)
    second = make_paired(1500, seed=11, **SMALL)
    for name in ARRAYS:
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes(), name


def test_make_paired_other_seed_other_data():
    first = make_paired(200, seed=1, **SMALL)
    second = make_paired(200, seed=2, **SMALL)
    assert not np.array_equal(first.image_features, second.image_features)
    assert not np.array_equal(first.text_features, second.text_features)


@pytest.mark.parametrize("chunk_size", [1, 700, BLOCK_IMAGES, 2500])
def test_iter_paired_matches_make_paired_for_any_chunk_size(chunk_size):
    n_images = 2 * BLOCK_IMAGES + 300 if chunk_size > 1 else 40
    whole = make_paired(n_images, seed=5, **SMALL)
    chunks = list(iter_paired(n_images, seed=5, chunk_size=chunk_size, **SMALL))
    assert [c.start for c in chunks] == list(range(0, n_images, chunk_size))
    for name in ARRAYS:
        joined = np.concatenate([getattr(c, name) for c in chunks])
        assert joined.tobytes() == getattr(whole, name).tobytes(), name


def test_iter_paired_start_skips_images():
    n_images, start = BLOCK_IMAGES + 100, BLOCK_IMAGES - 50
    whole = make_paired(n_images, seed=6, **SMALL)
    (chunk,) = iter_paired(n_images, seed=6, start=start, chunk_size=n_images, **SMALL)
    assert (chunk.start, chunk.stop) == (start, n_images)
    np.testing.assert_array_equal(chunk.image_features, whole.image_features[start:])
    np.testing.assert_array_equal(chunk.text_features, whole.text_features[start * 5 :])
    np.testing.assert_array_equal(chunk.caption_to_image, whole.caption_to_image[start * 5 :])


def test_make_paired_smaller_n_is_a_prefix():
    small = make_paired(BLOCK_IMAGES + 7, seed=9, **SMALL)
    large = make_paired(3 * BLOCK_IMAGES, seed=9, **SMALL)
    for name in ARRAYS:
        prefix = getattr(large, name)[: len(getattr(small, name))]
        np.testing.assert_array_equal(getattr(small, name), prefix, err_msg=name)


def test_make_paired_out_dir_writes_npy_files_equal_to_memory(tmp_path):
    in_memory = make_paired(1100, seed=4, **SMALL)
    on_disk = make_paired(1100, seed=4, out_dir=tmp_path, **SMALL)
    for name in ARRAYS:
        stored = np.load(tmp_path / f"{name}.npy")
        assert stored.tobytes() == getattr(in_memory, name).tobytes(), name
        assert isinstance(getattr(on_disk, name), np.memmap), name


def test_make_paired_out_dir_refuses_to_overwrite(tmp_path):
    make_paired(10, seed=0, out_dir=tmp_path, **SMALL)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_paired(10, seed=0, out_dir=tmp_path, **SMALL)


def test_make_paired_labels_are_multi_hot_and_inherited():
    data = make_paired(3000, n_categories=24, labels_per_item=2.0, seed=8, **SMALL)
    counts = data.image_labels.sum(axis=1)
    assert counts.min() >= 1
    assert abs(counts.mean() - 2.0) < 0.1
    assert (counts > 1).mean() > 0.4
    np.testing.assert_array_equal(data.text_labels, data.image_labels[data.caption_to_image])


def test_make_paired_features_are_standardised():
    data = make_paired(4000, seed=2, feature_noise=0.0)
    for features in (data.image_features, data.text_features):
        assert np.abs(features.mean(axis=0)).max() < 0.15
        np.testing.assert_allclose(features.std(axis=0), 1.0, atol=0.15)


def test_make_paired_split_is_last_n_test_images():
    data = make_paired(500, captions_per_image=3, n_test=120, seed=0, **SMALL)
    assert (data.n_train, data.n_test) == (380, 120)
    test = data.test
    np.testing.assert_array_equal(test.image_features, data.image_features[380:])
    np.testing.assert_array_equal(test.text_features, data.text_features[380 * 3 :])
    np.testing.assert_array_equal(test.caption_to_image, np.repeat(np.arange(120), 3))
    np.testing.assert_array_equal(test.text_labels, data.text_labels[380 * 3 :])
    assert data.train.image_features.shape[0] == 380


def test_make_paired_default_test_split_is_a_tenth():
    assert make_paired(1000, seed=0, **SMALL).n_test == 100


def test_raw_features_do_not_match_across_modalities():
    # Same width, so an identity map is possible; it should be near chance.
    data = make_paired(2000, n_test=1000, seed=1, d_image=128, d_text=128)
    test = data.test
    scores = _normalise(test.text_features) @ _normalise(test.image_features).T
    true = scores[np.arange(len(scores)), test.caption_to_image]
    recall_at_10 = ((scores > true[:, None]).sum(axis=1) < 10).mean()
    assert recall_at_10 < 0.03  # chance is 0.01


def test_linear_baseline_finds_pairs_far_above_chance_but_not_trivially(structured):
    test, scores = structured
    true = scores[np.arange(len(scores)), test.caption_to_image]
    ranks = (scores > true[:, None]).sum(axis=1)
    assert (ranks < 10).mean() > 0.4  # chance is 0.01
    assert (ranks < 1).mean() < 0.7


def test_instance_signal_separates_items_with_identical_labels(structured):
    test, scores = structured
    _, label_set = np.unique(test.image_labels, axis=0, return_inverse=True)
    label_set = label_set.ravel()
    query_set = label_set[test.caption_to_image]
    same_set = query_set[:, None] == label_set[None, :]
    true = scores[np.arange(len(scores)), test.caption_to_image]
    rank_in_set = ((scores > true[:, None]) & same_set).sum(axis=1)
    group_size = same_set.sum(axis=1)
    large = group_size >= 10
    assert large.sum() > 500
    chance = (1.0 / group_size[large]).mean()
    assert (rank_in_set[large] == 0).mean() > 4 * chance


def test_category_signal_same_labels_score_higher(structured):
    test, scores = structured
    shares = (test.text_labels.astype(np.int32) @ test.image_labels.T.astype(np.int32)) > 0
    own = np.zeros_like(shares)
    own[np.arange(len(scores)), test.caption_to_image] = True
    assert scores[shares & ~own].mean() > scores[~shares].mean() + 0.03


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_images=10.0), TypeError, "n_images must be an int"),
        (dict(n_images=True), TypeError, "n_images must be an int"),
        (dict(n_images=0), ValueError, "n_images must be >= 1, got 0"),
        (dict(n_images=10, captions_per_image=0), ValueError, "captions_per_image"),
        (dict(n_images=10, seed=-1), ValueError, "seed must be >= 0"),
        (dict(n_images=10, seed="1"), TypeError, "seed must be an int"),
        (dict(n_images=10, n_test=10), ValueError, r"n_test must be in \[0, 9\], got 10"),
        (dict(n_images=10, category_weight=1.5), ValueError, "category_weight"),
        (dict(n_images=10, labels_per_item=0.5), ValueError, "labels_per_item"),
        (dict(n_images=10, nonlinearity=0.0), ValueError, "nonlinearity"),
        (dict(n_images=10, text_noise=float("nan")), ValueError, "text_noise"),
        (dict(n_images=10, image_noise="0.1"), TypeError, "image_noise must be a real"),
        (dict(n_images=10, out_dir=3), TypeError, "out_dir must be a str"),
        (dict(n_images=2**40, d_text=2**30), ValueError, "2\\*\\*62"),
    ],
)
def test_make_paired_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_paired(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(chunk_size=0), ValueError, "chunk_size must be >= 1"),
        (dict(chunk_size=1.5), TypeError, "chunk_size must be an int"),
        (dict(start=11), ValueError, r"start must be in \[0, 10\]"),
    ],
)
def test_iter_paired_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        iter_paired(10, **kwargs)


# ---------------------------------------------------------------------------
# load_fico
# ---------------------------------------------------------------------------


@pytest.fixture()
def fico_dir(tmp_path):
    rng = np.random.default_rng(0)

    def save(name, array):
        np.save(tmp_path / name, array)

    save("beit3_f30k_img.npy", rng.standard_normal((4, 8)).astype(np.float32))
    save("beit3_f30k_txt.npy", rng.standard_normal((20, 8)).astype(np.float32))
    save("scan_f30k_sim.npy", rng.standard_normal((4, 20)))
    save("blip2_coco_sim_i2t.npy", rng.standard_normal((3, 16)))
    save("blip2_coco_sim_t2i.npy", rng.standard_normal((16, 3)))
    save("adv(64bit)_coco_img.npy", rng.integers(0, 2, (3, 64), dtype=np.int8))
    save("adv(64bit)_coco_txt.npy", rng.integers(0, 2, (15, 64), dtype=np.int8))
    save("flickr30k-karpathy-test-labels.npy", rng.integers(0, 2, (4, 80), dtype=np.uint8))
    save("coco-karpathy-testall-labels.npy", rng.integers(0, 2, (3, 80), dtype=np.uint8))
    save("mscoco_test_indices.npy", np.array([0] * 6 + [1] * 5 + [2] * 5, dtype=np.int64))
    (tmp_path / "notes.txt").write_text("not a result file")
    return tmp_path


def test_load_fico_finds_models_and_datasets(fico_dir):
    found = load_fico(fico_dir)
    assert found.models == ("adv(64bit)", "beit3", "blip2", "scan")
    assert found.datasets == ("coco", "f30k")
    assert sorted(found.outputs) == [
        ("adv(64bit)", "coco"),
        ("beit3", "f30k"),
        ("blip2", "coco"),
        ("scan", "f30k"),
    ]


def test_load_fico_sorts_outputs_by_kind(fico_dir):
    found = load_fico(fico_dir)
    assert found["beit3", "f30k"].kind == "embeddings"
    assert found["scan", "f30k"].kind == "similarity"
    blip2 = found["blip2", "coco"]
    assert blip2.kind == "directional"
    assert blip2.similarity_i2t.shape == (3, 16)
    assert blip2.similarity_t2i.shape == (16, 3)


def test_load_fico_memory_maps_by_default(fico_dir):
    beit3 = load_fico(fico_dir)["beit3", "f30k"]
    assert isinstance(beit3.image_embeddings, np.memmap)
    np.testing.assert_array_equal(beit3.text_embeddings, np.load(fico_dir / "beit3_f30k_txt.npy"))
    in_memory = load_fico(fico_dir, mmap_mode=None)["beit3", "f30k"]
    assert not isinstance(in_memory.image_embeddings, np.memmap)


def test_load_fico_maps_label_files_to_short_dataset_names(fico_dir):
    found = load_fico(fico_dir)
    assert sorted(found.labels) == ["coco", "f30k"]
    np.testing.assert_array_equal(
        found["scan", "f30k"].labels, np.load(fico_dir / "flickr30k-karpathy-test-labels.npy")
    )


def test_load_fico_attaches_caption_map_only_when_lengths_match(fico_dir):
    found = load_fico(fico_dir)
    np.testing.assert_array_equal(
        found["blip2", "coco"].caption_to_image, np.load(fico_dir / "mscoco_test_indices.npy")
    )
    assert found["adv(64bit)", "coco"].caption_to_image is None


def test_load_fico_filters_models_and_datasets(fico_dir):
    found = load_fico(fico_dir, models=["beit3", "blip2"], datasets="coco")
    assert list(found.outputs) == [("blip2", "coco")]


def test_load_fico_rejects_directory_without_result_files(tmp_path):
    np.save(tmp_path / "something.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"no FiCo-ITR model outputs.*_img\.npy"):
        load_fico(tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_fico(tmp_path)


def test_load_fico_rejects_filters_matching_nothing(fico_dir):
    with pytest.raises(ValueError, match="models=\\['vsrn'\\]"):
        load_fico(fico_dir, models="vsrn")


def test_load_fico_rejects_embeddings_without_partner(fico_dir):
    (fico_dir / "beit3_f30k_txt.npy").unlink()
    with pytest.raises(ValueError, match="beit3_f30k_img.npy but not beit3_f30k_txt.npy"):
        load_fico(fico_dir)


def test_load_fico_rejects_mismatched_embedding_widths(fico_dir):
    np.save(fico_dir / "beit3_f30k_txt.npy", np.zeros((20, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="same width"):
        load_fico(fico_dir)


def test_load_fico_rejects_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fico(tmp_path / "absent")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mmap_mode="w"), ValueError, "mmap_mode must be one of"),
        (dict(models=3), TypeError, "models must be None, a str or an iterable"),
        (dict(datasets=[1]), TypeError, "datasets must hold str"),
    ],
)
def test_load_fico_rejects_bad_arguments(fico_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_fico(fico_dir, **kwargs)


# ---------------------------------------------------------------------------
# IDX / Fashion-MNIST
# ---------------------------------------------------------------------------


def _idx_bytes(array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_idx(path, array, type_code=0x08, compress=True):
    data = _idx_bytes(array, type_code)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _write_fashion(directory, rng, n_train=5, n_test=3):
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_read_idx_reads_gzip_uint8(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    _write_idx(tmp_path / "images.gz", images)
    result = read_idx(tmp_path / "images.gz")
    np.testing.assert_array_equal(result, images)
    assert result.dtype == np.uint8


def test_read_idx_reads_uncompressed_big_endian_int32(tmp_path):
    values = np.random.default_rng(1).integers(-(2**31), 2**31 - 1, 7, dtype=np.int32)
    _write_idx(tmp_path / "values", values, type_code=0x0C, compress=False)
    result = read_idx(tmp_path / "values")
    np.testing.assert_array_equal(result, values)
    assert result.dtype == np.dtype("=i4")


def test_read_idx_rejects_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_read_idx_rejects_truncated_payload(tmp_path):
    data = _idx_bytes(np.zeros((2, 3), dtype=np.uint8), 0x08)
    (tmp_path / "short").write_bytes(data[:-1])
    with pytest.raises(ValueError, match="5 bytes of data, expected 6"):
        read_idx(tmp_path / "short")


def test_load_fashion_mnist_reads_directory(tmp_path):
    _write_fashion(tmp_path, np.random.default_rng(2))
    data = load_fashion_mnist(tmp_path)
    assert data.train_images.shape == (5, 28, 28)
    assert data.train_images.dtype == np.uint8
    assert data.train_labels.shape == (5,)
    assert data.test_images.shape == (3, 28, 28)
    assert data.test_labels.shape == (3,)


def test_load_fashion_mnist_flattens(tmp_path):
    _write_fashion(tmp_path, np.random.default_rng(3))
    nested = load_fashion_mnist(tmp_path)
    flat = load_fashion_mnist(tmp_path, flatten=True)
    assert flat.train_images.shape == (5, 784)
    np.testing.assert_array_equal(flat.test_images, nested.test_images.reshape(3, 784))


def test_load_fashion_mnist_rejects_label_count_mismatch(tmp_path):
    _write_fashion(tmp_path, np.random.default_rng(4))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match="must hold 3 labels"):
        load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_missing_files_name_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_load_fashion_mnist_real_files():
    data = load_fashion_mnist()
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.train_labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.test_labels), np.full(10, 1000))
    assert len(FASHION_MNIST_CLASSES) == 10

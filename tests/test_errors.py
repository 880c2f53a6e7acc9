"""Every bad input raises a typed error naming the argument (STYLE.md, errors table)."""

import os

import numpy as np
import pytest

import cofisearch

U8 = np.zeros((4, 8), dtype=np.uint8)
F32 = np.zeros((4, 8), dtype=np.float32)


def _binary():
    index = cofisearch.BinaryIndex(64)
    index.add(U8)
    return index


def _float():
    index = cofisearch.FloatIndex(8)
    index.add(F32 + 1)
    return index


CASES = [
    # constructors
    ("nbits not a multiple of 8", lambda: cofisearch.BinaryIndex(60), ValueError, "nbits"),
    ("nbits zero", lambda: cofisearch.BinaryIndex(0), ValueError, "nbits"),
    ("nbits float", lambda: cofisearch.BinaryIndex(64.0), TypeError, "nbits"),
    ("nbits bool", lambda: cofisearch.BinaryIndex(True), TypeError, "nbits"),
    ("dim zero", lambda: cofisearch.FloatIndex(0), ValueError, "dim"),
    ("unknown metric", lambda: cofisearch.FloatIndex(8, metric="l2"), ValueError, "metric"),
    # add
    ("codes not uint8", lambda: _binary().add(U8.astype(np.int8)), TypeError, "codes"),
    ("codes float", lambda: _binary().add(U8.astype(np.float32)), TypeError, "codes"),
    ("codes bool", lambda: _binary().add(U8.astype(bool)), TypeError, "codes"),
    ("codes wrong width", lambda: _binary().add(np.zeros((2, 16), np.uint8)), ValueError, "codes"),
    ("codes 3-D", lambda: _binary().add(np.zeros((2, 2, 8), np.uint8)), ValueError, "codes"),
    ("vectors int", lambda: _float().add(np.zeros((2, 8), np.int64)), TypeError, "vectors"),
    ("vectors wrong dim", lambda: _float().add(np.zeros((2, 9), np.float32)), ValueError, "vectors"),
    ("vectors NaN", lambda: _float().add(np.full((1, 8), np.nan)), ValueError, "vectors"),
    ("vectors inf", lambda: _float().add(np.full((1, 8), np.inf)), ValueError, "vectors"),
    ("vectors overflow float32", lambda: _float().add(np.full((1, 8), 1e300)), ValueError, "vectors"),
    # search
    ("binary k zero", lambda: _binary().search(U8, 0), ValueError, "k"),
    ("binary k float", lambda: _binary().search(U8, 2.0), TypeError, "k"),
    ("binary queries not uint8", lambda: _binary().search(U8.astype(np.uint16), 1), TypeError, "queries"),
    ("binary queries width", lambda: _binary().search(np.zeros((1, 4), np.uint8), 1), ValueError, "queries"),
    ("binary queries 3-D", lambda: _binary().search(np.zeros((1, 1, 8), np.uint8), 1), ValueError, "queries"),
    ("binary empty index", lambda: cofisearch.BinaryIndex(64).search(U8, 1), ValueError, "empty"),
    ("binary num_threads zero", lambda: _binary().search(U8, 1, num_threads=0), ValueError, "num_threads"),
    ("float k negative", lambda: _float().search(F32, -1), ValueError, "k"),
    ("float queries int", lambda: _float().search(U8, 1), TypeError, "queries"),
    ("float queries dim", lambda: _float().search(np.zeros((1, 3), np.float32), 1), ValueError, "queries"),
    ("float empty index", lambda: cofisearch.FloatIndex(8).search(F32, 1), ValueError, "empty"),
    ("float queries NaN", lambda: _float().search(np.full(8, np.nan), 1), ValueError, "queries"),
    ("candidates float", lambda: _float().search(F32, 1, candidates=np.zeros((4, 2))), TypeError, "candidates"),
    ("candidates rows", lambda: _float().search(F32, 1, candidates=np.zeros((3, 2), np.int64)), ValueError, "candidates"),
    ("candidates id too large", lambda: _float().search(F32, 1, candidates=np.full((4, 2), 4)), ValueError, "candidates"),
    ("candidates id below -1", lambda: _float().search(F32, 1, candidates=np.full((4, 2), -2)), ValueError, "candidates"),
    # free functions
    ("hamming_knn float database", lambda: cofisearch.hamming_knn(F32, U8, 1), TypeError, "database"),
    ("hamming_knn empty database", lambda: cofisearch.hamming_knn(np.zeros((0, 8), np.uint8), U8, 1), ValueError, "database"),
    ("hamming_knn width mismatch", lambda: cofisearch.hamming_knn(U8, np.zeros((1, 9), np.uint8), 1), ValueError, "queries"),
    ("dot_knn int database", lambda: cofisearch.dot_knn(U8, F32, 1), TypeError, "database"),
    ("dot_knn dim mismatch", lambda: cofisearch.dot_knn(F32, np.zeros((1, 3), np.float32), 1), ValueError, "queries"),
    # bits
    ("pack_bits width", lambda: cofisearch.pack_bits(np.zeros((2, 12), bool)), ValueError, "bits"),
    ("pack_bits values", lambda: cofisearch.pack_bits(np.full((1, 8), 2)), ValueError, "bits"),
    ("pack_bits mixed -1 and 0", lambda: cofisearch.pack_bits(np.array([[-1, 0, 1, 1, 1, 1, 1, 1]])), ValueError, "bits"),
    ("pack_bits strings", lambda: cofisearch.pack_bits(np.array([["a"] * 8])), TypeError, "bits"),
    ("unpack_bits nbits", lambda: cofisearch.unpack_bits(U8, 60), ValueError, "nbits"),
    ("unpack_bits mismatch", lambda: cofisearch.unpack_bits(U8, 128), ValueError, "codes"),
    ("unpack_bits dtype", lambda: cofisearch.unpack_bits(F32, 64), TypeError, "codes"),
    # settings
    ("unknown simd level", lambda: cofisearch.set_simd_level("avx1024"), ValueError, "avx1024"),
    ("simd level not a string", lambda: cofisearch.set_simd_level(2), TypeError, "level"),
    ("threads zero", lambda: cofisearch.set_num_threads(0), ValueError, "n"),
    # persistence
    ("load missing file", lambda: cofisearch.load_index("/nonexistent/index.cofi"), ValueError, "index.cofi"),
]


@pytest.mark.parametrize("call, error, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_typed_error_naming_the_argument(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


def test_bad_input_leaves_the_index_unchanged():
    index = _binary()
    with pytest.raises(TypeError):
        index.add(np.zeros((3, 8), np.int16))
    assert index.ntotal == 4


def test_forcing_a_level_the_processor_lacks_is_an_error():
    missing = [lvl for lvl in ("scalar", "avx2", "avx512") if lvl not in cofisearch.available_simd_levels()]
    if not missing:
        pytest.skip("this processor supports every SIMD level")
    with pytest.raises(ValueError, match="not supported"):
        cofisearch.set_simd_level(missing[-1])


def test_core_rejects_a_negative_row_norm_bound():
    db = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="row_norm"):
        cofisearch._core.dot_search(db, 4, db[:1], 1, 1, -1.0)


def test_masked_arrays_are_refused_not_unmasked():
    codes = np.ma.masked_array(np.zeros((3, 8), dtype=np.uint8), mask=False)
    with pytest.raises(TypeError, match="codes must not be a masked array"):
        cofisearch.BinaryIndex(64).add(codes)


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.cofi"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        cofisearch.load_index(fifo)


def test_nan_scores_from_a_reranker_are_refused():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    coarse, fine = cofisearch.BinaryIndex(64), cofisearch.FloatIndex(8)
    coarse.add(codes)
    fine.add(vectors)
    cascade = cofisearch.Cascade(coarse, fine, n_candidates=10,
                                 reranker=lambda q, ids: np.full(ids.shape, np.nan))
    with pytest.raises(ValueError, match="reranker must return real scores"):
        cascade.search(codes[:2], vectors[:2], 3)


def test_plus_infinity_in_a_similarity_matrix_is_refused():
    sim = np.eye(5)
    sim[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        cofisearch.metrics.instance_retrieval(sim, captions_per_image=1)


@pytest.mark.parametrize("search", [
    lambda k: cofisearch.hamming_knn(np.zeros((100, 8), dtype=np.uint8), np.zeros((1, 8), dtype=np.uint8), k),
    lambda k: cofisearch.dot_knn(np.ones((100, 4), dtype=np.float32), np.ones((1, 4), dtype=np.float32), k),
])
def test_a_k_whose_results_cannot_fit_is_refused_before_any_work(search):
    # 2**31 results of 12 bytes: 24 GiB of padding for 100 rows, refused in microseconds.
    if cofisearch._checks.mem_available_bytes() is None:
        pytest.skip("no /proc/meminfo to check memory against")
    with pytest.raises(ValueError, match=r"k=2147483648 for 1 queries over 100 rows needs"):
        search(2**31)

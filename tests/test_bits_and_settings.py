import os
import subprocess
import sys

import numpy as np
import pytest

import cofisearch


@pytest.mark.parametrize(
    "form",
    [
        lambda b: b.astype(bool),
        lambda b: b.astype(np.uint8),
        lambda b: b.astype(np.int64),
        lambda b: (2 * b.astype(np.int8) - 1),
        lambda b: (2.0 * b - 1).astype(np.float32),
        lambda b: b.astype(np.float64),
    ],
    ids=["bool", "uint8 01", "int64 01", "int8 pm1", "float32 pm1", "float64 01"],
)
def test_pack_bits_accepts_the_forms_hashing_models_emit(form):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (20, 72))
    packed = cofisearch.pack_bits(form(bits))
    np.testing.assert_array_equal(packed, np.packbits(bits.astype(bool), axis=1))
    np.testing.assert_array_equal(cofisearch.unpack_bits(packed, 72), bits)


def test_pack_bits_first_bit_is_the_most_significant():
    bits = np.zeros((1, 8), dtype=np.int8) - 1
    bits[0, 0] = 1
    assert cofisearch.pack_bits(bits).tolist() == [[128]]


def test_pack_and_unpack_a_single_code():
    code = cofisearch.pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 1]))
    assert code.shape == (1,) and code[0] == 129
    assert cofisearch.unpack_bits(code, 8).tolist() == [1, 0, 0, 0, 0, 0, 0, 1]


def test_packed_bits_give_hamming_distances_of_the_bits():
    rng = np.random.default_rng(1)
    a = rng.choice([-1, 1], (40, 64))
    b = rng.choice([-1, 1], (3, 64))
    d, i = cofisearch.hamming_knn(cofisearch.pack_bits(a), cofisearch.pack_bits(b), 40)
    expected = (b[:, None, :] != a[None, :, :]).sum(axis=2)
    np.testing.assert_array_equal(d, np.take_along_axis(expected, i, axis=1))


def test_simd_level_names_are_consistent():
    levels = cofisearch.available_simd_levels()
    assert levels[0] == "scalar"
    assert set(levels) <= {"scalar", "avx2", "avx512"}
    assert cofisearch.simd_level() in levels


def _python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


@pytest.mark.parametrize("level", cofisearch.available_simd_levels())
def test_environment_variable_selects_the_level(level):
    out = _python("import cofisearch; print(cofisearch.simd_level())", COFISEARCH_SIMD=level)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == level


def test_environment_variable_with_unknown_level_fails_at_import():
    out = _python("import cofisearch", COFISEARCH_SIMD="sse9")
    assert out.returncode != 0
    assert "COFISEARCH_SIMD" in out.stderr and "ValueError" in out.stderr


def test_num_threads_setting_round_trips():
    before = cofisearch.get_num_threads()
    try:
        cofisearch.set_num_threads(3)
        assert cofisearch.get_num_threads() == 3
    finally:
        cofisearch.set_num_threads(before)

import numpy as np
import pytest

import cofisearch


@pytest.fixture(params=cofisearch.available_simd_levels())
def simd(request):
    """Runs a test once per SIMD level this processor supports, restoring the level after."""
    before = cofisearch.simd_level()
    cofisearch.set_simd_level(request.param)
    yield request.param
    cofisearch.set_simd_level(before)


def hamming_reference(database, queries, k):
    """Plain NumPy top-k: popcount of the XOR, stable sort on distance then id."""
    dist = np.unpackbits(queries[:, None, :] ^ database[None, :, :], axis=2).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(dist, order, axis=1).astype(np.int32)
    pad = k - order.shape[1]
    if pad > 0:
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=cofisearch.HAMMING_SENTINEL)
        order = np.pad(order, ((0, 0), (0, pad)), constant_values=-1)
    return d, order.astype(np.int64)


def block_rows(kind, row_bytes, nq):
    """Rows per full cache block of a native `kind` ("hamming" or "dot") scan of nq queries,
    computed by the driver's own code (cpp/search.cpp, through a private _core function)."""
    return cofisearch._core._block_rows(kind, row_bytes, nq)

"""Type stub of the compiled module (cpp/bindings.cpp); tests/test_core_stub.py checks it
against the module, so that it cannot drift."""

from typing import Final

import numpy as np
import numpy.typing as npt

__version__: Final[str]
HAMMING_SENTINEL: Final[int]
SCORE_SENTINEL: Final[float]

def simd_level() -> str: ...
def available_simd_levels() -> list[str]: ...
def set_simd_level(level: str) -> None: ...
def hamming_search(
    codes: npt.NDArray[np.uint8],
    n: int,
    queries: npt.NDArray[np.uint8],
    k: int,
    num_threads: int,
    allow: npt.NDArray[np.uint64] | None = ...,
    ids: npt.NDArray[np.int64] | None = ...,
    ids_ascending: bool = ...,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def hamming_gather(
    codes: npt.NDArray[np.uint8],
    n: int,
    queries: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.int64],
    k: int,
    num_threads: int,
    ids: npt.NDArray[np.int64] | None = ...,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def dot_search(
    database: npt.NDArray[np.float32],
    n: int,
    queries: npt.NDArray[np.float32],
    k: int,
    num_threads: int,
    row_norm: float = ...,
    allow: npt.NDArray[np.uint64] | None = ...,
    ids: npt.NDArray[np.int64] | None = ...,
    ids_ascending: bool = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def dot_gather(
    database: npt.NDArray[np.float32],
    n: int,
    queries: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    k: int,
    num_threads: int,
    ids: npt.NDArray[np.int64] | None = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def all_finite(array: npt.NDArray[np.float32]) -> bool: ...
def dot_pack(database: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def dot_search_packed(
    panel: npt.NDArray[np.float32],
    n: int,
    queries: npt.NDArray[np.float32],
    k: int,
    num_threads: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def dot_route(
    database: npt.NDArray[np.float32],
    panel: npt.NDArray[np.float32],
    row_norm: float,
    queries: npt.NDArray[np.float32],
    k: int,
    num_threads: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def dot_scores_packed(
    panel: npt.NDArray[np.float32],
    n: int,
    queries: npt.NDArray[np.float32],
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def dot_rerank(
    database: npt.NDArray[np.float32],
    n: int,
    queries: npt.NDArray[np.float32],
    candidates: npt.NDArray[np.int64],
    k: int,
    num_threads: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def ivf_search(
    codes: npt.NDArray[np.uint8],
    ids: npt.NDArray[np.int64],
    list_start: npt.NDArray[np.int64],
    list_size: npt.NDArray[np.int64],
    queries: npt.NDArray[np.uint8],
    probes: npt.NDArray[np.int64],
    k: int,
    num_threads: int,
    allow: npt.NDArray[np.uint64] | None = ...,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def ivf_asym_search(
    codes: npt.NDArray[np.uint8],
    factors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    list_start: npt.NDArray[np.int64],
    list_size: npt.NDArray[np.int64],
    planes: npt.NDArray[np.uint8],
    qbits: int,
    consts: npt.NDArray[np.float32],
    probes: npt.NDArray[np.int64],
    bias: npt.NDArray[np.float32],
    k: int,
    num_threads: int,
    allow: npt.NDArray[np.uint64] | None = ...,
    panel: npt.NDArray[np.uint64] | None = ...,
    panel_start: npt.NDArray[np.int64] | None = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def ivf_asym_query(
    codes: npt.NDArray[np.uint8],
    factors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    list_start: npt.NDArray[np.int64],
    list_size: npt.NDArray[np.int64],
    centroids: npt.NDArray[np.float32],
    centroid_panel: npt.NDArray[np.float32],
    row_norm: float,
    scale: npt.NDArray[np.float32],
    rotation_panel: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32],
    qbits: int,
    nprobe: int,
    k: int,
    num_threads: int,
    allow: npt.NDArray[np.uint64] | None = ...,
    panel: npt.NDArray[np.uint64] | None = ...,
    panel_start: npt.NDArray[np.int64] | None = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def quantize_queries(
    rotated: npt.NDArray[np.float32], qbits: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]: ...

# Private, for the tests: what the scan drivers decide (cpp/search.h).
def _block_rows(kind: str, row_bytes: int, nq: int) -> int: ...
def _scan_blocks(kind: str, row_bytes: int, nq: int, n: int) -> list[int]: ...
def _dot_path(nq: int) -> str: ...
def _force_dot_path(path: str) -> None: ...
def _hamming_path(nq: int, nbytes: int, n: int = ...) -> str: ...
def _force_hamming_path(path: str) -> None: ...

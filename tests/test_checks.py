"""The shared validation vocabulary: each checker's accepted values and its errors, as a
table of (call, exception, message fragment naming the argument)."""

import numpy as np
import pytest

from cofisearch import _checks as c

REJECTED = [
    (lambda: c.check_int(True, "n"), TypeError, "n must be an integer, got bool"),
    (lambda: c.check_int(2.0, "n"), TypeError, "n must be an integer, got float"),
    (lambda: c.check_int(3, "n", minimum=4), ValueError, "n must be >= 4, got 3"),
    (lambda: c.check_int(9, "n", minimum=0, maximum=8), ValueError, r"n must be in \[0, 8\], got 9"),
    (lambda: c.check_positive_int(0, "k"), ValueError, "k must be >= 1, got 0"),
    (lambda: c.check_float("1", "lr"), TypeError, "lr must be a real number, got str"),
    (lambda: c.check_float(np.nan, "lr"), ValueError, "lr must be finite"),
    (lambda: c.check_float(0.0, "lr", above=0), ValueError, "lr must be > 0, got 0.0"),
    (lambda: c.check_float(1.0, "p", minimum=0, below=1), ValueError, "p must be >= 0 and < 1"),
    (lambda: c.check_choice("l2", "metric", ("ip", "cosine")), ValueError, "metric must be one of 'ip', 'cosine', got 'l2'"),
    (lambda: c.check_int_sequence("1,2", "ks"), TypeError, "ks must be a sequence of integers"),
    (lambda: c.check_int_sequence([1, 0], "ks"), ValueError, "every entry of ks must be >= 1"),
    (lambda: c.check_int_sequence([], "ks"), ValueError, "ks must hold at least one value"),
    (lambda: c.check_nbits(12), ValueError, "nbits must be a multiple of 8, got 12"),
    (lambda: c.check_bool(1, "overwrite"), TypeError, "overwrite must be a bool, got int"),
    (lambda: c.check_path(3, "out"), TypeError, "out must be a str or os.PathLike, got int"),
]


@pytest.mark.parametrize("call, exc, message", REJECTED)
def test_rejected_with_the_argument_named(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_accepted_values_come_back_canonical():
    assert type(c.check_int(np.int16(5), "n")) is int
    assert type(c.check_float(np.float32(0.5), "p", minimum=0, maximum=1)) is float
    assert c.check_int_sequence([5, 1, 5, None], "ks", allow_none=True) == (5, 1, None)
    assert c.check_choice("ip", "metric", ("ip", "cosine")) == "ip"


def test_output_dir_is_created_and_proven_writable(tmp_path):
    out = c.check_output_dir(tmp_path / "a" / "b", "out")
    assert out.is_dir() and list(out.iterdir()) == []


def test_output_dir_under_a_file_is_rejected_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="out must be a writable directory"):
        c.check_output_dir(blocker / "sub", "out")


def test_readable_file_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        c.check_readable_file(tmp_path / "missing.npy", "path")
    with pytest.raises(ValueError, match="is a directory"):
        c.check_readable_file(tmp_path, "path")


def test_multi_hot_accepts_bools_and_zero_one_numbers():
    assert c.check_multi_hot(np.array([[True, False]]), "labels").dtype == bool
    c.check_multi_hot(np.array([[0.0, 1.0]]), "labels")


def test_result_size_reads_available_memory_only_for_large_results(monkeypatch):
    # Reading /proc/meminfo costs more than a small search: small results skip it, large
    # ones are still checked against it.
    reads = []

    def available():
        reads.append(1)
        return 1 << 30

    monkeypatch.setattr(c, "mem_available_bytes", available)
    c.check_result_size(1, 4, 6000)
    assert reads == []
    with pytest.raises(ValueError, match="k=100000000 for 2 queries"):
        c.check_result_size(2, 10**8, 100)
    assert reads == [1]


def test_result_size_counts_selection_per_chunk_where_the_search_selects_in_chunks(monkeypatch):
    # 10^6 queries at k=1000 over 10^6 rows: 12 GB of results either way, plus 40 GB of
    # selection when every query selects at once, and a few MB per thread in chunks.
    monkeypatch.setattr(c, "mem_available_bytes", lambda: 20 << 30)
    with pytest.raises(ValueError, match="needs 48.4 GiB"):
        c.check_result_size(10**6, 1000, 10**6)
    c.check_result_size(10**6, 1000, 10**6, threads=2)
    monkeypatch.setattr(c, "mem_available_bytes", lambda: 10 << 30)
    with pytest.raises(ValueError, match="needs 11.2 GiB"):
        c.check_result_size(10**6, 1000, 10**6, threads=2)

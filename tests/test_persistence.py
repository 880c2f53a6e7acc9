import os
import pickle

import numpy as np
import pytest

import cofisearch


def _indexes():
    rng = np.random.default_rng(0)
    b = cofisearch.BinaryIndex(72)
    b.add(rng.integers(0, 256, (333, 9), dtype=np.uint8))
    f = cofisearch.FloatIndex(13, metric="cosine")
    f.add(rng.standard_normal((250, 13)))
    return [b, f]


def _queries(index):
    rng = np.random.default_rng(1)
    if index.kind == "binary":
        return rng.integers(0, 256, (7, index.code_size), dtype=np.uint8)
    return rng.standard_normal((7, index.dim)).astype(np.float32)


def _assert_same(a, b):
    assert type(a) is type(b) and a.ntotal == b.ntotal and repr(a) == repr(b)
    q = _queries(a)
    ra, rb = a.search(q, 10), b.search(q, 10)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.distances, rb.distances)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("which", [0, 1])
def test_save_load_round_trip(tmp_path, which, mmap):
    index = _indexes()[which]
    path = tmp_path / "index.cofi"
    index.save(path)
    _assert_same(index, cofisearch.load_index(path, mmap=mmap))


def test_mmap_index_is_read_only_and_copies_on_add(tmp_path):
    index = _indexes()[0]
    path = tmp_path / "index.cofi"
    index.save(path)
    before = path.read_bytes()
    loaded = cofisearch.load_index(str(path), mmap=True)
    assert isinstance(loaded.codes.base, np.memmap) or isinstance(loaded.codes, np.memmap)
    loaded.add(np.zeros((5, 9), dtype=np.uint8))
    assert loaded.ntotal == 338
    assert path.read_bytes() == before


@pytest.mark.parametrize("which", [0, 1])
def test_pickle_round_trip(which):
    index = _indexes()[which]
    _assert_same(index, pickle.loads(pickle.dumps(index)))


def test_empty_index_round_trips(tmp_path):
    path = tmp_path / "empty.cofi"
    cofisearch.FloatIndex(4).save(path)
    for mmap in (False, True):
        loaded = cofisearch.load_index(path, mmap=mmap)
        assert loaded.ntotal == 0 and loaded.dim == 4


def test_truncated_file_is_rejected(tmp_path):
    path = tmp_path / "index.cofi"
    _indexes()[0].save(path)
    data = path.read_bytes()
    for cut in (10, 64, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="index.cofi"):
            cofisearch.load_index(path)


@pytest.mark.parametrize("mmap", [False, True])
def test_flipped_byte_is_rejected_anywhere(tmp_path, mmap):
    path = tmp_path / "index.cofi"
    _indexes()[1].save(path)
    data = bytearray(path.read_bytes())
    for offset in (9, 14, 33, 50, 64, len(data) // 2, len(data) - 1):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x10
        path.write_bytes(bytes(corrupt))
        with pytest.raises(ValueError, match="index.cofi"):
            cofisearch.load_index(path, mmap=mmap)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "foreign.npy"
    np.save(path, np.zeros((100, 8)))
    with pytest.raises(ValueError, match="magic"):
        cofisearch.load_index(path)


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "index.cofi"
    old, new = _indexes()
    old.save(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        new.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["index.cofi"]


def test_save_over_a_mapped_file_keeps_the_mapping_valid(tmp_path):
    path = tmp_path / "index.cofi"
    index = _indexes()[0]
    index.save(path)
    mapped = cofisearch.load_index(path, mmap=True)
    expected = mapped.search(_queries(mapped), 5)
    mapped.add(np.zeros((1, 9), dtype=np.uint8))
    mapped.save(path)
    reloaded = cofisearch.load_index(path)
    assert reloaded.ntotal == index.ntotal + 1
    got = reloaded.search(_queries(mapped), 5)
    np.testing.assert_array_equal(got.distances[:, :1] <= expected.distances[:, :1], True)


def _small_index():
    index = cofisearch.BinaryIndex(64)
    index.add(np.arange(80, dtype=np.uint8).reshape(10, 8))
    return index


def test_a_new_file_gets_the_umask_default_mode(tmp_path):
    old = os.umask(0o027)
    try:
        _small_index().save(tmp_path / "a.cofi")
    finally:
        os.umask(old)
    assert (tmp_path / "a.cofi").stat().st_mode & 0o777 == 0o640


def test_overwriting_keeps_the_mode_of_the_file_replaced(tmp_path):
    path = tmp_path / "a.cofi"
    _small_index().save(path)
    os.chmod(path, 0o604)
    _small_index().save(path)
    assert path.stat().st_mode & 0o777 == 0o604


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "data" / "a.cofi"
    target.parent.mkdir()
    _small_index().save(target)
    link = tmp_path / "link.cofi"
    link.symlink_to(target)
    bigger = _small_index()
    bigger.add(np.zeros((5, 8), dtype=np.uint8))
    bigger.save(link)
    assert link.is_symlink()
    assert cofisearch.load_index(target).ntotal == 15


def test_a_save_removes_what_a_killed_save_left_behind(tmp_path):
    import socket
    import subprocess
    import sys

    # A process that has exited: its pid names an orphan, as a SIGKILLed save leaves one.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname().replace("-", "_") or "host"
    orphan = tmp_path / f".cofisearch-{host}-{dead.stdout.strip()}-0123456789abcdef.tmp"
    orphan.write_bytes(b"x" * 100)
    live = tmp_path / f".cofisearch-{host}-{os.getpid()}-fedcba9876543210.tmp"
    live.write_bytes(b"y")
    _small_index().save(tmp_path / "a.cofi")
    assert not orphan.exists()
    assert live.exists()  # a live writer's file is left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.cofi", live.name])


def _pickled_parts(index):
    fn, args = index.__reduce__()
    return fn, list(args)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda a: a.__setitem__(3, np.full_like(a[3], np.nan)), "NaN or infinite"),
        (lambda a: a.__setitem__(3, a[3] * 282.8), "norm 282.8"),
        (lambda a: a.__setitem__(0, 1), "binary index"),  # kind flipped to binary
        (lambda a: a.__setitem__(3, a[3].astype(np.float64)), "float32"),
        (lambda a: a.__setitem__(3, a[3][:, :5]), "columns"),
        (lambda a: a.__setitem__(1, -3), "width"),
    ],
)
def test_unpickling_refuses_what_add_would_refuse(tamper, message):
    index = cofisearch.FloatIndex(16, metric="cosine")
    index.add(np.random.default_rng(0).standard_normal((20, 16)))
    fn, args = _pickled_parts(index)
    tamper(args)
    with pytest.raises(ValueError, match=message):
        fn(*args)


@pytest.mark.parametrize("layout", [np.asfortranarray, lambda a: np.repeat(a, 2, axis=1)[:, ::2]])
def test_a_pickle_of_non_contiguous_rows_restores_a_searchable_index(layout):
    # Found by the unpickling fuzzer: a Fortran-ordered or strided rows array (which a
    # pickle can carry) was restored as is, and every search then failed on it.
    index = _small_index()
    fn, args = _pickled_parts(index)
    args[3] = layout(args[3])
    restored = pickle.loads(pickle.dumps(_Reduced(fn, tuple(args))))
    queries = index.codes[:7]
    np.testing.assert_array_equal(restored.codes, index.codes)
    for got, expected in zip(restored.search(queries, 5), index.search(queries, 5)):
        np.testing.assert_array_equal(got, expected)


def test_unpickling_refuses_a_masked_array_of_rows():
    index = _small_index()
    fn, args = _pickled_parts(index)
    args[3] = np.ma.masked_array(args[3], mask=np.zeros_like(args[3], dtype=bool))
    with pytest.raises(ValueError, match="masked"):
        fn(*args)


def test_a_pickle_corrupted_in_its_rows_is_refused():
    # Found by the unpickling fuzzer: a flipped bit in a pickle's rows (or in the array's
    # layout) restored a different index; pickles now carry the file format's CRC-32.
    index = _small_index()
    data = bytearray(pickle.dumps(index))
    data[data.find(index.codes.tobytes()) + 5] ^= 0x10
    with pytest.raises(ValueError, match="checksum mismatch"):
        pickle.loads(bytes(data))


def test_a_pickle_without_a_checksum_still_loads():
    # Pickles written before the checksum existed carry four arguments.
    index = _small_index()
    fn, args = _pickled_parts(index)
    np.testing.assert_array_equal(fn(*args[:4]).codes, index.codes)


class _Reduced:
    """Pickles as ``fn(*args)``: a hand-built pickle of an index."""

    def __init__(self, fn, args):
        self.parts = (fn, args)

    def __reduce__(self):
        return self.parts


def test_a_binary_pickle_cannot_become_a_float_index():
    index = _small_index()
    fn, args = _pickled_parts(index)
    args[0] = 2  # float kind, uint8 rows
    with pytest.raises(ValueError, match="float32"):
        fn(*args)


def test_a_checksummed_file_with_non_unit_cosine_rows_is_refused(tmp_path):
    import struct
    import zlib

    # A file another program wrote correctly (valid header and CRC) but with raw rows.
    rows = np.full((4, 8), 3.0, dtype=np.float32)
    head = struct.pack("<8sIIQQIIQ", b"COFISRCH", 1, 2, 8, 4, 1, 0, rows.nbytes)
    crc = zlib.crc32(rows.tobytes(), zlib.crc32(head)) & 0xFFFFFFFF
    header = head + struct.pack("<I", crc)
    path = tmp_path / "raw.cofi"
    path.write_bytes(header + b"\0" * (64 - len(header)) + rows.tobytes())
    with pytest.raises(ValueError, match="raw.cofi.*norm 8.48"):
        cofisearch.load_index(path)


def test_knn_refuses_zero_width_rows():
    with pytest.raises(ValueError, match="at least 1 byte"):
        cofisearch.hamming_knn(np.zeros((5, 0), dtype=np.uint8), np.zeros((1, 0), dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        cofisearch.dot_knn(np.zeros((5, 0), dtype=np.float32), np.zeros((1, 0), dtype=np.float32), 1)


@pytest.mark.parametrize("bad", [2**64 - 1, 2**63 + 5])
def test_unsigned_candidate_ids_beyond_int64_are_refused_not_wrapped(bad):
    index = cofisearch.FloatIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    cand = np.array([[0, 1, bad]], dtype=np.uint64)
    with pytest.raises(ValueError, match=str(bad)):
        index.search(np.ones((1, 4), dtype=np.float32), 2, candidates=cand)


# ---- ids and removals (format version 2) --------------------------------------------


def _indexes_with_ids():
    """Both kinds with the caller's ids (out of row order), removals awaiting compaction
    and a next sequential id past every id present."""
    out = []
    for index in _indexes():
        n = index.ntotal
        fresh = cofisearch.BinaryIndex(72) if index.kind == "binary" else cofisearch.FloatIndex(13, "cosine")
        rows = index.codes if index.kind == "binary" else index.vectors
        ids = np.random.default_rng(5).permutation(10 * n)[:n]
        fresh.add(rows[: n // 2], ids=ids[: n // 2])
        fresh.add(rows[n // 2 :])
        fresh.remove(ids[:20])
        out.append(fresh)
    return out


def _version(path):
    return int.from_bytes(path.read_bytes()[8:12], "little")


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("which", [0, 1])
def test_ids_and_removals_round_trip_through_a_file(tmp_path, which, mmap):
    index = _indexes_with_ids()[which]
    path = tmp_path / "index.cofi"
    index.save(path)
    assert _version(path) == 2
    loaded = cofisearch.load_index(path, mmap=mmap)
    _assert_same(index, loaded)
    assert loaded.ids.tolist() == index.ids.tolist()
    # The next sequential id, past the largest ever held, is kept.
    data = index.codes[:1] if index.kind == "binary" else index.vectors[:1]
    index.add(data)
    loaded.add(data)
    assert loaded.ids[-1] == index.ids[-1]
    _assert_same(index, loaded)


@pytest.mark.parametrize("which", [0, 1])
def test_ids_and_removals_round_trip_through_a_pickle(which):
    index = _indexes_with_ids()[which]
    back = pickle.loads(pickle.dumps(index))
    _assert_same(index, back)
    assert back.ids.tolist() == index.ids.tolist()


def test_an_index_without_ids_still_writes_version_1(tmp_path):
    # Older builds read it; a version-1 file is what they wrote, and it still loads.
    path = tmp_path / "index.cofi"
    _indexes()[0].save(path)
    assert _version(path) == 1
    loaded = cofisearch.load_index(path)
    assert loaded._store.items is None
    _assert_same(_indexes()[0], loaded)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_flipped_byte_in_the_ids_is_rejected(tmp_path, mmap):
    path = tmp_path / "index.cofi"
    _indexes_with_ids()[0].save(path)
    data = path.read_bytes()
    for offset in (len(data) - 1, len(data) - 9, len(data) - 100):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x01
        path.write_bytes(bytes(corrupt))
        with pytest.raises(ValueError, match="checksum"):
            cofisearch.load_index(path, mmap=mmap)
    path.write_bytes(data[:-4])
    with pytest.raises(ValueError, match="index.cofi"):
        cofisearch.load_index(path)


@pytest.mark.parametrize(
    "tamper,message",
    [
        (lambda ids: np.concatenate([ids[:-1], ids[:1]]), "not unique"),
        (lambda ids: ids.astype(np.int32), "1-D int64"),
        (lambda ids: ids[:-1], "one id per row"),
        (lambda ids: np.where(ids == ids[0], -3, ids), "must lie in"),
    ],
)
def test_unpickling_refuses_bad_ids(tamper, message):
    fn, args = _indexes_with_ids()[0].__reduce__()
    kind, width, metric, rows, _, ids, next_id = args
    with pytest.raises(ValueError, match=message):
        fn(kind, width, metric, rows, None, tamper(ids), next_id)

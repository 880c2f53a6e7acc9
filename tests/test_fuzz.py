"""Fuzz targets for everything that restores an index from bytes: ``load_index`` over
mutated files, ``pickle.loads`` over mutated pickles and hand-built restore arguments,
and ``load_sharded`` over mutated manifests.

The oracle, for every input: either a clear ``ValueError`` / ``TypeError`` (never another
exception from cofisearch, never a crash or a hang), or an index EQUAL to the original
(same layout, same rows, same answers). An input that changes what the bytes describe
and still passes every check (a test-made file with a recomputed CRC, a hand-built
tuple) must restore exactly what it describes, and only what ``add`` would accept.
Exceptions raised by the pickle machinery itself, before cofisearch code runs (a
mangled opcode or module name), are pickle's own clear errors and are counted apart.

Short runs are derandomised and bounded for CI; ``--long`` runs 100k inputs per target
(full ``load_sharded`` calls, each starting Ray actors, 400; the manifest checks they
start with run at 100k without Ray actors). Outcome counts print at the end of the
module (``-s``).
"""

import collections
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cofisearch
from cofisearch import _index, _reference

OUTCOMES = collections.defaultdict(collections.Counter)
COFISEARCH_DIR = os.path.dirname(os.path.abspath(cofisearch.__file__))


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    for target, counts in sorted(OUTCOMES.items()):
        print(f"\nfuzz {target}: {sum(counts.values())} inputs, {dict(sorted(counts.items()))}")


def fuzz_settings(long_run, short, long=100_000):
    return settings(
        max_examples=long if long_run else short,
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def raised_in_cofisearch(exc):
    """Whether any frame of ``exc``'s traceback is cofisearch code."""
    return any(
        os.path.abspath(frame.filename).startswith(COFISEARCH_DIR)
        for frame in traceback.extract_tb(exc.__traceback__)
    )


# ---- the originals ----------------------------------------------------------------------


def _originals():
    rng = np.random.default_rng(7)
    binary = cofisearch.BinaryIndex(24)
    binary.add(rng.integers(0, 256, (7, 3), dtype=np.uint8))
    empty = cofisearch.BinaryIndex(8)
    ip = cofisearch.FloatIndex(5)
    ip.add(rng.standard_normal((6, 5)) * np.array([1, 1e-3, 1e3, 1, 1]))
    cosine = cofisearch.FloatIndex(3, metric="cosine")
    cosine.add(rng.standard_normal((5, 3)))
    return {"binary": binary, "empty": empty, "ip": ip, "cosine": cosine}


ORIGINALS = _originals()


def rows_of(index):
    return index.codes if index.kind == "binary" else index.vectors


def layout(index):
    if index.kind == "binary":
        return ("binary", index.nbits)
    return ("float", index.dim, index.metric)


def check_answers(index, rows):
    """``index`` answers as the NumPy reference does over ``rows``."""
    assert index.ntotal == rows.shape[0]
    if not index.ntotal:
        return
    rng = np.random.default_rng(0)
    k = index.ntotal + 1
    if index.kind == "binary":
        q = rng.integers(0, 256, (3, rows.shape[1]), dtype=np.uint8)
        got = index.search(q, k)
        expected = _reference.topk(_reference.hamming_distances(q, rows), k, largest=False)
        np.testing.assert_array_equal(got.ids, expected[1])
        np.testing.assert_array_equal(got.distances, expected[0])
        return
    q = rng.standard_normal((3, rows.shape[1])).astype(np.float32)
    got = index.search(q, k)
    qq = _reference.unit_rows(q) if index.metric == "cosine" else q
    # ScaNN-style: every row returned once, with its own score (within rounding), best first.
    truth = qq.astype(np.float64) @ rows.astype(np.float64).T
    real = got.ids[:, :-1]
    assert (np.sort(real, axis=1) == np.arange(index.ntotal)).all()
    scale = np.abs(qq).astype(np.float64).sum(axis=1, keepdims=True) * float(np.abs(rows).max())
    expected = np.take_along_axis(truth, real, axis=1)
    error = np.abs(got.distances[:, :-1] - expected)
    # Scores beyond the float32 range overflow, as documented for add: not checked here.
    in_range = np.abs(expected) < np.finfo(np.float32).max / 2
    assert ((error <= 1e-5 * scale + 1e-30) | ~in_range).all(), (error, scale)
    assert (np.diff(got.distances[:, :-1], axis=1) <= 0).all()


def assert_equal_to(restored, original):
    assert type(restored) is type(original)
    assert layout(restored) == layout(original)
    np.testing.assert_array_equal(rows_of(restored), rows_of(original))
    check_answers(restored, rows_of(original))


def assert_acceptable_rows(index):
    """The rows are what ``add`` would have stored: finite floats, unit cosine rows."""
    rows = rows_of(index)
    if index.kind == "float" and rows.size:
        assert np.isfinite(rows).all()
        if index.metric == "cosine":
            norms = np.linalg.norm(rows.astype(np.float64), axis=1)
            assert ((norms == 0) | (np.abs(norms - 1) <= 1e-4)).all()


# ---- load_index -------------------------------------------------------------------------

_SAVED = {}


def saved_bytes(name):
    if name not in _SAVED:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.cfs")
            ORIGINALS[name].save(path)
            with open(path, "rb") as f:
                _SAVED[name] = f.read()
    return _SAVED[name]


# Header fields: (offset, struct format) as in cofisearch._index's file layout.
FIELDS = {
    "magic": (0, "8s"), "version": (8, "<I"), "kind": (12, "<I"), "width": (16, "<Q"),
    "count": (24, "<Q"), "metric": (32, "<I"), "reserved": (36, "<I"),
    "payload": (40, "<Q"), "crc": (48, "<I"),
}
EDGE_INTS = [0, 1, 2, 3, 7, 8, 9, 24, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1]


def _fix_crc(data):
    """The file with its CRC recomputed over its header and whatever payload it has."""
    head = bytes(data[:44])
    crc = zlib.crc32(bytes(data[64:]), zlib.crc32(head)) & 0xFFFFFFFF
    data[48:52] = struct.pack("<I", crc)


@st.composite
def mutated_files(draw):
    name = draw(st.sampled_from(sorted(ORIGINALS)))
    data = bytearray(saved_bytes(name))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "field", "splice", "payload"]))
    fix_crc = False
    if how == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=3)):
            data[pos // 8] ^= 1 << (pos % 8)
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "splice":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(chunk)] = chunk
    elif how == "field":
        field = draw(st.sampled_from(sorted(FIELDS)))
        offset, fmt = FIELDS[field]
        if fmt == "8s":
            value = draw(st.sampled_from([b"\0" * 8, b"COFISRCX", b"cofisrch", b"COFISRC\0"]))
        else:
            (old,) = struct.unpack_from(fmt, data, offset)
            limit = 2 ** (8 * struct.calcsize(fmt))
            value = draw(st.sampled_from(EDGE_INTS + [old - 1, old + 1, old * 2, old // 2])) % limit
        struct.pack_into(fmt, data, offset, value)
        fix_crc = field != "crc" and draw(st.booleans())
    else:  # a payload value set to an edge, the CRC left as it was or recomputed
        if len(data) > 64:
            at = draw(st.integers(64, len(data) - 1))
            if name in ("ip", "cosine"):
                at -= (at - 64) % 4
                value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 3e38, 1e-45, 2.0]))
                data[at : at + 4] = np.float32(value).tobytes()
            else:
                data[at] = draw(st.integers(0, 255))
            fix_crc = draw(st.booleans())
    if fix_crc and len(data) >= 64:
        _fix_crc(data)
    return name, bytes(data), how, fix_crc


def decode_file(data):
    """What a well-formed file says, decoded independently of cofisearch."""
    _, _, kind, width, count, metric, _, _ = struct.unpack_from("<8sIIQQIIQ", data)
    if kind == 1:
        return ("binary", width), np.frombuffer(data[64:], np.uint8).reshape(count, width // 8)
    metric_name = "cosine" if metric == 1 else "ip"
    return ("float", width, metric_name), np.frombuffer(data[64:], np.float32).reshape(count, width)


def load_one(directory, serial, name, data, how, fix_crc, mmap, target="load_index"):
    path = os.path.join(directory, f"f{serial}.cfs")  # a fresh name: older maps stay valid
    with open(path, "wb") as f:
        f.write(data)
    try:
        index = cofisearch.load_index(path, mmap=mmap)
    except (ValueError, TypeError) as exc:
        OUTCOMES[target][f"rejected {type(exc).__name__}"] += 1
        assert str(exc)
        return
    finally:
        os.unlink(path)  # a memory map outlives the name
    original = ORIGINALS[name]
    if data == saved_bytes(name) or not fix_crc:
        # CRC-covered bytes unchanged: only the padding may differ, nothing observable.
        assert_equal_to(index, original)
        OUTCOMES[target]["accepted, equal"] += 1
        return
    # A file re-checksummed by the test: it must restore exactly what it says, and only
    # rows that add would accept.
    described, rows = decode_file(data)
    assert layout(index) == described
    np.testing.assert_array_equal(rows_of(index), rows)
    assert_acceptable_rows(index)
    check_answers(index, rows)
    same = layout(index) == layout(original) and np.array_equal(rows, rows_of(original))
    OUTCOMES[target]["accepted, equal" if same else "accepted, what the re-checksummed file says"] += 1


@pytest.fixture(scope="module")
def scratch():
    directory = tempfile.mkdtemp(prefix="cofisearch-fuzz-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_load_index_over_mutated_files(long_run, scratch):
    serial = iter(range(10**9))

    @fuzz_settings(long_run, short=600)
    @given(mutated_files(), st.booleans())
    def run(case, mmap):
        load_one(scratch, next(serial), *case, mmap)

    run()


def test_a_flip_in_a_float_payload_or_in_the_crc_is_refused(scratch):
    # Exhaustive over the small float file: every single-bit flip in the CRC-covered bytes
    # (header fields, payload) and in the CRC itself is refused; flips in the padding
    # (bytes 52..63, not covered) restore the original.
    data = saved_bytes("ip")
    for pos in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[pos // 8] ^= 1 << (pos % 8)
        path = os.path.join(scratch, "flip.cfs")
        with open(path, "wb") as f:
            f.write(mutated)
        if 52 <= pos // 8 < 64:
            assert_equal_to(cofisearch.load_index(path), ORIGINALS["ip"])
        else:
            with pytest.raises(ValueError, match="not a valid cofisearch index"):
                cofisearch.load_index(path)


def test_loads_of_mutated_files_end_in_a_subprocess_within_a_timeout(scratch):
    # The in-process fuzzer would hang with its test on a load that never ends, and die
    # on a crash: a sample of mutated files loads in a child with a deadline instead.
    rng = np.random.default_rng(3)
    paths = []
    for i in range(60):
        data = bytearray(saved_bytes(sorted(ORIGINALS)[i % 4]))
        if i % 3 == 0:
            del data[int(rng.integers(0, len(data))) :]
        else:
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        paths.append(os.path.join(scratch, f"child{i}.cfs"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    os.mkfifo(os.path.join(scratch, "fifo.cfs"))
    paths.append(os.path.join(scratch, "fifo.cfs"))
    script = (
        "import sys, cofisearch\n"
        "for p in sys.argv[1:]:\n"
        "    for mmap in (False, True):\n"
        "        try:\n"
        "            cofisearch.load_index(p, mmap=mmap)\n"
        "        except (ValueError, TypeError):\n"
        "            pass\n"
        "print('done')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(COFISEARCH_DIR))
    out = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120,
        env=env,
    )
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]


# ---- unpickling -------------------------------------------------------------------------


def _pickles():
    out = {}
    for name, index in ORIGINALS.items():
        for protocol in (2, 4, 5):
            out[f"{name}/p{protocol}"] = (index, pickle.dumps(index, protocol=protocol))
    cascade = cofisearch.Cascade(ORIGINALS["binary"], _matching_fine(), n_candidates=4)
    out["cascade/p5"] = (cascade, pickle.dumps(cascade, protocol=5))
    return out


def _matching_fine():
    fine = cofisearch.FloatIndex(4, metric="cosine")
    fine.add(np.random.default_rng(8).standard_normal((ORIGINALS["binary"].ntotal, 4)))
    return fine


PICKLES = _pickles()


def check_unpickled(obj, original):
    """An object restored from a mutated pickle: an equal index or cascade; another
    object is not cofisearch's (pickle rebuilt something else)."""
    if isinstance(original, cofisearch.Cascade):
        if not isinstance(obj, cofisearch.Cascade):
            return "not an index"
        assert_equal_to(obj.coarse, original.coarse)
        assert_equal_to(obj.fine, original.fine)
        assert (obj.n_candidates, obj.n_rerank) == (original.n_candidates, original.n_rerank)
        assert obj.reranker is original.reranker
        return "accepted, equal"
    if not isinstance(obj, (cofisearch.BinaryIndex, cofisearch.FloatIndex)):
        return "not an index"
    assert_equal_to(obj, original)
    return "accepted, equal"


def unpickle_one(data, original, target):
    try:
        obj = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001  (sorted below)
        if raised_in_cofisearch(exc):
            assert isinstance(exc, (ValueError, TypeError)), traceback.format_exc()
            OUTCOMES[target][f"rejected by cofisearch, {type(exc).__name__}"] += 1
        else:
            OUTCOMES[target]["rejected by pickle/numpy"] += 1
        return
    OUTCOMES[target][check_unpickled(obj, original)] += 1


@st.composite
def mutated_pickles(draw):
    name = draw(st.sampled_from(sorted(PICKLES)))
    original, data = PICKLES[name]
    data = bytearray(data)
    how = draw(st.sampled_from(["flip", "truncate", "splice", "insert"]))
    if how == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=3)):
            data[pos // 8] ^= 1 << (pos % 8)
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "splice":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[at : at + len(chunk)] = chunk
    else:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return original, bytes(data)


# NumPy rebuilds arrays from whatever a mutated pickle says, and some it cannot free
# cleanly later (an unraisable SystemError in its deallocator): NumPy's, not a restore's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unpickling_mutated_pickles(long_run):
    @fuzz_settings(long_run, short=600)
    @given(mutated_pickles())
    def run(case):
        original, data = case
        unpickle_one(data, original, "pickle bytes")

    run()


class _Reduced:
    """Pickles as ``fn(*args)``: a hand-built pickle."""

    def __init__(self, fn, args):
        self.parts = (fn, args)

    def __reduce__(self):
        return self.parts


LAYOUTS = [(1, 8, 0), (1, 24, 0), (2, 3, 0), (2, 3, 1), (2, 5, 1)]
ODD = [0, 3, -1, True, False, 1.0, "1", None, 2**64, np.int64(1)]


@st.composite
def restore_arguments(draw):
    """Arguments for ``_restore`` (what an index pickle carries): a valid tuple with up
    to three of its parts changed to edge or wrong values."""
    kind, width, metric = draw(st.sampled_from(LAYOUTS))
    cols = width // 8 if kind == 1 else width
    n = draw(st.integers(0, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == 1:
        rows = rng.integers(0, 256, (n, cols), dtype=np.uint8)
    else:
        rows = rng.standard_normal((n, cols)).astype(np.float32)
        if metric == 1:
            rows = _reference.unit_rows(rows)
    crc = "right"
    changes = draw(st.lists(st.sampled_from(
        ["kind", "metric", "width", "dtype", "shape", "layout", "value", "norm", "crc"]
    ), max_size=3))
    for change in changes:
        if change == "kind":
            kind = draw(st.sampled_from(ODD + [1, 2]))
        elif change == "metric":
            metric = draw(st.sampled_from(ODD + [0, 1]))
        elif change == "width":
            w = cols * 8 if kind == 1 else cols  # the layout's width, whatever changed it
            width = draw(st.sampled_from([0, -8, 3, 12, w + 8, w - 1, 2**25, True, 16.0, "16", np.int64(w)]))
        elif change == "dtype" and isinstance(rows, np.ndarray):
            with np.errstate(invalid="ignore", over="ignore"):  # NaN or 3e38 to ints
                rows = rows.astype(draw(st.sampled_from(
                    ["uint8", "int8", "uint16", "float16", "float64", ">f4", "bool", "object", "float32"]
                )))
        elif change == "shape" and isinstance(rows, np.ndarray) and rows.ndim == 2:
            rows = draw(st.sampled_from([
                rows.reshape(-1), rows[None], rows[:, :-1], np.concatenate([rows, rows], axis=1),
                rows.T, rows[:0],
            ]))
        elif change == "layout" and isinstance(rows, np.ndarray):
            rows = draw(st.sampled_from([
                np.asfortranarray(rows), np.repeat(rows, 2, axis=0)[::2],
                np.ma.masked_array(rows, mask=np.zeros(rows.shape, dtype=bool)),
                rows.tolist(), None,
            ]))
        elif change == "value" and isinstance(rows, np.ndarray) and rows.dtype.kind == "f" and rows.size:
            rows = rows.copy()
            rows.reshape(-1)[draw(st.integers(0, rows.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 3e38, 0.0, 1e-45])
            )
        elif change == "norm" and isinstance(rows, np.ndarray) and rows.dtype.kind == "f" and rows.ndim == 2:
            rows = rows * np.float32(draw(st.sampled_from([0.0, 1 + 1e-6, 1 + 2e-4, 0.999, 2.0])))
        elif change == "crc":
            crc = draw(st.sampled_from(["none", "wrong", "odd"]))
    args = (kind, width, metric, rows)
    if crc == "right":
        try:
            args += (_index._checksum(_index._head(kind, width, metric, rows), rows),)
        except Exception:  # noqa: BLE001  (arguments no CRC can cover: refused anyway)
            args += (0,)
    elif crc == "wrong":
        args += (draw(st.integers(0, 2**32 - 1)),)
    elif crc == "odd":
        args += (draw(st.sampled_from([None, -1, 2**70, 1.5, "0", np.uint32(0)])),)
    return args


def test_unpickling_hand_built_restore_arguments(long_run):
    @fuzz_settings(long_run, short=400)
    @given(restore_arguments())
    def run(args):
        data = pickle.dumps(_Reduced(_index._restore, args))
        try:
            index = pickle.loads(data)
        except (ValueError, TypeError) as exc:
            assert str(exc)
            OUTCOMES["pickle arguments"][f"rejected {type(exc).__name__}"] += 1
            return
        kind, width, metric, rows = args[:4]
        # Accepted: it must be exactly what the arguments describe, as add would store it.
        assert (kind, metric) in ((1, 0), (2, 0), (2, 1))
        expected_layout = ("binary", width) if kind == 1 else ("float", width, ("ip", "cosine")[metric])
        assert layout(index) == expected_layout
        np.testing.assert_array_equal(rows_of(index), rows)
        assert rows_of(index).dtype == (np.uint8 if kind == 1 else np.float32)
        assert_acceptable_rows(index)
        check_answers(index, np.asarray(rows))
        OUTCOMES["pickle arguments"]["accepted, as described"] += 1

    run()


# ---- load_sharded -----------------------------------------------------------------------


def _manifest_mutations(manifest, draw):
    """One structural change to a manifest (a JSON object)."""
    m = json.loads(json.dumps(manifest))
    odd_values = [None, True, False, 0, 1, -1, 2, 3, 2**32, 2**63, 1.5, "", "x", [], {}, [1], {"a": 1}]
    how = draw(st.sampled_from(["top", "drop", "shard", "files", "checksums", "shards"]))
    if how == "top":
        key = draw(st.sampled_from(sorted(m)))
        m[key] = draw(st.sampled_from(odd_values + ["binary", "float", "cascade", "cosine", "ip"]))
    elif how == "drop":
        key = draw(st.sampled_from(sorted(m)))
        del m[key]
    elif how == "shards":
        shards = m["shards"]
        change = draw(st.sampled_from(["reverse", "drop", "duplicate", "swap-files", "empty"]))
        if change == "reverse":
            shards.reverse()
        elif change == "drop":
            shards.pop()
        elif change == "duplicate":
            shards.append(shards[0])
        elif change == "swap-files":
            shards[0]["files"], shards[1]["files"] = shards[1]["files"], shards[0]["files"]
        else:
            m["shards"] = []
    else:
        entry = m["shards"][draw(st.integers(0, len(m["shards"]) - 1))]
        if how == "shard":
            key = draw(st.sampled_from(sorted(entry) + ["count", "count"]))
            if draw(st.booleans()):
                entry.pop(key, None)
            else:
                old = entry.get(key)
                near = [old + 1, old - 1] if isinstance(old, int) else []
                entry[key] = draw(st.sampled_from(odd_values + near))
        elif how == "files":
            suffix = draw(st.sampled_from(sorted(entry["files"])))
            entry["files"][suffix] = draw(st.sampled_from(
                ["", ".", "..", "../x.cfs", "/etc/passwd", "missing.cfs", "manifest.json",
                 entry["files"][suffix] + "x", 3, None]
                + [f for e in m["shards"] for f in e["files"].values()]
            ))
        else:
            checks = entry.get("checksums") or [0]
            i = draw(st.integers(0, len(checks) - 1))
            checks[i] = draw(st.sampled_from(
                [checks[i] ^ 1, checks[i] ^ 0x80000000, 0, -1, 2**32, None, "0", 1.0]
            ))
            entry["checksums"] = draw(st.sampled_from([checks, checks[:-1], checks + [1], None, 5]))
    return m


def _saved_sharded_manifest():
    """A two-shard binary index's manifest, as ``save`` writes it (file names and
    checksums made up: the manifest checks come before any file is opened)."""
    return {
        "format": "cofisearch-sharded", "version": 1, "kind": "binary", "n_shards": 2,
        "ntotal": 7, "nbits": 24, "routing": "round-robin",
        "shards": [
            {"count": 4, "ids": {"start": 0, "step": 2, "stop": 7},
             "files": {"codes": "shard-00000-a.codes.cfs"}, "checksums": [123]},
            {"count": 3, "ids": {"start": 1, "step": 2, "stop": 7},
             "files": {"codes": "shard-00001-a.codes.cfs"}, "checksums": [456]},
        ],
    }


def test_read_manifest_over_mutated_manifests(long_run, tmp_path):
    # The manifest checks alone, without Ray actors, at the full count: every mutated
    # manifest is refused with ValueError, or names files inside its directory, one per
    # suffix, with counts that add up to ntotal and a layout an empty index accepts.
    pytest.importorskip("ray")
    from cofisearch.distributed import _manifest

    manifest = _saved_sharded_manifest()

    @fuzz_settings(long_run, short=300)
    @given(st.data())
    def run(data):
        mutated = _manifest_mutations(manifest, data.draw)
        (tmp_path / "manifest.json").write_text(json.dumps(mutated))
        try:
            m = _manifest.read_manifest(str(tmp_path))
            template = _manifest.template_from_manifest(m)
        except ValueError as exc:
            assert str(exc)
            OUTCOMES["read_manifest"]["rejected ValueError"] += 1
            return
        assert sum(e["count"] for e in m["shards"]) == m["ntotal"]
        assert template.ntotal == 0
        for entry in m["shards"]:
            for path in _manifest.shard_paths(str(tmp_path), m["kind"], [entry["files"]])[0]:
                assert os.path.dirname(path) == str(tmp_path)
        OUTCOMES["read_manifest"]["accepted"] += 1

    run()


def test_load_sharded_over_mutated_manifests(long_run, tmp_path):
    ray = pytest.importorskip("ray")
    from cofisearch.distributed import ShardedIndex, load_sharded

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        original = ORIGINALS["binary"]
        with ShardedIndex(cofisearch.BinaryIndex(original.nbits), 2) as sharded:
            sharded.add(original.codes)
            sharded.save(tmp_path)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        queries = original.codes[:3]
        expected = original.search(queries, original.ntotal + 1)

        # Each accepted manifest starts Ray actors (half a second): fewer inputs here,
        # the manifest checks alone run at the full count above.
        @fuzz_settings(long_run, short=25, long=400)
        @given(st.data())
        def run(data):
            mutated = _manifest_mutations(manifest, data.draw)
            (tmp_path / "manifest.json").write_text(json.dumps(mutated))
            try:
                loaded = load_sharded(tmp_path)
            except (ValueError, TypeError) as exc:
                assert str(exc)
                OUTCOMES["load_sharded"][f"rejected {type(exc).__name__}"] += 1
                return
            with loaded:
                got = loaded.search(queries, original.ntotal + 1)
                assert loaded.ntotal == original.ntotal
                np.testing.assert_array_equal(got.ids, expected.ids)
                np.testing.assert_array_equal(got.distances, expected.distances)
            OUTCOMES["load_sharded"]["accepted, equal"] += 1

        run()
    finally:
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        if started:
            ray.shutdown()

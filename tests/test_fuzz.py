"""Fuzz targets for everything that restores an index from bytes: ``load_index`` over
mutated files, ``pickle.loads`` over mutated pickles and hand-built restore arguments,
and ``load_sharded`` over mutated manifests and shard files.

The oracle, for every input: either a clear ``ValueError`` / ``TypeError`` (never another
exception from cofisearch, never a crash or a hang), or an index EQUAL to the original
(same layout, same rows, same answers). An input that changes what the bytes describe
and still passes every check (a test-made file with a recomputed CRC, a hand-built
tuple) must restore exactly what it describes, and only what ``add`` would accept.
Exceptions raised by the pickle machinery itself, before cofisearch code runs (a
mangled opcode or module name), are pickle's own clear errors and are counted apart.

Harnesses:

- ``load_index`` and the restore arguments: hypothesis, in this process, each input
  under a watchdog that ends the run with a traceback if it hangs.
- Mutated pickle bytes: in child processes, in batches, because CPython's unpickler and
  NumPy's array reconstruction themselves can crash on some mutated pickles (not
  cofisearch code). Inputs come from a seeded generator, so a child that dies or hangs
  names its input, which is then replayed in a child that never imports cofisearch (its
  globals replaced by stand-ins): a crash that replays there is CPython's or NumPy's,
  counted apart; any other fails the test. Children run under a 2 GiB address-space
  limit, so a pickle that asks CPython for gigabytes (a memo index of 10^9) fails fast.
- ``load_sharded``: every input loads a whole sharded index or cascade (manifest checks,
  per-shard checksums, shard files, row counts, searches), with Ray's calls run in this
  process by a stand-in of the few Ray functions ``cofisearch.distributed`` uses (the
  shards are the real ``Shard`` objects), so that 100k loads take minutes, not the hours
  of starting Ray actors; a short run through real Ray actors checks the same oracle.

Short runs are bounded and derandomised (fixed seeds) for CI; ``--long`` runs at least
100k inputs per target. Outcome counts, durations and CPU times print at the end of the
module (``-s``); ``COFISEARCH_FUZZ_SEED`` fixes the seed of the batch harnesses in a long
run (it is printed either way).
"""

import collections
import contextlib
import copy
import faulthandler
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import types
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cofisearch
from cofisearch import _index, _reference

OUTCOMES = collections.defaultdict(collections.Counter)
TIMES = {}  # target: (wall seconds, CPU seconds of this process and its children)
NOTES = collections.defaultdict(list)  # target: lines worth reporting (seeds, crashes)
COFISEARCH_DIR = os.path.dirname(os.path.abspath(cofisearch.__file__))
HANG_S = 60  # one input taking this long is a hang


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    for target, counts in sorted(OUTCOMES.items()):
        took = ""
        if target in TIMES:
            wall, cpu = TIMES[target]
            took = f" in {wall:.1f} s ({cpu:.1f} s CPU)"
        print(f"\nfuzz {target}: {sum(counts.values())} inputs{took}, {dict(sorted(counts.items()))}")
        for note in NOTES[target]:
            print(f"  {note}")


def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def campaign(target):
    """Times a target's run, wall and CPU, for the report."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield
    finally:
        TIMES[target] = (time.perf_counter() - wall, cpu_seconds() - cpu)


@contextlib.contextmanager
def watchdog():
    """Ends the process with every thread's traceback if the block outlives ``HANG_S``:
    a hang fails the run loudly instead of stalling it."""
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def fuzz_settings(long_run, short, long=100_000):
    return settings(
        max_examples=long if long_run else short,
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def batch_seed(long_run, target):
    """The seed of a batch harness: fixed in short runs, fresh (or
    ``COFISEARCH_FUZZ_SEED``) in long ones, and reported either way."""
    if long_run:
        seed = int(os.environ.get("COFISEARCH_FUZZ_SEED", int.from_bytes(os.urandom(4), "little")))
    else:
        seed = 0
    NOTES[target].append(f"seed {seed} (input i replays from numpy.random.default_rng([seed, i]))")
    return seed


class Draws:
    """The choices a mutation makes, from hypothesis's ``draw`` or from a seeded NumPy
    generator: one mutation function serves the hypothesis targets and the batch
    harnesses, whose inputs replay from ``(seed, input number)``."""

    def __init__(self, draw=None, rng=None):
        self._draw = draw
        self._rng = rng

    def pick(self, options):
        options = list(options)
        if self._draw is not None:
            return self._draw(st.sampled_from(options))
        return options[int(self._rng.integers(len(options)))]

    def integer(self, lo, hi):
        """An int in ``[lo, hi]``."""
        if self._draw is not None:
            return self._draw(st.integers(lo, hi))
        return int(self._rng.integers(lo, hi, endpoint=True))

    def coin(self):
        return self.pick([False, True])

    def data(self, lo, hi):
        """Bytes of a length in ``[lo, hi]``."""
        if self._draw is not None:
            return self._draw(st.binary(min_size=lo, max_size=hi))
        return self._rng.bytes(self.integer(lo, hi))


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


def mutate_file(data, floats, d):
    """One mutation of an index file's bytes, chosen by ``d`` (:class:`Draws`); returns
    the new bytes, the kind of mutation and whether the CRC was recomputed."""
    data = bytearray(data)
    how = d.pick(["flip", "truncate", "extend", "field", "splice", "payload"])
    fix_crc = False
    if how == "flip":
        for _ in range(d.integer(1, 3)):
            pos = d.integer(0, len(data) * 8 - 1)
            data[pos // 8] ^= 1 << (pos % 8)
    elif how == "truncate":
        del data[d.integer(0, len(data) - 1) :]
    elif how == "extend":
        data += d.data(1, 64)
    elif how == "splice":
        at = d.integer(0, len(data) - 1)
        chunk = d.data(1, 16)
        data[at : at + len(chunk)] = chunk
    elif how == "field":
        field = d.pick(sorted(FIELDS))
        offset, fmt = FIELDS[field]
        if offset + struct.calcsize(fmt) > len(data):  # a file truncated before
            data += bytes(offset + struct.calcsize(fmt) - len(data))
        if fmt == "8s":
            value = d.pick([b"\0" * 8, b"COFISRCX", b"cofisrch", b"COFISRC\0"])
        else:
            (old,) = struct.unpack_from(fmt, data, offset)
            limit = 2 ** (8 * struct.calcsize(fmt))
            value = d.pick(EDGE_INTS + [old - 1, old + 1, old * 2, old // 2]) % limit
        struct.pack_into(fmt, data, offset, value)
        fix_crc = field != "crc" and d.coin()
    else:  # a payload value set to an edge, the CRC left as it was or recomputed
        if len(data) > 64:
            at = d.integer(64, len(data) - 1)
            if floats:
                at -= (at - 64) % 4
                value = d.pick([np.nan, np.inf, -np.inf, 0.0, 3e38, 1e-45, 2.0])
                data[at : at + 4] = np.float32(value).tobytes()
            else:
                data[at] = d.integer(0, 255)
            fix_crc = d.coin()
    if fix_crc and len(data) >= 64:
        _fix_crc(data)
    return bytes(data), how, fix_crc


@st.composite
def mutated_files(draw):
    name = draw(st.sampled_from(sorted(ORIGINALS)))
    data, how, fix_crc = mutate_file(saved_bytes(name), name in ("ip", "cosine"), Draws(draw))
    return name, data, how, fix_crc


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
        with watchdog():
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

    with campaign("load_index"):
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
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120, check=False,
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


PICKLE_NAMES = sorted(PICKLES)


def mutated_pickle(seed, i):
    """Input ``i`` of the pickle-bytes target: ``(name of the original, bytes)``."""
    d = Draws(rng=np.random.default_rng([seed, i]))
    name = d.pick(PICKLE_NAMES)
    data = bytearray(PICKLES[name][1])
    how = d.pick(["flip", "truncate", "splice", "insert"])
    if how == "flip":
        for _ in range(d.integer(1, 3)):
            pos = d.integer(0, len(data) * 8 - 1)
            data[pos // 8] ^= 1 << (pos % 8)
    elif how == "truncate":
        del data[d.integer(0, len(data) - 1) :]
    elif how == "splice":
        at = d.integer(0, len(data) - 1)
        chunk = d.data(1, 8)
        data[at : at + len(chunk)] = chunk
    else:
        at = d.integer(0, len(data))
        data[at:at] = d.data(1, 8)
    return name, bytes(data)


# The child's progress record: the input under way, and whether it reached cofisearch's
# restore functions (pickle calls them last, after rebuilding every argument).
_PROGRESS = struct.Struct("<qq")
_CHILD_MEMORY = 2 << 30


def _unpickle_batch(seed, start, stop, progress_path):
    """Child process: inputs ``start..stop-1``; prints the outcome counts and the inputs
    that broke the oracle as one JSON line."""
    resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY, _CHILD_MEMORY))
    faulthandler.enable()
    fd = os.open(progress_path, os.O_WRONLY)
    from cofisearch import cascade

    current = [start]

    def marked(fn):
        def restore(*args):
            os.pwrite(fd, _PROGRESS.pack(current[0], 1), 0)
            return fn(*args)

        return restore

    # pickle finds these by name, so the wrappers are what mutated pickles call.
    _index._restore = marked(_index._restore)
    cascade._restore_cascade = marked(cascade._restore_cascade)
    wrong = []
    for i in range(start, stop):
        current[0] = i
        os.pwrite(fd, _PROGRESS.pack(i, 0), 0)
        name, data = mutated_pickle(seed, i)
        try:
            unpickle_one(data, PICKLES[name][0], "pickle bytes")
        except AssertionError:
            wrong.append({"input": i, "error": traceback.format_exc()[-1500:]})
    print(json.dumps({"counts": OUTCOMES["pickle bytes"], "wrong": wrong}), flush=True)


# Replays one input with every cofisearch global replaced by a stand-in that only
# collects its arguments, in a process that never imports cofisearch.
_REPLAY_WITHOUT_COFISEARCH = """
import io, pickle, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))

class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] == "cofisearch":
            return lambda *args: ("stand-in for " + module + "." + name, args)
        return super().find_class(module, name)

with open(sys.argv[1], "rb") as f:
    data = f.read()
try:
    Unpickler(io.BytesIO(data)).load()
except Exception:
    pass
assert "cofisearch" not in sys.modules
print("survived")
"""


def _child_env():
    return dict(
        os.environ, PYTHONPATH=os.path.dirname(COFISEARCH_DIR), OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1",
    )


def _attribute(seed, i, scratch):
    """Why input ``i`` killed its child: replayed without cofisearch, then with it."""
    _, data = mutated_pickle(seed, i)
    path = os.path.join(scratch, f"crash-{seed}-{i}.pickle")
    with open(path, "wb") as f:
        f.write(data)
    replays = {}
    with_cofisearch = "import pickle, sys, cofisearch; pickle.loads(open(sys.argv[1], 'rb').read())"
    for how, argv in [
        ("without cofisearch", ["-c", _REPLAY_WITHOUT_COFISEARCH.format(memory=_CHILD_MEMORY), path]),
        ("with cofisearch", ["-c", with_cofisearch, path]),
    ]:
        try:
            out = subprocess.run(
                [sys.executable, *argv], capture_output=True, text=True, timeout=HANG_S,
                env=_child_env(), check=False,
            )
            replays[how] = (out.returncode, out.stderr[-1500:])
        except subprocess.TimeoutExpired:
            replays[how] = ("timeout", "")
    return path, replays


def _run_child(seed, start, stop, progress):
    """One child over inputs ``start..stop-1``: ``(exit code or "timeout", stdout,
    stderr)``."""
    with open(progress, "wb") as f:
        f.write(_PROGRESS.pack(-1, 0))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_fuzz; "
        "test_fuzz._unpickle_batch(*map(int, sys.argv[2:5]), sys.argv[5])"
    )
    argv = [
        sys.executable, "-c", code,
        os.path.dirname(os.path.abspath(__file__)), str(seed), str(start), str(stop), progress,
    ]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=_child_env(), check=False,
            timeout=HANG_S + 0.05 * (stop - start),
        )
    except subprocess.TimeoutExpired as exc:
        return "timeout", "", (exc.stderr or b"").decode(errors="replace")
    return out.returncode, out.stdout, out.stderr


def run_unpickle_batches(seed, total, batch, scratch):
    """Runs inputs ``0..total-1`` in children of up to ``batch`` inputs; returns the
    outcome counts, the inputs that broke the oracle, and the inputs that crashed or hung
    their child, each replayed to say whose crash it is."""
    counts = collections.Counter()
    wrong, crashes = [], []
    progress = os.path.join(scratch, "progress")
    pending = [(a, min(total, a + batch)) for a in range(0, total, batch)]
    while pending:
        start, stop = pending.pop(0)
        code, stdout, stderr = _run_child(seed, start, stop, progress)
        if code == 0:
            report = json.loads(stdout.strip().splitlines()[-1])
            counts.update(report["counts"])
            wrong.extend(report["wrong"])
            continue
        with open(progress, "rb") as f:
            i, reached = _PROGRESS.unpack(f.read())
        if i < start:
            raise AssertionError(f"a fuzz child failed before its first input ({code}):\n{stderr[-3000:]}")
        path, replays = _attribute(seed, i, scratch)
        crashes.append({
            "input": i, "exit": code, "reached cofisearch restore": bool(reached),
            "child stderr": stderr[-1500:], "saved": path, "replays": replays,
        })
        # The inputs before it ran, but their counts died with the child: run them again.
        pending[:0] = [r for r in [(start, i), (i + 1, stop)] if r[0] < r[1]]
    return counts, wrong, crashes


def crash_is_cpythons(crash):
    """A crash that replays, with the same signal, in a process that never imported
    cofisearch, and that came before any cofisearch restore function ran: the
    unpickler's or NumPy's, not a restore's."""
    code, _ = crash["replays"]["without cofisearch"]
    return (
        isinstance(code, int) and code < 0 and code == crash["exit"]
        and not crash["reached cofisearch restore"]
    )


def test_unpickling_mutated_pickles_in_child_processes(long_run, scratch):
    seed = batch_seed(long_run, "pickle bytes")
    total, batch = (100_000, 10_000) if long_run else (1_500, 1_500)
    with campaign("pickle bytes"):
        counts, wrong, crashes = run_unpickle_batches(seed, total, batch, scratch)
    OUTCOMES["pickle bytes"].update(counts)
    for crash in crashes:
        whose = "CPython/NumPy" if crash_is_cpythons(crash) else "UNATTRIBUTED"
        OUTCOMES["pickle bytes"][f"crashed the child ({whose})"] += 1
        replays = {how: code for how, (code, _) in crash["replays"].items()}
        NOTES["pickle bytes"].append(
            f"input {crash['input']}: exit {crash['exit']}, {whose}; replays {replays}; "
            f"reached a cofisearch restore: {crash['reached cofisearch restore']}"
        )
    assert sum(OUTCOMES["pickle bytes"].values()) == total
    assert not wrong, wrong[:3]
    unattributed = [c for c in crashes if not crash_is_cpythons(c)]
    assert not unattributed, unattributed[:3]


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
    # Edge values on purpose: NaN or 3e38 cast to ints or float16, doubled, times 0.
    with np.errstate(all="ignore"):
        for change in changes:
            if change == "kind":
                kind = draw(st.sampled_from(ODD + [1, 2]))
            elif change == "metric":
                metric = draw(st.sampled_from(ODD + [0, 1]))
            elif change == "width":
                w = cols * 8 if kind == 1 else cols  # the layout's width, whatever changed it
                width = draw(st.sampled_from([0, -8, 3, 12, w + 8, w - 1, 2**25, True, 16.0, "16", np.int64(w)]))
            elif change == "dtype" and isinstance(rows, np.ndarray):
                dtype = draw(st.sampled_from(
                    ["uint8", "int8", "uint16", "float16", "float64", ">f4", "bool", "object", "float32"]
                ))
                # Python ints in an object array (an earlier change) do not wrap.
                with contextlib.suppress(OverflowError):
                    rows = rows.astype(dtype)
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
            with watchdog():
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

    with campaign("pickle arguments"):
        run()


# ---- load_sharded -----------------------------------------------------------------------


def _manifest_mutations(manifest, d):
    """One structural change to a manifest (a JSON object), chosen by ``d``; a manifest
    that an earlier change left without two shard entries naming files gets a top-level
    change."""
    m = json.loads(json.dumps(manifest))
    odd_values = [None, True, False, 0, 1, -1, 2, 3, 2**32, 2**63, 1.5, "", "x", [], {}, [1], {"a": 1}]
    how = d.pick(["top", "drop", "shard", "files", "checksums", "shards"])
    shards = m.get("shards")
    if how not in ("top", "drop") and not (
        isinstance(shards, list) and len(shards) >= 2
        and all(isinstance(e, dict) and isinstance(e.get("files"), dict) and e["files"] for e in shards)
    ):
        how = "top"
    if how == "top":
        key = d.pick(sorted(m))
        m[key] = d.pick(odd_values + ["binary", "float", "cascade", "cosine", "ip"])
    elif how == "drop":
        del m[d.pick(sorted(m))]
    elif how == "shards":
        shards = m["shards"]
        change = d.pick(["reverse", "drop", "duplicate", "swap-files", "empty"])
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
        entry = m["shards"][d.integer(0, len(m["shards"]) - 1)]
        if how == "shard":
            key = d.pick(sorted(entry) + ["count", "count"])
            if d.coin():
                entry.pop(key, None)
            else:
                old = entry.get(key)
                near = [old + 1, old - 1] if isinstance(old, int) else []
                entry[key] = d.pick(odd_values + near)
        elif how == "files":
            suffix = d.pick(sorted(entry["files"]))
            entry["files"][suffix] = d.pick(
                ["", ".", "..", "../x.cfs", "/etc/passwd", "missing.cfs", "manifest.json",
                 f"{entry['files'][suffix]}x", 3, None]
                + [f for e in m["shards"] for f in e["files"].values()]
            )
        else:
            checks = entry.get("checksums")
            checks = checks if isinstance(checks, list) and checks else [0]
            i = d.integer(0, len(checks) - 1)
            old = checks[i] if type(checks[i]) is int else 0  # an earlier change's odd value
            checks[i] = d.pick([old ^ 1, old ^ 0x80000000, 0, -1, 2**32, None, "0", 1.0])
            entry["checksums"] = d.pick([checks, checks[:-1], checks + [1], None, 5])
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
    # The manifest checks alone: every mutated manifest is refused with ValueError, or
    # names files inside its directory, one per suffix, with counts that add up to
    # ntotal and a layout an empty index accepts. (Every load_sharded input below runs
    # these checks too, 100k times in a long run.)
    pytest.importorskip("ray")
    from cofisearch.distributed import _manifest

    manifest = _saved_sharded_manifest()

    @fuzz_settings(long_run, short=300, long=10_000)
    @given(st.data())
    def run(data):
        mutated = _manifest_mutations(manifest, Draws(data.draw))
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

    with campaign("read_manifest"):
        run()


# Ray in this process: the few calls cofisearch.distributed makes, each run at once.


class _Done:
    """A call that already ran: what its ObjectRef would resolve to."""

    def __init__(self, method, args):
        try:
            self.value, self.error = method(*args), None
        except Exception as exc:  # noqa: BLE001  (re-raised by get, as Ray would)
            self.value, self.error = None, exc


class _InlineActor:
    def __init__(self, shard):
        self.shard = shard

    def __getattr__(self, name):
        method = getattr(self.shard, name)
        return types.SimpleNamespace(remote=lambda *args: _Done(method, args))


class _InlineShardActor:
    @staticmethod
    def options(**_):
        from cofisearch.distributed._shard import Shard

        return types.SimpleNamespace(remote=lambda *args: _InlineActor(Shard(*args)))


class _InlineRay:
    def __init__(self, ray):
        self.exceptions = ray.exceptions

    @staticmethod
    def is_initialized():
        return True

    def get(self, refs, timeout=None):
        if isinstance(refs, list):
            return [self.get(ref) for ref in refs]
        if refs.error is not None:
            raise refs.error
        return refs.value

    @staticmethod
    def put(value):
        return value

    @staticmethod
    def kill(actor, no_restart=False):
        pass


@pytest.fixture
def inline_ray(monkeypatch):
    ray = pytest.importorskip("ray")
    from cofisearch.distributed import _sharded

    monkeypatch.setattr(_sharded, "ray", _InlineRay(ray))
    monkeypatch.setattr(_sharded, "ShardActor", _InlineShardActor)


@pytest.fixture(scope="module")
def tmpfs():
    """A scratch directory in memory where there is one: 100k saves written and read."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = tempfile.mkdtemp(prefix="cofisearch-fuzz-", dir=parent)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def read_save(directory):
    """A save as ``(manifest, {file name: bytes})``."""
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    files = {}
    for entry in manifest["shards"]:
        for name in entry["files"].values():
            with open(os.path.join(directory, name), "rb") as f:
                files[name] = f.read()
    return manifest, files


def sharded_bases(directory):
    """The saves that inputs mutate: binary, float (both metrics, equal and unequal
    shard sizes), a cascade and an empty index."""
    from cofisearch.distributed import ShardedCascade, ShardedIndex

    bases = {}
    for name, template, n_shards, rows in [
        ("binary/2", cofisearch.BinaryIndex(24), 2, ORIGINALS["binary"].codes),
        ("cosine/3", cofisearch.FloatIndex(3, metric="cosine"), 3, ORIGINALS["cosine"].vectors),
        ("ip/2", cofisearch.FloatIndex(5), 2, ORIGINALS["ip"].vectors),
        ("empty/2", cofisearch.BinaryIndex(8), 2, None),
    ]:
        with ShardedIndex(template, n_shards) as sharded:
            if rows is not None:
                sharded.add(rows)
            sharded.save(os.path.join(directory, name))
        bases[name] = read_save(os.path.join(directory, name))
    with ShardedCascade(
        cofisearch.BinaryIndex(24), cofisearch.FloatIndex(4, metric="cosine"), 2,
        n_candidates=4, screen="global",
    ) as sharded:
        sharded.add(ORIGINALS["binary"].codes, _matching_fine().vectors)
        sharded.save(os.path.join(directory, "cascade/2"))
    bases["cascade/2"] = read_save(os.path.join(directory, "cascade/2"))
    return bases


def _set_checksum(manifest, name, data):
    """Points the manifest's checksum for file ``name`` at ``data``'s header CRC, as a
    save of that file would (where the mutated manifest still has the place for it)."""
    if len(data) < 52:
        return
    (crc,) = struct.unpack_from("<I", data, 48)
    shards = manifest.get("shards")
    for entry in shards if isinstance(shards, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            continue
        checks = entry.get("checksums")
        for j, file_name in enumerate(entry["files"].values()):
            if file_name == name and isinstance(checks, list) and j < len(checks):
                checks[j] = crc


def mutated_sharded(bases, seed, i):
    """Input ``i`` of the load_sharded target: a base save with one or two of its
    manifest, manifest text or shard files changed; returns ``(base name, manifest
    text, files, what changed, mmap)``."""
    d = Draws(rng=np.random.default_rng([seed, i]))
    name = d.pick(sorted(bases))
    manifest, files = bases[name]
    manifest, files = copy.deepcopy(manifest), dict(files)
    hows = [d.pick(["manifest", "manifest text", "file", "file and its checksum", "swap",
                    "swap with checksums", "delete"]) for _ in range(d.integer(1, 2))]
    for how in hows:
        if how == "manifest":
            manifest = _manifest_mutations(manifest, d)
        elif how.startswith("file"):
            non_empty = sorted(n for n, data in files.items() if data)
            if not non_empty:
                continue
            file_name = d.pick(non_empty)
            floats = ".vectors." in file_name
            files[file_name], _, _ = mutate_file(files[file_name], floats, d)
            if how == "file and its checksum":
                _set_checksum(manifest, file_name, files[file_name])
        elif how.startswith("swap"):
            a = d.pick(sorted(files))
            same_kind = [b for b in sorted(files) if b != a and b.split(".")[-2] == a.split(".")[-2]]
            if same_kind:
                b = d.pick(same_kind)
                files[a], files[b] = files[b], files[a]
                if how == "swap with checksums":
                    _set_checksum(manifest, a, files[a])
                    _set_checksum(manifest, b, files[b])
        elif how == "delete":
            del files[d.pick(sorted(files))]
    text = json.dumps(manifest)
    if "manifest text" in hows:
        data = bytearray(text.encode())
        if d.coin():
            del data[d.integer(0, len(data) - 1) :]
        else:
            data[d.integer(0, len(data) - 1)] = d.integer(0, 255)
        text = bytes(data).decode(errors="replace")
    return name, text, files, hows, d.coin()


def described(manifest, files):
    """Per file suffix, ``(layout, global rows)`` as the files the manifest names hold
    them, decoded apart from cofisearch and dealt round-robin; and each shard's rows."""
    from cofisearch.distributed._manifest import SUFFIXES

    n = manifest["n_shards"]
    out, per_shard = [], []
    for suffix in SUFFIXES[manifest["kind"]]:
        shards = [decode_file(files[entry["files"][suffix]]) for entry in manifest["shards"]]
        layouts = {lay for lay, _ in shards}
        assert len(layouts) == 1, layouts
        total = sum(rows.shape[0] for _, rows in shards)
        rows = np.empty((total, shards[0][1].shape[1]), shards[0][1].dtype)
        for s, (_, part) in enumerate(shards):
            assert part.shape[0] == len(range(s, total, n)), "counts break round-robin routing"
            rows[s::n] = part
        out.append((layouts.pop(), rows))
        per_shard.append([part for _, part in shards])
    return out, per_shard


def _restored(lay, rows):
    """An index holding exactly ``rows`` (no normalisation), for the reference."""
    if lay[0] == "binary":
        return _index._restore(1, lay[1], 0, rows)
    return _index._restore(2, lay[1], 0 if lay[2] == "ip" else 1, rows)


def check_sharded(loaded, manifest, files, base, inline):
    """The oracle for an accepted sharded load: it holds what the files the manifest
    names hold, shard by shard, and answers as one index over those rows would."""
    parts, per_shard = described(manifest, files)
    assert loaded.n_shards == manifest["n_shards"]
    assert loaded.ntotal == manifest["ntotal"] == parts[0][1].shape[0]
    if inline:
        for s in range(loaded.n_shards):
            for j, index in enumerate(loaded.actors[s].shard._indexes):
                assert layout(index) == parts[j][0]
                np.testing.assert_array_equal(rows_of(index), per_shard[j][s])
                assert_acceptable_rows(index)
    if loaded.kind == "cascade":
        if loaded.ntotal:
            single = cofisearch.Cascade(
                _restored(*parts[0]), _restored(*parts[1]), n_candidates=loaded.n_candidates
            )
            rng = np.random.default_rng(0)
            qc = rng.integers(0, 256, (3, parts[0][1].shape[1]), dtype=np.uint8)
            qv = rng.standard_normal((3, parts[1][1].shape[1])).astype(np.float32)
            k = min(3, loaded.n_candidates)
            got, expected = loaded.search(qc, qv, k), single.search(qc, qv, k)
            # Equal to the single cascade with a global screen, or one deep enough to
            # hold every shard's rows (see ShardedCascade).
            if loaded.screen == "global" or loaded.n_candidates >= max(loaded.shard_sizes):
                np.testing.assert_array_equal(got.ids, expected.ids)
                np.testing.assert_array_equal(got.distances, expected.distances)
    else:
        check_answers(loaded, parts[0][1])
    base_parts, _ = described(*base)
    same = all(
        lay == base_lay and np.array_equal(rows, base_rows)
        for (lay, rows), (base_lay, base_rows) in zip(parts, base_parts)
    )
    return "accepted, equal" if same else "accepted, what the files named say"


def load_sharded_one(directory, case, bases, target, inline=True):
    """Writes one input into ``directory``, loads it and applies the oracle."""
    from cofisearch.distributed import load_sharded

    name, text, files, _, mmap = case
    os.makedirs(directory)
    try:
        with open(os.path.join(directory, "manifest.json"), "w") as f:
            f.write(text)
        for file_name, data in files.items():
            with open(os.path.join(directory, file_name), "wb") as f:
                f.write(data)
        try:
            with watchdog():
                loaded = load_sharded(directory, mmap=mmap)
        except (ValueError, TypeError) as exc:
            assert str(exc)
            OUTCOMES[target][f"rejected {type(exc).__name__}"] += 1
            return
        with loaded:
            OUTCOMES[target][check_sharded(loaded, json.loads(text), files, bases[name], inline)] += 1
    finally:
        shutil.rmtree(directory)


def test_load_sharded_over_mutated_saves(long_run, inline_ray, tmpfs):
    bases = sharded_bases(os.path.join(tmpfs, "bases"))
    seed = batch_seed(long_run, "load_sharded")
    total = 100_000 if long_run else 1_000
    with campaign("load_sharded"):
        for i in range(total):
            case = mutated_sharded(bases, seed, i)
            try:
                load_sharded_one(os.path.join(tmpfs, "input"), case, bases, "load_sharded")
            except AssertionError as exc:
                raise AssertionError(f"input {i} of seed {seed} ({case[0]}, {case[3]}): {exc}") from exc


def test_load_sharded_over_mutated_saves_through_ray_actors(long_run, tmp_path):
    # The same kind of inputs through real Ray actors, which every load that passes the
    # manifest checks starts (one to two seconds here): a short run, checking that the
    # transport changes no outcome.
    ray = pytest.importorskip("ray")
    from cofisearch.distributed import ShardedIndex

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with ShardedIndex(cofisearch.BinaryIndex(24), 2) as sharded:
            sharded.add(ORIGINALS["binary"].codes)
            sharded.save(tmp_path / "base")
        bases = {"binary/2": read_save(tmp_path / "base")}
        seed = batch_seed(long_run, "load_sharded, Ray actors")
        manifest, files = bases["binary/2"]
        # The save as written first, so that even a short run loads one through the actors.
        cases = [("binary/2", json.dumps(manifest), dict(files), [], False)]
        cases += [mutated_sharded(bases, seed, i) for i in range(199 if long_run else 7)]
        with campaign("load_sharded, Ray actors"):
            for case in cases:
                load_sharded_one(
                    tmp_path / "input", case, bases, "load_sharded, Ray actors", inline=False
                )
    finally:
        if started:
            ray.shutdown()

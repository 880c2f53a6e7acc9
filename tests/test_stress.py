"""Concurrency stress: adders, searchers and a saver on one index at once.

Every row an adder writes encodes (thread, batch, row-in-batch), so any state of the
index can be decoded and judged: rows only ever append, each add is one contiguous
batch, and each adder's batches appear in order. A searcher brackets each search
between two reads of ``ntotal`` and proves the search saw a prefix of the rows that
ends at a batch boundary inside that bracket ("before or after an add, never between");
rows are read back from a later snapshot, which holds every row the search could have
seen, unchanged. The saver checks every file it writes (and every pickle) against the
acknowledged and in-flight adds. The campaign functions return their counters, so that
``bench/reliability.py`` can run them at any size.
"""

import os
import pickle
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields

import numpy as np

import cofisearch
from cofisearch import _reference

N_ADDERS = 4
N_SEARCHERS = 4
BATCH = 3  # rows per add
TAG = 0xA5


@dataclass
class Counters:
    """What a campaign did and what went wrong; the test asserts the problems are 0."""

    duration_s: float = 0.0
    adds: int = 0
    rows_added: int = 0
    searches: int = 0
    full_searches: int = 0  # k at least ntotal: every row returned
    checks: int = 0  # properties verified across searches, saves and the final state
    saves: int = 0  # files written and loaded back, and pickles
    inconsistencies: int = 0
    spurious_errors: int = 0
    rows_lost: int = 0
    failures: list = field(default_factory=list)

    def fail(self, what):
        self.inconsistencies += 1
        if len(self.failures) < 20:
            self.failures.append(what)

    def problems(self):
        return self.inconsistencies + self.spurious_errors + self.rows_lost

    def summary(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "failures"}


# ---- row encodings ----------------------------------------------------------------------
#
# Binary (64-bit codes): [thread + 1, row + 1, batch (u32 LE), TAG, xor of bytes 0..6].
# Float (dim N_ADDERS + 1): column `thread` holds the thread's rank of the row
# (batch * BATCH + row + 1), the last column thread + 1, every other column 0; an
# inner-product query e_t then scores thread t's rows by rank, so its top BATCH is the
# thread's latest batch, exactly (small integers are exact in float32).


def binary_rows(thread, batch):
    rows = np.zeros((BATCH, 8), dtype=np.uint8)
    rows[:, 0] = thread + 1
    rows[:, 1] = np.arange(1, BATCH + 1)
    rows[:, 2:6] = np.frombuffer(np.uint32(batch).tobytes(), dtype=np.uint8)
    rows[:, 6] = TAG
    rows[:, 7] = np.bitwise_xor.reduce(rows[:, :7], axis=1)
    return rows


def decode_binary(codes):
    """``(thread, batch, row)`` arrays of packed rows, or None where a row is not one an
    adder wrote."""
    codes = np.asarray(codes)
    ok = (codes[:, 6] == TAG) & (np.bitwise_xor.reduce(codes[:, :7], axis=1) == codes[:, 7])
    thread = codes[:, 0].astype(np.int64) - 1
    row = codes[:, 1].astype(np.int64) - 1
    batch = np.ascontiguousarray(codes[:, 2:6]).view("<u4")[:, 0].astype(np.int64)
    ok &= (thread >= 0) & (thread < N_ADDERS) & (row >= 0) & (row < BATCH)
    return (thread, batch, row) if ok.all() else None


def float_rows(thread, batch):
    rows = np.zeros((BATCH, N_ADDERS + 1), dtype=np.float32)
    rows[:, thread] = batch * BATCH + np.arange(1, BATCH + 1)
    rows[:, N_ADDERS] = thread + 1
    return rows


def decode_float(vectors):
    v = np.asarray(vectors)
    thread = v[:, N_ADDERS].astype(np.int64) - 1
    if not ((thread >= 0) & (thread < N_ADDERS)).all():
        return None
    rank = v[np.arange(v.shape[0]), thread].astype(np.int64) - 1
    nonzero = (v[:, :N_ADDERS] != 0).sum(axis=1)
    if not ((nonzero == 1) & (rank >= 0)).all():
        return None
    return thread, rank // BATCH, rank % BATCH


def prefix_problem(decoded, m, acked_before, inflight_after):
    """Why rows ``[0, m)`` (decoded) are not a state the index may have been in while
    adds ``acked_before`` (per thread, the last batch acknowledged) had returned and
    ``inflight_after`` (the last batch started) had not; None if they are."""
    if decoded is None:
        return "a row no adder wrote (torn or uninitialised)"
    thread, batch, row = (a[:m] for a in decoded)
    if m % BATCH:
        return f"{m} rows is not a whole number of batches"
    starts = np.arange(0, m, BATCH)
    # Each add is one contiguous batch: rows 0..BATCH-1 of one (thread, batch).
    if not (
        (row.reshape(-1, BATCH) == np.arange(BATCH)).all()
        and (thread.reshape(-1, BATCH) == thread[starts, None]).all()
        and (batch.reshape(-1, BATCH) == batch[starts, None]).all()
    ):
        return "an add's rows are not contiguous"
    for t in range(N_ADDERS):
        mine = batch[starts][thread[starts] == t]
        if not np.array_equal(mine, np.arange(mine.size)):
            return f"thread {t}'s batches are {mine[:10]}..., not 0, 1, 2, ... in order"
        if mine.size < acked_before[t] + 1:
            return f"thread {t} has {mine.size} batches, {acked_before[t] + 1} were acknowledged"
        if mine.size > inflight_after[t] + 1:
            return f"thread {t} has {mine.size} batches, only {inflight_after[t] + 1} were started"
    return None


# ---- the campaign -----------------------------------------------------------------------


class _Run:
    """Shared state of one campaign: the adders' progress and the counters."""

    def __init__(self, index, kind, duration_s, max_batches):
        self.index = index
        self.kind = kind  # "binary", "float" or "cascade"
        self.started = time.monotonic()
        self.duration_s = duration_s
        self.deadline = self.started + duration_s
        self.max_batches = max_batches
        # Per thread, the last batch whose add returned and the last one started; each
        # slot is written by its adder only (plain int stores are atomic).
        self.acked = [-1] * N_ADDERS
        self.inflight = [-1] * N_ADDERS
        self.c = Counters()
        self.lock = threading.Lock()  # for the counters only

    def count(self, **amounts):
        with self.lock:
            for name, value in amounts.items():
                setattr(self.c, name, getattr(self.c, name) + value)

    def fail(self, what):
        with self.lock:
            self.c.fail(what)

    def spurious(self, where, exc):
        with self.lock:
            self.c.spurious_errors += 1
            if len(self.c.failures) < 20:
                self.c.failures.append(f"{where}: {type(exc).__name__}: {exc}")

    def going(self):
        return time.monotonic() < self.deadline

    def add(self, t, b):
        if self.kind == "binary":
            self.index.add(binary_rows(t, b))
        elif self.kind == "float":
            self.index.add(float_rows(t, b))
        else:
            self.index.add(binary_rows(t, b), float_rows(t, b))

    def ntotal(self):
        return self.index.ntotal if self.kind != "cascade" else self.index.coarse.ntotal

    def rows(self):
        """A snapshot of the rows and its decoding."""
        if self.kind == "binary":
            rows = self.index.codes
            return rows, decode_binary(rows)
        if self.kind == "float":
            rows = self.index.vectors
            return rows, decode_float(rows)
        fine = self.index.fine.vectors
        return fine, decode_float(fine)


def _adder(run, t):
    try:
        b = run.acked[t] + 1
        while run.going() and b < run.max_batches:
            # Paced so that the index grows over the whole run, not in one burst.
            wait = run.started + run.duration_s * b / run.max_batches - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            run.inflight[t] = b
            run.add(t, b)
            run.acked[t] = b
            run.count(adds=1, rows_added=BATCH)
            b += 1
    except Exception as exc:  # noqa: BLE001  (counted and reported by the test)
        run.spurious(f"adder {t}", exc)


def _bracket_problem(run, m, nb, na, decoded, acked_before, inflight_after):
    if not nb <= m <= na:
        return f"saw {m} rows, outside [{nb}, {na}] counted around the search"
    return prefix_problem(decoded, m, acked_before, inflight_after)


def _binary_search(run, rng, full):
    index = run.index
    q = rng.integers(0, 256, (1, 8), dtype=np.uint8)
    acked_before = list(run.acked)
    nb = index.ntotal
    k = nb + 512 if full else 4
    d, i = index.search(q, k, num_threads=1)
    na = index.ntotal
    inflight_after = list(run.inflight)
    rows = index.codes
    run.count(searches=1, full_searches=int(full))
    ids, dist = i[0], d[0]
    real = ids >= 0
    if full:
        m = int(real.sum())
        if m == k:
            return  # more than 170 adds landed between two statements: nothing proved
        if not np.array_equal(np.sort(ids[real]), np.arange(m)):
            return run.fail(f"binary full search returned ids {ids[:20]}..., not 0..{m - 1}")
    else:
        m = None
        if not real.all():
            return run.fail(f"binary search padded a result over {nb} rows: {ids}")
    all_d = _reference.hamming_distances(q.reshape(1, -1), rows[:na])[0]
    if not np.array_equal(all_d[ids[real]], dist[real]):
        return run.fail(f"binary distances {dist[real]} for ids {ids[real]}, expected "
                        f"{all_d[ids[real]]}")
    if full:
        decoded = decode_binary(rows)
        problem = _bracket_problem(run, m, nb, na, decoded, acked_before, inflight_after)
        run.count(checks=1)
        return problem and run.fail(f"binary full search: {problem}")
    # Small k: the result must be the exact top-k of a prefix [0, m) ending at a batch
    # boundary in [nb, na]; the k-th result's (distance, id) key has exactly k - 1
    # smaller keys there.
    key = all_d.astype(np.int64) * (na + 1) + np.arange(na)
    kth = int(dist[-1]) * (na + 1) + int(ids[-1])
    low = max(nb, int(ids.max()) + 1)
    if np.unique(ids).size != ids.size or (np.diff(key[ids]) <= 0).any():
        return run.fail(f"binary top-4 {ids} (distances {dist}) is not in (distance, id) order")
    for m in range(low + (-low) % BATCH, na + 1, BATCH):
        if int((key[:m] < kth).sum()) == len(ids) - 1:
            run.count(checks=1)
            return
    run.fail(f"binary top-4 {ids} is not the top-4 of any prefix in [{nb}, {na}]")


def _float_search(run, rng, full):
    index = run.index
    acked_before = list(run.acked)
    nb = index.ntotal
    if full:
        q = rng.standard_normal((1, N_ADDERS + 1)).astype(np.float32)
        k = nb + 512
    else:
        # One query per adder, in one call (one snapshot): e_t's top BATCH is thread t's
        # latest batch.
        q = np.eye(N_ADDERS, N_ADDERS + 1, dtype=np.float32)
        k = BATCH
    s, i = index.search(q, k, num_threads=1)
    na = index.ntotal
    inflight_after = list(run.inflight)
    rows = index.vectors
    run.count(searches=1, full_searches=int(full))
    if full:
        ids = i[0]
        real = ids >= 0
        m = int(real.sum())
        if m == k:
            return
        if not np.array_equal(np.sort(ids[real]), np.arange(m)):
            return run.fail(f"float full search returned ids {ids[:20]}..., not 0..{m - 1}")
        # ScaNN-style: the returned scores are the rows' scores (within rounding), best
        # first; ties may come in either order only within rounding.
        truth = rows[ids[real]].astype(np.float64) @ q[0].astype(np.float64)
        got = s[0][real]
        scale = np.abs(rows[ids[real]]).sum(axis=1) * np.abs(q[0]).max()
        if not (np.abs(got - truth) <= 1e-6 * scale + 1e-30).all() or (np.diff(got) > 0).any():
            return run.fail("float full search scores are not the rows' scores, best first")
        problem = _bracket_problem(
            run, m, nb, na, decode_float(rows), acked_before, inflight_after
        )
        run.count(checks=1)
        return problem and run.fail(f"float full search: {problem}")
    # Thread t's latest batch in [0, m): its rows, highest rank first, scored by rank.
    # Column t holds thread t's ranks (increasing with the id) and 0 elsewhere, so the
    # result is right for m iff its rows are thread t's, with ranks top, top - 1, ...
    # equal to the scores, and no row of thread t between its top row and m.
    mine = rows[i, np.arange(N_ADDERS)[:, None]]  # (threads, BATCH): column t of its rows
    top = s[:, 0]
    expected = top[:, None] - np.arange(BATCH)
    if not (np.array_equal(mine, expected) and np.array_equal(s, expected)):
        return run.fail(f"float latest-batch search {i.tolist()} scores {s.tolist()}: not "
                        "one thread's consecutive rows")
    low = max(nb, int(i.max()) + 1)
    for m in range(low + (-low) % BATCH, na + 1, BATCH):
        # Thread t's later rows would sit past its returned top row: none below m.
        if all(not rows[i[t, 0] + 1 : m, t].any() for t in range(N_ADDERS)):
            run.count(checks=1)
            return
    run.fail(f"float latest-batch search {i.tolist()} fits no prefix in [{nb}, {na}]")


def _cascade_search(run, rng, full):
    cascade = run.index
    nb = run.ntotal()
    t = int(rng.integers(N_ADDERS))
    q_codes = binary_rows(t, int(rng.integers(max(1, run.acked[t] + 1))))[:1]
    q_vecs = np.eye(1, N_ADDERS + 1, t, dtype=np.float32)
    res = cascade.search(q_codes, q_vecs, BATCH, num_threads=1)
    na = run.ntotal()
    run.count(searches=1)
    codes = cascade.coarse.codes
    vectors, decoded = run.rows()
    ids = res.ids[0]
    if not ((ids >= 0) & (ids < na)).all():
        return run.fail(f"cascade returned ids {ids} over {nb}..{na} rows")
    # The two stages hold the same item under one id, and the scores are the fine rows'.
    if decoded is None or decode_binary(codes[ids]) is None:
        return run.fail("a row no adder wrote (torn or uninitialised)")
    coarse = decode_binary(codes[ids])
    fine = tuple(a[ids] for a in decoded)
    if not all(np.array_equal(a, b) for a, b in zip(coarse, fine)):
        return run.fail(f"cascade ids {ids} name different items in coarse and fine")
    if not np.array_equal(res.distances[0], vectors[ids] @ q_vecs[0]):
        return run.fail("cascade scores are not the fine rows' scores")
    run.count(checks=1)


_SEARCH = {"binary": _binary_search, "float": _float_search, "cascade": _cascade_search}


def _searcher(run, seed, full_every):
    rng = np.random.default_rng(seed)
    search = _SEARCH[run.kind]
    n = 0
    try:
        while run.going() or n == 0:
            search(run, rng, full_every and n % full_every == 0)
            n += 1
    except Exception as exc:  # noqa: BLE001
        run.spurious("searcher", exc)


def _saver(run, directory):
    n = 0
    try:
        while run.going() or n < 2:
            path = os.path.join(directory, f"stress-{n % 2}.cfs")
            acked_before = list(run.acked)
            index = run.index if run.kind != "cascade" else run.index.fine
            if n % 2:
                restored = pickle.loads(pickle.dumps(run.index))
                if run.kind == "cascade":
                    restored = restored.fine
            else:
                index.save(path)
                restored = cofisearch.load_index(path)
            inflight_after = list(run.inflight)
            live, _ = run.rows()
            got = restored.codes if run.kind == "binary" else restored.vectors
            decoded = decode_binary(got) if run.kind == "binary" else decode_float(got)
            m = got.shape[0]
            problem = prefix_problem(decoded, m, acked_before, inflight_after)
            if problem is None and not np.array_equal(got, live[:m]):
                problem = "the saved rows differ from the index's rows"
            run.count(saves=1, checks=1)
            if problem:
                run.fail(f"save {n}: {problem}")
            n += 1
    except Exception as exc:  # noqa: BLE001
        run.spurious("saver", exc)


def stress(kind, duration_s, *, max_batches=2_000, full_every=16, seed=0):
    """Runs N_ADDERS adders, N_SEARCHERS searchers and one saver on one fresh index of
    ``kind`` ("binary", "float" or "cascade") for about ``duration_s`` (adders stop
    after ``max_batches`` batches each; the searchers and saver then stop too), checks
    the final state and returns the :class:`Counters`."""
    if kind == "binary":
        index = cofisearch.BinaryIndex(64)
    elif kind == "float":
        index = cofisearch.FloatIndex(N_ADDERS + 1)
    else:
        index = cofisearch.Cascade(
            cofisearch.BinaryIndex(64), cofisearch.FloatIndex(N_ADDERS + 1), n_candidates=8
        )
    run = _Run(index, kind, duration_s, max_batches)
    # One batch per adder first, so every search has rows of every thread to find; the
    # adders go on from batch 1.
    for t in range(N_ADDERS):
        run.inflight[t] = 0
        run.add(t, 0)
        run.acked[t] = 0
    with tempfile.TemporaryDirectory() as directory:
        adders = [threading.Thread(target=_adder, args=(run, t)) for t in range(N_ADDERS)]
        others = [
            threading.Thread(target=_searcher, args=(run, seed * 100 + s, full_every))
            for s in range(N_SEARCHERS)
        ] + [threading.Thread(target=_saver, args=(run, directory))]
        for t in adders + others:
            t.start()
        for t in adders + others:
            t.join()
        # Final state: every acknowledged add present once, in order, nothing else.
        rows, decoded = run.rows()
        problem = prefix_problem(decoded, rows.shape[0], run.acked, run.acked)
        run.count(checks=1)
        if problem:
            run.fail(f"final state: {problem}")
        expected = sum(b + 1 for b in run.acked) * BATCH
        run.c.rows_lost = max(0, expected - run.ntotal())
    run.c.duration_s = round(time.monotonic() - run.started, 2)
    return run.c


# ---- the tests --------------------------------------------------------------------------
#
# Short: a few seconds each. Long: about 5 minutes in all and over a million searches on
# 2 cores (full searches, whose checks read every row, are rarer there).


def _campaign(kind, long_run, short_s, long_s):
    if long_run:
        c = stress(kind, long_s, max_batches=1_000, full_every=128)
    else:
        c = stress(kind, short_s, max_batches=300, full_every=16)
    print(f"\nstress {kind}: {c.summary()}")
    assert c.problems() == 0, (c.summary(), c.failures)
    assert c.searches and c.saves >= 2 and c.adds
    return c


def test_stress_binary_index(long_run):
    _campaign("binary", long_run, 4, 130)


def test_stress_float_index(long_run):
    _campaign("float", long_run, 4, 130)


def test_stress_cascade_add(long_run):
    _campaign("cascade", long_run, 2, 40)


def test_the_checks_catch_a_search_that_sees_an_add_half_done(monkeypatch):
    # The campaign is only as good as its checks: an index that briefly publishes a
    # snapshot ending inside an add must be caught.
    append = cofisearch._rows.Storage.append

    def torn_append(self, rows):
        snapshot = append(self, rows)
        buffer, n = snapshot
        self.snapshot = (buffer, n - 1)
        time.sleep(0.0002)
        self.snapshot = snapshot
        return snapshot

    monkeypatch.setattr(cofisearch._rows.Storage, "append", torn_append)
    for kind in ("binary", "float"):
        c = stress(kind, 1, max_batches=200, full_every=4)
        assert c.inconsistencies > 0, c.summary()

"""Node faults on a two-node Ray cluster simulated on this machine.

A head node (``ray start --head``, custom resource ``cofi_node_a``) and a second node
(``ray start --address=127.0.0.1:PORT``, resource ``cofi_node_b``) run as two raylets here.
Sharded indexes put shards 0 and 2 on the head and shards 1 and 3 on the second node with
``actor_options`` (one dict per shard), and the second node's raylet is SIGKILLed while a
driver searches, as when a machine drops out of a real cluster. Every answer is compared
with the NumPy reference (``cofisearch._reference``); what must hold:

- a saved shard that the cluster can place elsewhere (soft node affinity) is restored from
  its save: every search still returns the exact answer;
- a shard pinned to the dead node by its resource cannot be placed, so the index raises
  ``ShardLostError`` naming only the dead node's shards, on that call and every later one,
  and its last save loads on the surviving node with exact answers;
- through a restart of the node, searches wait for the node and the shards restored there,
  and every one of them returns the exact answer;
- never a partial or wrong answer.

Token authentication: a node that joins with ``ray start --address`` is refused unless it
runs in the head's auth mode with the head's token (a head runs in token mode whenever
``~/.ray/auth_token`` exists, a joining node only when told). Every process of this cluster,
the driver included, gets ``RAY_AUTH_MODE=token`` and one ``RAY_AUTH_TOKEN`` made for the
run: Ray's supported way (one token on every node), and ``~/.ray`` is neither read nor
written. The cluster has its own ports and ``--temp-dir``, and is stopped through its own
processes only (never ``ray stop``, which would stop every Ray on the machine).

The driver runs in a child process, so that its Ray connection, environment and crashes
stay apart from the pytest process (which other modules give a local Ray of their own);
it reports what it saw as JSON lines. Starting the cluster and a node restart take seconds
each: about a minute in all on 2 cores (50-75 s here), so the cluster tests run under
``--long`` or ``--cluster`` only; the one-node regression test below runs by default.
"""

import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import cofisearch
from cofisearch import _reference

ray = pytest.importorskip("ray")

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(cofisearch.__file__)))
NODE_START_S = 120  # a node's start, on a loaded 2-core machine, takes 10-20 s
N_SHARDS = 4
# Shards 0, 2 on the head ("a"), 1, 3 on the second node ("b").
NODE_OF_SHARD = ["a" if s % 2 == 0 else "b" for s in range(N_SHARDS)]
NODE_B_SHARDS = tuple(s for s in range(N_SHARDS) if NODE_OF_SHARD[s] == "b")
REPORTS = {}


# ---- the cluster (pytest process) ----------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name is in parentheses and may hold spaces: split after it.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _marked_processes(marker):
    """Pids whose environment holds ``marker`` (this cluster's token): every process
    of this cluster, whatever its parent and process group became."""
    needle = marker.encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    out.append(int(entry))
        except OSError:  # gone, or another user's: not ours either way
            continue
    return out


class Cluster:
    """A head and a second node started with ``ray start --block``: each node lives as
    long as its ``ray start`` process, which stops the node's processes on SIGTERM."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="cofi-cluster-")
        token = secrets.token_hex(32)
        self.marker = f"RAY_AUTH_TOKEN={token}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(
                [PYTHON_DIR, *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = None
        self.node_b = None
        self.starts = 0

    def _ray_start(self, args, name):
        self.starts += 1
        log = os.path.join(self.root, f"{name}-{self.starts}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                 "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={self.root}/ray",
                 f"--dashboard-agent-listen-port={_free_port()}", *args],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + NODE_START_S
        while time.monotonic() < deadline:
            with open(log, "rb") as f:
                if b"Ray runtime started" in f.read():
                    return proc, log
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        self._stop(proc)
        with open(log, "rb") as f:
            tail = f.read()[-3000:].decode(errors="replace")
        raise RuntimeError(f"{name} did not start within {NODE_START_S} s:\n{tail}")

    def start_head(self):
        self.head, _ = self._ray_start(
            ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
             '--resources={"cofi_node_a": 8}', "--include-dashboard=false",
             f"--dashboard-port={_free_port()}"],
            "head",
        )

    def start_node_b(self):
        self.node_b, _ = self._ray_start(
            [f"--address={self.address}", "--node-ip-address=127.0.0.1",
             '--resources={"cofi_node_b": 8}'],
            "node-b",
        )

    def node_b_alive(self):
        return self.node_b is not None and self.node_b.poll() is None

    def kill_node_b_raylet(self):
        """SIGKILLs the second node's raylet (its ``ray start`` then stops the node's
        other processes, as a dead machine would)."""
        raylets = [
            pid for pid in _children(self.node_b.pid)
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "raylet"
        ]
        assert len(raylets) == 1, raylets
        os.kill(raylets[0], signal.SIGKILL)
        self.node_b.wait(timeout=60)

    @staticmethod
    def _stop(proc):
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self):
        self._stop(self.node_b)
        self._stop(self.head)
        # Whatever outlived its node (a worker between its raylet's death and its own).
        for pid in _marked_processes(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def logs_tail(self, chars=4000):
        parts = []
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".log"):
                with open(os.path.join(self.root, name), "rb") as f:
                    parts.append(f"--- {name}\n" + f.read()[-chars:].decode(errors="replace"))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(request):
    """The cluster for the module; the drivers' reports print at the end (``-s``)."""
    if not (request.config.getoption("--long") or request.config.getoption("--cluster")):
        pytest.skip("starts a two-node Ray cluster (about a minute): run with --cluster or --long")
    c = Cluster()
    try:
        try:
            c.start_head()
            c.start_node_b()
        except (RuntimeError, OSError) as exc:
            pytest.skip(f"the two-node Ray cluster could not start here: {exc}")
        started = time.monotonic()
        yield c
        REPORTS["cluster"] = {"seconds": round(time.monotonic() - started), "node starts": c.starts}
    finally:
        c.stop()
    for name, report in REPORTS.items():
        print(f"\ncluster faults, {name}: {json.dumps(report)}")


class Driver:
    """A driver process running ``scenario`` (a function of this module, in the child)
    and its line protocol: the child writes JSON events, the parent answers lines."""

    def __init__(self, cluster, scenario):
        self.cluster = cluster
        args = {"address": cluster.address, "save": os.path.join(cluster.root, scenario)}
        with open(os.path.join(cluster.root, f"driver-{scenario}.log"), "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), scenario, json.dumps(args)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                env=cluster.env, text=True, bufsize=1,
            )
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put(None)

    def expect(self, event, timeout):
        """Waits for the child's ``event``; returns its payload."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(self._why(f"no {event!r} from the driver in {timeout} s"))
            if got is None:
                raise AssertionError(self._why(f"the driver ended before {event!r}"))
            if got["event"] == event:
                return got

    def tell(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _why(self, what):
        return f"{what}\n{self.cluster.logs_tail()}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stdin.close()


def _run(cluster, scenario, fault, timeout=300):
    """Runs ``scenario`` in a driver, applies ``fault`` once the driver is searching,
    and returns the driver's report."""
    if not cluster.node_b_alive():
        cluster.start_node_b()
    driver = Driver(cluster, scenario)
    try:
        driver.expect("searching", timeout)
        fault(cluster)
        driver.tell("fault done")
        report = driver.expect("report", timeout)
        assert driver.proc.wait(timeout=60) == 0, driver._why("the driver failed")
        REPORTS[scenario] = report
        return report
    finally:
        driver.close()


# ---- the tests (pytest process) ------------------------------------------------------------


def test_a_replacement_that_dies_on_arrival_is_followed_by_another(tmp_path, monkeypatch):
    # What a node that has just died does to the first replacement sent there (Ray still
    # counts it alive for a few seconds), reproduced on one local Ray in a few seconds.
    from cofisearch.distributed import ShardedIndex

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        codes, _, queries, _ = _data()
        with ShardedIndex(cofisearch.BinaryIndex(64), 2, start_timeout_s=60) as index:
            index.add(codes)
            index.save(tmp_path)
            new_actor = index._new_actor
            doomed = []

            def first_one_dies(s):
                actor = new_actor(s)
                if not doomed:
                    doomed.append(s)
                    ray.kill(actor, no_restart=True)
                return actor

            monkeypatch.setattr(index, "_new_actor", first_one_dies)
            victim = index.actors[1]
            ray.kill(victim, no_restart=True)
            # ray.kill only asks: a search right after it may still be answered by the
            # living actor (seen under load), and then no replacement is ever sent.
            deadline = time.monotonic() + 60
            while True:
                try:
                    ray.get(victim.count.remote(), timeout=30)
                except ray.exceptions.RayActorError:
                    break
                assert time.monotonic() < deadline, "the killed actor still answers"
                time.sleep(0.05)
            got = index.search(queries, K)
            assert doomed == [1]
            expected = _index_reference(codes, queries)
            np.testing.assert_array_equal(got.ids, expected[1])
            np.testing.assert_array_equal(got.distances, expected[0])
    finally:
        if started:
            ray.shutdown()


def test_a_node_lost_mid_search_restores_or_raises_shard_lost(cluster):
    report = _run(cluster, "node_lost", Cluster.kill_node_b_raylet)
    assert report["wrong"] == [], report["wrong"][:3]
    # The pinned index's shards took the second node's resource (the soft ones need none).
    assert report["placed_on_b"] == len(NODE_B_SHARDS)
    # Soft affinity: the dead node's shards restored from their save, elsewhere.
    soft = report["indexes"]["soft"]
    assert soft["exact"]["after"] >= 10 and soft["lost"] == 0, soft
    assert soft["replaced"] == list(NODE_B_SHARDS), soft
    # Pinned by resource: lost, naming only the dead node's shards, and lost for good.
    pinned = report["indexes"]["pinned"]
    assert pinned["lost"] >= 2 and pinned["exact_after_lost"] == 0, pinned
    assert set(pinned["lost_shards"]) <= set(NODE_B_SHARDS), pinned
    # The pinned index's last save, loaded onto the surviving node.
    assert report["reloaded_exact"] is True


def test_searches_through_a_node_restart_stay_exact(cluster):
    def kill_and_restart(c):
        c.kill_node_b_raylet()
        c.start_node_b()

    report = _run(cluster, "restart", kill_and_restart)
    assert report["wrong"] == [], report["wrong"][:3]
    for name, counts in report["indexes"].items():
        assert counts["lost"] == 0, (name, counts)
        assert counts["exact"]["after"] >= 10, (name, counts)
        assert counts["replaced"] == list(NODE_B_SHARDS), (name, counts)
    # The restored shards run on the new node again: their resource is taken there.
    assert report["placed_on_b_after"] == 2 * len(NODE_B_SHARDS)


# ---- the driver (child process) ------------------------------------------------------------


def _emit(event, **payload):
    print(json.dumps({"event": event, **payload}), flush=True)


def _data():
    rng = np.random.default_rng(11)
    n, nq = 3001, 24
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    # Small integers: every dot product is exact in float32, so the float reference is
    # exact too and ties (frequent) are decided by id, as in the engine.
    vectors = rng.integers(-3, 4, (n, 16)).astype(np.float32)
    query_codes = rng.integers(0, 256, (nq, 8), dtype=np.uint8)
    query_vectors = rng.integers(-3, 4, (nq, 16)).astype(np.float32)
    return codes, vectors, query_codes, query_vectors


K = 10
N_CANDIDATES = 60


def _index_reference(codes, queries):
    return _reference.topk(_reference.hamming_distances(queries, codes), K, largest=False)


def _cascade_reference(codes, vectors, query_codes, query_vectors):
    """The cascade with a global screen: the exact Hamming top ``N_CANDIDATES``, then
    the exact inner-product top ``K`` among them (ties by id at both stages)."""
    _, candidates = _reference.topk(
        _reference.hamming_distances(query_codes, codes), N_CANDIDATES, largest=False
    )
    scores = query_vectors.astype(np.float64) @ vectors.astype(np.float64).T
    kept = np.full_like(scores, -np.inf)
    np.put_along_axis(kept, candidates, np.take_along_axis(scores, candidates, axis=1), axis=1)
    return _reference.topk(kept.astype(np.float32), K, largest=True)


class _Watched:
    """One sharded index under a search loop: its reference and what it returned, per
    phase: ``before`` the driver says it is searching, ``during`` the fault (the parent
    may strike at any moment of it), ``after`` the parent said the fault is done."""

    def __init__(self, name, index, search, reference):
        self.name = name
        self.index = index
        self.search = search
        self.reference = reference
        self.actors = index.actors
        self.counts = {"exact": {"before": 0, "during": 0, "after": 0}, "lost": 0,
                       "exact_after_lost": 0, "lost_shards": [], "lost_error": None, "replaced": [],
                       "slowest_s": 0.0}

    def step(self, phase, wrong):
        from cofisearch.distributed import ShardLostError

        started = time.monotonic()
        try:
            got = self.search()
        except ShardLostError as exc:
            self.counts["lost"] += 1
            self.counts["lost_error"] = self.counts["lost_error"] or str(exc)
            self.counts["lost_shards"] = sorted(set(self.counts["lost_shards"]) | set(exc.shards))
            return
        finally:
            self.counts["slowest_s"] = max(self.counts["slowest_s"], time.monotonic() - started)
        exact = np.array_equal(got.ids, self.reference[1]) and np.array_equal(
            got.distances, self.reference[0]
        )
        if not exact:
            wrong.append({"index": self.name, "phase": phase})
        elif self.counts["lost"]:
            self.counts["exact_after_lost"] += 1  # a lost index must stay lost
        else:
            self.counts["exact"][phase] += 1

    def report(self):
        now = self.index.actors
        self.counts["replaced"] = [s for s in range(N_SHARDS) if now[s] is not self.actors[s]]
        return self.counts


def _node_b_id():
    for node in ray.nodes():
        if node["Alive"] and "cofi_node_b" in node["Resources"]:
            return node["NodeID"]
    raise RuntimeError("the second node is not in the cluster")


def _pinned_options():
    # num_cpus=0: an actor that names a resource otherwise holds a CPU for its lifetime
    # (Ray's rule), and each node has one.
    return [
        {"resources": {f"cofi_node_{NODE_OF_SHARD[s]}": 1}, "num_cpus": 0}
        for s in range(N_SHARDS)
    ]


def _soft_options():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_b = _node_b_id()
    return [
        _pinned_options()[s] if NODE_OF_SHARD[s] == "a"
        else {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_b, soft=True)}
        for s in range(N_SHARDS)
    ]


def _search_loop(watched, min_after, until):
    """Searches every index in turn: ``searching`` once a few answers are in, then on
    through the fault until the parent's line has come, ``min_after`` more rounds have
    run and ``until(watched)`` holds (or two minutes have passed)."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in sys.stdin], daemon=True).start()
    wrong = []
    phase = "before"
    rounds_after = 0
    deadline = None
    while True:
        for w in watched:
            w.step(phase, wrong)
        if phase == "before" and all(w.counts["exact"]["before"] >= 5 for w in watched):
            _emit("searching")
            phase = "during"
        elif phase == "during" and not lines.empty():
            phase = "after"
            deadline = time.monotonic() + 120
        elif phase == "after":
            rounds_after += 1
            if (rounds_after >= min_after and until(watched)) or time.monotonic() > deadline:
                return wrong


def scenario_node_lost(args):
    from cofisearch.distributed import ShardedCascade, ShardedIndex, load_sharded

    codes, vectors, query_codes, query_vectors = _data()
    # Time for replacements to die on the dead node until Ray knows it is dead.
    soft = ShardedIndex(
        cofisearch.BinaryIndex(64), N_SHARDS, actor_options=_soft_options(), start_timeout_s=60
    )
    soft.add(codes)
    soft.save(os.path.join(args["save"], "soft"))
    # A short start timeout: the pinned shards' replacements can never be placed.
    pinned = ShardedCascade(
        cofisearch.BinaryIndex(64), cofisearch.FloatIndex(16), N_SHARDS,
        n_candidates=N_CANDIDATES, screen="global", actor_options=_pinned_options(),
        start_timeout_s=5,
    )
    pinned.add(codes, vectors)
    pinned.save(os.path.join(args["save"], "pinned"))
    placed = 8 - ray.available_resources().get("cofi_node_b", 0)
    watched = [
        _Watched("soft", soft, lambda: soft.search(query_codes, K),
                 _index_reference(codes, query_codes)),
        _Watched("pinned", pinned, lambda: pinned.search(query_codes, query_vectors, K),
                 _cascade_reference(codes, vectors, query_codes, query_vectors)),
    ]
    wrong = _search_loop(
        watched, min_after=10,
        until=lambda ws: ws[1].counts["lost"] >= 2 and ws[0].counts["exact"]["after"] >= 10,
    )
    reloaded = load_sharded(
        os.path.join(args["save"], "pinned"),
        actor_options={"resources": {"cofi_node_a": 1}, "num_cpus": 0},
    )
    got = reloaded.search(query_codes, query_vectors, K)
    reference = watched[1].reference
    reloaded_exact = bool(
        np.array_equal(got.ids, reference[1]) and np.array_equal(got.distances, reference[0])
    )
    _emit(
        "report", wrong=wrong, placed_on_b=placed, reloaded_exact=reloaded_exact,
        indexes={w.name: w.report() for w in watched},
    )


def scenario_restart(args):
    from cofisearch.distributed import ShardedCascade, ShardedIndex

    codes, vectors, query_codes, query_vectors = _data()
    # Searches wait for a replacement on the restarted node for up to NODE_START_S.
    index = ShardedIndex(
        cofisearch.BinaryIndex(64), N_SHARDS, actor_options=_pinned_options(),
        start_timeout_s=NODE_START_S,
    )
    index.add(codes)
    index.save(os.path.join(args["save"], "index"))
    cascade = ShardedCascade(
        cofisearch.BinaryIndex(64), cofisearch.FloatIndex(16), N_SHARDS,
        n_candidates=N_CANDIDATES, screen="global", actor_options=_pinned_options(),
        start_timeout_s=NODE_START_S,
    )
    cascade.add(codes, vectors)
    cascade.save(os.path.join(args["save"], "cascade"))
    watched = [
        _Watched("index", index, lambda: index.search(query_codes, K),
                 _index_reference(codes, query_codes)),
        _Watched("cascade", cascade, lambda: cascade.search(query_codes, query_vectors, K),
                 _cascade_reference(codes, vectors, query_codes, query_vectors)),
    ]

    def restored(ws):
        return all(len(w.report()["replaced"]) == len(NODE_B_SHARDS) for w in ws)

    wrong = _search_loop(watched, min_after=10, until=restored)
    placed_after = 8 - ray.available_resources().get("cofi_node_b", 0)
    _emit(
        "report", wrong=wrong, placed_on_b_after=placed_after,
        indexes={w.name: w.report() for w in watched},
    )


def _driver_main(scenario, args):
    ray.init(address=args["address"], log_to_driver=False)
    try:
        globals()[f"scenario_{scenario}"](args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    _driver_main(sys.argv[1], json.loads(sys.argv[2]))

"""Throughput of a sharded index on Ray against one in-process index, and Ray's overhead.

Run from the repository root (Ray installed, ``pip install "cofisearch[ray]"``)::

    PYTHONPATH=python python bench/bench_distributed.py            # full run, ~2-3 min
    PYTHONPATH=python python bench/bench_distributed.py --smoke    # tiny, checks only

``--smoke`` (or ``COFISEARCH_BENCH_SMOKE=1``) builds tiny indexes, checks that every
sharded answer equals the single index's, and times nothing: the CI mode.

What is measured
----------------
1. Throughput: 1,000,000 random 256-bit codes (Hamming) and 200,000 random 256-d float32
   vectors (inner product), k = 10, query batches of 1, 100 and 1000. Contenders: one
   ``BinaryIndex``/``FloatIndex`` in this process with every core, and a ``ShardedIndex``
   over 1, 2 and 4 shard actors, each shard searching with cores // shards threads (at
   least 1) so that the machine is never oversubscribed. Each contender answers the same
   batch once per round, rounds interleaved so that a noisy neighbour hurts all alike;
   the table gives the median seconds per batch, queries per second and the ratio to
   the single index (above 1: the sharded index is faster).
2. Overhead: a 1,000-code index, where the scan itself costs microseconds, searched with
   batches of 1 and 100 queries many times: the median latency per call of the single
   index and of the sharded ones, and the difference, which is what Ray adds per call
   (object transfer, scheduling, the merge).

What a 2-core machine allows
----------------------------
Sharding on one machine only moves work between processes: the single index already
uses both cores (the engine splits one query's scan, or a batch's queries, over
threads), so on this box a sharded index should at best match it, on large batches,
where the fixed price of a round trip is small next to the scan; on single queries it
is slower by that price, 1.5-2 ms per call here with one shard and more with several
(2-4 actor processes and the driver share two cores), nearly all of it Ray's own
actor round trip (the "ray xN" rows). Ratios a little above 1 on float batches did show
up, but runs on this shared machine vary by tens of percent (other jobs load it), so
read them as "no loss", not as a speed-up. What sharding buys is capacity and
throughput on many machines, each shard scanning its part with its own cores and
memory bandwidth; this machine can show the per-call price of that, not the
multi-machine gain.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import cofisearch

try:
    import ray

    from cofisearch.distributed import ShardedIndex
except ImportError as exc:  # the bench is useless without Ray: say how to get it
    sys.exit(f"{exc}")

K = 10


def _cores():
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _make_data(kind, n, width, seed):
    rng = np.random.default_rng(seed)
    if kind == "binary":
        return rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
    return rng.standard_normal((n, width)).astype(np.float32)


def _template(kind, width):
    return cofisearch.BinaryIndex(width) if kind == "binary" else cofisearch.FloatIndex(width)


class _Contender:
    def __init__(self, name, index, threads):
        self.name = name
        self.index = index
        self.threads = threads
        self.samples = {}

    def search(self, queries):
        return self.index.search(queries, K, num_threads=self.threads)


def _build(kind, data, width, shard_counts, cores):
    single = _template(kind, width)
    single.add(data)
    contenders = [_Contender("single", single, cores)]
    build_s = {}
    for n_shards in shard_counts:
        t0 = time.perf_counter()
        sharded = ShardedIndex(_template(kind, width), n_shards)
        sharded.add(data)
        build_s[n_shards] = time.perf_counter() - t0
        threads = max(1, cores // n_shards)
        name = f"{n_shards} shard{'s' if n_shards > 1 else ''}"
        contenders.append(_Contender(name, sharded, threads))
    return contenders, build_s


def _check_identical(contenders, queries):
    expected = contenders[0].search(queries)
    for c in contenders[1:]:
        got = c.search(queries)
        same = np.array_equal(got.ids, expected.ids)
        if not (same and np.array_equal(got.distances, expected.distances)):
            raise SystemExit(f"{c.name}: results differ from the single index")


def _time_rounds(contenders, queries, rounds):
    for c in contenders:  # warm-up: first calls page data in and start worker threads
        c.search(queries)
    for c in contenders:
        c.samples[queries.shape[0]] = []
    for _ in range(rounds):
        for c in contenders:
            t0 = time.perf_counter()
            c.search(queries)
            c.samples[queries.shape[0]].append(time.perf_counter() - t0)


def _rounds_for(batch, rounds):
    # Large batches take long and vary little; single queries are cheap and noisy.
    if batch <= 10:
        return rounds * 5
    return rounds if batch <= 100 else max(3, rounds // 2)


def _throughput(kind, n, width, batches, shard_counts, cores, rounds, seed):
    data = _make_data(kind, n, width, seed)
    queries = _make_data(kind, max(batches), width, seed + 1)
    contenders, build_s = _build(kind, data, width, shard_counts, cores)
    _check_identical(contenders, queries[: min(100, max(batches))])
    what = f"{n:,} x {width}-bit codes" if kind == "binary" else f"{n:,} x {width} float32"
    print(f"\n== {kind}: {what}, k={K}; sharded build (start actors + add): "
          + ", ".join(f"{s} shards {t:.2f} s" for s, t in build_s.items()))
    print(f"{'batch':>6} {'contender':>10} {'threads':>8} {'s/batch':>10} {'queries/s':>11} "
          f"{'vs single':>10}")
    for batch in batches:
        _time_rounds(contenders, queries[:batch], _rounds_for(batch, rounds))
        base = statistics.median(contenders[0].samples[batch])
        for c in contenders:
            med = statistics.median(c.samples[batch])
            print(f"{batch:>6} {c.name:>10} {c.threads:>8} {med:>10.5f} {batch / med:>11,.0f} "
                  f"{base / med:>10.2f}")
    for c in contenders[1:]:
        c.index.close()


@ray.remote
class _Echo:
    """An actor that does nothing: the floor of one Ray round trip with this payload."""

    def reply(self, queries, k):
        nq = queries.shape[0]
        return 0, (np.zeros((nq, k), np.int32), np.zeros((nq, k), np.int64))


class _RayFloor:
    def __init__(self, n_actors):
        self.name = f"ray x{n_actors}"
        self.threads = "-"
        self.samples = {}
        self.actors = [_Echo.remote() for _ in range(n_actors)]
        ray.get([a.reply.remote(np.zeros((1, 1), np.uint8), 1) for a in self.actors])

    def search(self, queries):
        return ray.get([a.reply.remote(queries, K) for a in self.actors])


def _overhead(shard_counts, cores, calls, seed):
    kind, n, width = "binary", 1000, 256
    data = _make_data(kind, n, width, seed)
    queries = _make_data(kind, 100, width, seed + 1)
    contenders, _ = _build(kind, data, width, shard_counts, cores)
    _check_identical(contenders, queries)
    floors = [_RayFloor(s) for s in shard_counts]
    print(f"\n== Ray overhead: {n:,} x {width}-bit codes (the scan costs microseconds), k={K}, "
          f"{calls} calls per contender; 'ray xN' = a no-op call to N actors with the same "
          "query and result arrays, Ray's own floor")
    print(f"{'batch':>6} {'contender':>10} {'ms/call':>9} {'added ms/call':>14} "
          f"{'added us/query':>15}")
    for batch in (1, 100):
        _time_rounds(contenders + floors, queries[:batch], calls)
        base = statistics.median(contenders[0].samples[batch])
        for c in contenders + floors:
            med = statistics.median(c.samples[batch])
            added = med - base
            print(f"{batch:>6} {c.name:>10} {med * 1e3:>9.3f} {added * 1e3:>14.3f} "
                  f"{added * 1e6 / batch:>15.1f}")
    for c in contenders[1:]:
        c.index.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, check results, time nothing (CI)")
    parser.add_argument("--codes", type=int, default=1_000_000, help="binary database rows")
    parser.add_argument("--nbits", type=int, default=256)
    parser.add_argument("--vectors", type=int, default=200_000, help="float database rows")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--rounds", type=int, default=10,
                        help="timed rounds at batch 100 (x5 for single queries, /2 for 1000)")
    parser.add_argument("--calls", type=int, default=300, help="calls per contender, overhead part")
    args = parser.parse_args(argv)
    smoke = args.smoke or os.environ.get("COFISEARCH_BENCH_SMOKE") == "1"
    cores = _cores()

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        if smoke:
            for kind, width in (("binary", 64), ("float", 16)):
                data = _make_data(kind, 500, width, 0)
                contenders, _ = _build(kind, data, width, args.shards, cores)
                _check_identical(contenders, _make_data(kind, 20, width, 1))
                for c in contenders[1:]:
                    c.index.close()
            print("bench_distributed smoke: sharded results identical to the single index")
            return
        print(f"cofisearch {cofisearch.__version__}, SIMD {cofisearch.simd_level()}, "
              f"ray {ray.__version__}, python {platform.python_version()}, "
              f"{platform.machine()}, {cores} cores usable")
        print(f"single index: {cores} threads in this process; sharded: one Ray actor per "
              "shard on this machine, cores // shards threads each")
        common = dict(batches=args.batches, shard_counts=args.shards, cores=cores,
                      rounds=args.rounds)
        _throughput("binary", args.codes, args.nbits, seed=0, **common)
        _throughput("float", args.vectors, args.dim, seed=2, **common)
        _overhead(args.shards, cores, args.calls, 4)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

"""Throughput of a sharded index on Ray against one in-process index, and Ray's overhead.

Run from the repository root (Ray installed, ``pip install "cofisearch[ray]"``)::

    PYTHONPATH=python python bench/bench_distributed.py                # ~2-3 min
    PYTHONPATH=python python bench/bench_distributed.py --scale quick  # under a minute
    PYTHONPATH=python python bench/bench_distributed.py --scale tiny   # seconds, checks

``--scale tiny`` runs every part at tiny sizes with one round: it checks that every
sharded answer equals the single index's and times nothing meaningful (the CI mode).
Timings use the harness timer (``cofisearch._bench.measure.compare``: a warm-up call,
then rounds in which every contender answers the same batch, in rotating order).

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
import sys
import time

import numpy as np

import cofisearch
from cofisearch._bench.data import make_codes, make_vectors
from cofisearch._bench.measure import compare
from cofisearch._bench.plans import SCALES

try:
    import ray

    from cofisearch.distributed import ShardedIndex
except ImportError as exc:  # the bench is useless without Ray: say how to get it
    sys.exit(f"{exc}")

K = 10

# Per named scale: every size option's default (an option given on the command line wins).
_DEFAULT = dict(codes=1_000_000, nbits=256, vectors=200_000, dim=256, shards=[1, 2, 4],
                batches=[1, 100, 1000], rounds=10, calls=300)
SIZES = {
    # Two shards exercise the split and the merge; each actor costs seconds to start.
    "tiny": dict(codes=2_000, nbits=64, vectors=1_000, dim=16, shards=[2], batches=[1, 10],
                 rounds=1, calls=2),
    "quick": {**_DEFAULT, "codes": 200_000, "vectors": 50_000, "rounds": 5, "calls": 100},
    "default": _DEFAULT,
    # Nothing larger means anything on one machine (see "What a 2-core machine allows").
    "full": _DEFAULT,
}


def _cores():
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _make_data(kind, n, width, stream):
    if kind == "binary":
        return make_codes(n, width, stream=stream)
    return make_vectors(n, width, stream=stream)


def _template(kind, width):
    return cofisearch.BinaryIndex(width) if kind == "binary" else cofisearch.FloatIndex(width)


class _Contender:
    def __init__(self, name, index, threads):
        self.name = name
        self.index = index
        self.threads = threads
        self.timings = {}  # batch size -> Timing

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
    # One call per sample: a sharded call's cost is the point, not averaged away. The
    # warm-up pages data in and starts worker threads.
    fns = {c.name: (lambda c=c: c.search(queries)) for c in contenders}
    timings = compare(fns, repeat=rounds, warmup=1, min_sample_s=0.0)
    for c in contenders:
        c.timings[queries.shape[0]] = timings[c.name]


def _rounds_for(batch, rounds):
    # Large batches take long and vary little; single queries are cheap and noisy.
    if batch <= 10:
        return rounds * 5
    return rounds if batch <= 100 else max(3, rounds // 2)


def _throughput(kind, n, width, batches, shard_counts, cores, rounds):
    data = _make_data(kind, n, width, 0)
    queries = _make_data(kind, max(batches), width, 1)
    contenders, build_s = _build(kind, data, width, shard_counts, cores)
    _check_identical(contenders, queries[: min(100, max(batches))])
    what = f"{n:,} x {width}-bit codes" if kind == "binary" else f"{n:,} x {width} float32"
    print(f"\n== {kind}: {what}, k={K}; sharded build (start actors + add): "
          + ", ".join(f"{s} shards {t:.2f} s" for s, t in build_s.items()))
    print(f"{'batch':>6} {'contender':>10} {'threads':>8} {'s/batch':>10} {'queries/s':>11} "
          f"{'vs single':>10}")
    for batch in batches:
        _time_rounds(contenders, queries[:batch], _rounds_for(batch, rounds))
        base = contenders[0].timings[batch].median
        for c in contenders:
            med = c.timings[batch].median
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
        self.timings = {}
        self.actors = [_Echo.remote() for _ in range(n_actors)]
        ray.get([a.reply.remote(np.zeros((1, 1), np.uint8), 1) for a in self.actors])

    def search(self, queries):
        return ray.get([a.reply.remote(queries, K) for a in self.actors])


def _overhead(shard_counts, cores, calls):
    kind, n, width = "binary", 1000, 256
    data = _make_data(kind, n, width, 2)
    queries = _make_data(kind, 100, width, 3)
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
        base = contenders[0].timings[batch].median
        for c in contenders + floors:
            med = c.timings[batch].median
            added = med - base
            print(f"{batch:>6} {c.name:>10} {med * 1e3:>9.3f} {added * 1e3:>14.3f} "
                  f"{added * 1e6 / batch:>15.1f}")
    for c in contenders[1:]:
        c.index.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="default",
                        help="sizes: tiny (seconds, checks only), quick, default and full "
                        "(default: %(default)s)")
    parser.add_argument("--codes", type=int, help="binary database rows")
    parser.add_argument("--nbits", type=int)
    parser.add_argument("--vectors", type=int, help="float database rows")
    parser.add_argument("--dim", type=int)
    parser.add_argument("--shards", type=int, nargs="+")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--rounds", type=int,
                        help="timed rounds at batch 100 (x5 for single queries, /2 for 1000)")
    parser.add_argument("--calls", type=int, help="calls per contender, overhead part")
    args = parser.parse_args(argv)
    for key, value in SIZES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cores = _cores()

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        print(f"cofisearch {cofisearch.__version__}, SIMD {cofisearch.simd_level()}, "
              f"ray {ray.__version__}, python {platform.python_version()}, "
              f"{platform.machine()}, {cores} cores usable, {args.scale} scale")
        print(f"single index: {cores} threads in this process; sharded: one Ray actor per "
              "shard on this machine, cores // shards threads each")
        common = dict(batches=args.batches, shard_counts=args.shards, cores=cores,
                      rounds=args.rounds)
        _throughput("binary", args.codes, args.nbits, **common)
        _throughput("float", args.vectors, args.dim, **common)
        _overhead(args.shards, cores, args.calls)
        print("\nsharded results identical to the single index")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

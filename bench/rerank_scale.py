"""The fusion reranker, measured: the study's Table 6 (all pairs against cascade-bounded
reranking) and what stage 3 buys in R@1 (issue 16).

Trains a dual encoder, ITQ codes of its embeddings and the ``CrossAttentionReranker`` on
negatives mined with the cascade itself (``cofisearch._bench.table6``), then

- quality: R@1/5/10 of the dual encoder alone, the cascade and the cascade + reranker at
  each ``n_rerank`` on held-out synthetic pairs (text to image);
- cost: the reranker's time over all pairs and behind the cascade at 1K/5K and 10K/50K
  images/captions, growth factors beside the study's, encoding time beside it.

    python bench/rerank_scale.py                    # writes bench/results/rerank_scale.{md,json}
    python bench/rerank_scale.py --scale quick      # fewer samples, smaller timed slices
    python bench/rerank_scale.py --scale tiny --out /tmp/r   # seconds: every path runs

Timings are medians (the harness timer, ``cofisearch._bench.measure``, and the cascade's
own stage timings); nothing is checked against a threshold here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cofisearch
from cofisearch._bench.machine import format_machine, machine_info
from cofisearch._bench.plans import SCALES
from cofisearch._bench.table6 import run_table6
from cofisearch._files import json_default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=SCALES, default="default")
    p.add_argument("--out", default=RESULTS, help="directory for rerank_scale.{md,json}")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="search threads")
    p.add_argument("--skip-quality", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    models, tables = run_table6(args.scale, quality=not args.skip_quality,
                                torch_threads=args.torch_threads, num_threads=args.threads)
    for table in tables:
        print(table.to_markdown(), flush=True)

    info = machine_info()
    summary = (f"`python bench/rerank_scale.py --scale {args.scale}`: SIMD level "
               f"{cofisearch.simd_level()}, {time.perf_counter() - started:.0f} s in all "
               f"(training {models.train_seconds:.0f} s). Machine below.")
    head = ["## The fusion reranker, measured (issue 16)", "", summary, ""]
    foot = ["", "Machine:", "", "```", format_machine(info), "```", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rerank_scale.md"), "w") as f:
        f.write("\n".join(head) + "\n" + "\n".join(t.to_markdown() for t in tables)
                + "\n".join(foot))
    with open(os.path.join(args.out, "rerank_scale.json"), "w") as f:
        json.dump({"scale": args.scale, "machine": info,
                   "tables": [t.to_dict() for t in tables]}, f, indent=2, default=json_default)
    return 0


if __name__ == "__main__":
    sys.exit(main())

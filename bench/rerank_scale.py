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
    python bench/rerank_scale.py --debian           # only the real-text row: Debian titles
                                                    # to descriptions (rerank_scale.debian.md)

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
    p.add_argument("--debian", action="store_true",
                   help="only the quality row on Debian's package descriptions (apt lists "
                        "and MiniLM embeddings needed; cached embeddings are reused)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.debian:
        return debian_quality(args)
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


def debian_quality(args, n_rerank=32, nbits=256, n_candidates=256, epochs=2):
    """Stage 3 on real text: titles to descriptions of Debian's packages (the Debian
    study's split and deduplicated descriptions), all-MiniLM-L6-v2 embeddings, a cascade
    of ITQ codes and the exact cosine, and the bench's reranker shape trained on the
    training titles with negatives mined by the same cascade."""
    import numpy as np
    from cofisearch import datasets
    from cofisearch._bench.table6 import MODEL_SIZES, _cascade
    from cofisearch.encoders import (
        CrossAttentionReranker,
        ITQBinarizer,
        SentenceEncoder,
    )
    from cofisearch.study_debian import database_of

    shape = MODEL_SIZES["default"]
    data = datasets.load_debian_descriptions(test_size=0.1, seed=0)
    encoder = SentenceEncoder(num_threads=args.torch_threads)
    titles = encoder.encode(list(data.titles))
    descs = encoder.encode(list(data.descriptions))
    # As the Debian study: items without a description have nothing to find, and items
    # sharing a description share its one database row.
    rows, truth = database_of(data, "desc")
    db = np.ascontiguousarray(descs[rows], dtype=np.float32)
    itq = ITQBinarizer(nbits, seed=0).fit(db)
    db_codes = itq.transform(db)

    def split(items):
        items = items[truth[items] >= 0]
        q = np.ascontiguousarray(titles[items], dtype=np.float32)
        return q, itq.transform(q), truth[items]

    (q_tr, c_tr, y_tr), (q_te, c_te, y_te) = split(data.train), split(data.test)
    cascade = _cascade(db_codes, db, n_candidates)
    reranker = CrossAttentionReranker(
        db.shape[1], db.shape[1], d_model=shape["d_model"], n_tokens=shape["n_tokens"],
        candidate_tokens=shape["candidate_tokens"], n_heads=shape["n_heads"],
        hidden=shape["rerank_hidden"], seed=0, num_threads=args.torch_threads)
    t0 = time.perf_counter()
    reranker.fit(q_tr, db, query_to_candidate=y_tr, negatives="cascade", cascade=cascade,
                 cascade_queries=(c_tr, q_tr), n_negatives=n_rerank - 1, n_random=0,
                 epochs=epochs)
    train_s = time.perf_counter() - t0
    staged = _cascade(db_codes, db, n_candidates, reranker=reranker.for_candidates(db),
                      n_rerank=n_rerank)

    def recall(ids):
        return [100 * float((ids[:, :k] == y_te[:, None]).any(axis=1).mean())
                for k in (1, 5, 10)]

    found = {f"cascade ({nbits}-bit ITQ screen of {n_candidates}, float rerank)":
             recall(cascade.search(c_te, q_te, 10, num_threads=args.threads).ids),
             f"cascade + reranker, n_rerank={n_rerank}":
             recall(staged.search(c_te, q_te, 10, num_threads=args.threads).ids)}
    lines = ["## Stage 3 on real text: Debian titles to descriptions (issue 16)", "",
             (f"`python bench/rerank_scale.py --debian`: all-MiniLM-L6-v2, {len(db):,} "
             f"distinct descriptions, {len(y_te):,} test titles, reranker trained "
             f"{epochs} epochs on {len(y_tr):,} training titles ({train_s:.0f} s) with "
             f"{n_rerank - 1} negatives each mined by the same cascade; the database holds "
             "every description, so test items' descriptions appear in training lists as "
             "negatives only."), "",
             "| method | R@1 | R@5 | R@10 | R@1 vs cascade |", "|---|---|---|---|---|"]
    base = next(iter(found.values()))[0]
    for name, r in found.items():
        lines.append(f"| {name} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} | {r[0] - base:+.2f} |")
    lines += ["", "Machine:", "", "```", format_machine(machine_info()), "```", ""]
    text = "\n".join(lines)
    print(text, flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rerank_scale.debian.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cascade latency and recall against exhaustive float search at the largest scale here.

Issue 4, measurement 2: a database of 1M images and 5M captions (the study's largest
scalability setting), encoders trained on a 20k-image slice of the same synthetic
distribution, a sample of test queries (images not used for training) timed against the
whole database, in both directions:

- exhaustive float: ``FloatIndex.search`` over all image or caption embeddings;
- the cascade: ``BinaryIndex`` Hamming screen of ``n_candidates`` then exact float rerank,
  with two kinds of codes: an instance-loss ``HashEncoder`` trained on the features
  (``hash``), and ITQ codes of the dual encoder's own embeddings (``itq``, training-free,
  so the screen approximates the very ranking it feeds).

It prints R@1/R@10 on the sample for each, the per-query latency and the speed-up, and
says which ``n_candidates`` keeps R@10 within 1 point of exhaustive float at >= 10x lower
latency. Memory: about 6 GB of float embeddings at the default 256 dimensions.

    python bench/cascade_scale.py                       # 1M images / 5M captions
    python bench/cascade_scale.py --scale quick         # 100k images, a tenth of it
    python bench/cascade_scale.py --scale tiny          # seconds: every path, checked
    python bench/cascade_scale.py --images 200000       # any size (overrides the scale)
    python bench/cascade_scale.py --json cascade.json   # raw numbers too

Latencies are medians of ``--repeats`` samples after a warm-up (the harness timer,
``cofisearch._bench.measure``); the returned scores of the exhaustive search and of every
cascade are checked against scores recomputed from their ids, and a failed check ends
the run with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import cofisearch
from cofisearch import datasets
from cofisearch._bench.checks import CHECKED_QUERIES, float_problems
from cofisearch._bench.data import SEED
from cofisearch._bench.measure import measure
from cofisearch._bench.plans import SCALES
from cofisearch.encoders import DualEncoder, HashEncoder, ITQBinarizer

# Per named scale: every size option's default (an option given on the command line wins).
# The default is the study's largest setting; nothing larger fits this script's memory.
_ISSUE = dict(images=1_000_000, train=12_000, queries=1_000, nbits=128, embed_dim=256,
              hidden=512, epochs=4, candidates="100,300,1000,3000,10000", itq_bits=256,
              repeats=3)
SIZES = {
    "tiny": dict(images=2_000, train=500, queries=50, nbits=64, embed_dim=64, hidden=64,
                 epochs=1, candidates="10,100", itq_bits=64, repeats=1),
    "quick": {**_ISSUE, "images": 100_000},
    "default": _ISSUE,
    "full": _ISSUE,
}


def _timed(fn, repeats):
    """(median seconds per call, one result): the result comes from an untimed call."""
    out = fn()
    return measure(fn, repeat=repeats, min_sample_s=0.0).median, out


def _check(label, db_emb, q_emb, result):
    m = min(q_emb.shape[0], CHECKED_QUERIES)
    return [f"{label}: {p}" for p in float_problems(
        label, db_emb, q_emb[:m], np.asarray(result.distances)[:m], np.asarray(result.ids)[:m],
        result.ids.shape[1])]


def _recall(ids, truth_fn, ks=(1, 10)):
    hit = truth_fn(ids)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), ids.shape[1])
    return {f"R@{k}": 100.0 * float(np.mean(first < k)) for k in ks}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=SCALES, default="default",
                   help="sizes: tiny (seconds, checks only), quick (100k images), default and "
                   "full (1M images) (default: %(default)s)")
    p.add_argument("--images", type=int, help="database images (captions = 5x)")
    p.add_argument("--train", type=int, help="training images")
    p.add_argument("--queries", type=int, help="sampled queries per direction")
    p.add_argument("--nbits", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="threads for training and encoding (one is fastest on a shared 2-core box)")
    p.add_argument("--candidates")
    p.add_argument("--codes", default="hash,itq", help="code kinds to screen with: hash, itq")
    p.add_argument("--itq-bits", type=int)
    p.add_argument("--threads", type=int, default=cofisearch.get_num_threads())
    p.add_argument("--repeats", type=int)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for key, value in SIZES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cpi = 5
    depths = [int(c) for c in args.candidates.split(",")]
    report = {"args": vars(args), "cpu": platform.processor(), "simd": cofisearch.simd_level()}
    problems = []

    t0 = time.perf_counter()
    train = datasets.make_paired(args.train, cpi, seed=args.seed, n_test=1).train
    d_img, d_txt = train.image_features.shape[1], train.text_features.shape[1]
    fit = dict(caption_to_image=train.caption_to_image, labels=train.image_labels,
               epochs=args.epochs, show_progress_bar=True)
    dual = DualEncoder(d_img, d_txt, embed_dim=args.embed_dim, hidden=args.hidden, seed=args.seed,
                       num_threads=args.torch_threads)
    dual.fit(train.image_features, train.text_features, **fit)
    hasher = HashEncoder(d_img, d_txt, nbits=args.nbits, loss="instance", hidden=args.hidden,
                         seed=args.seed, num_threads=args.torch_threads)
    hasher.fit(train.image_features, train.text_features, **fit)
    report["train_seconds"] = time.perf_counter() - t0
    print(f"trained on {args.train} images in {report['train_seconds']:.0f} s", flush=True)

    # The database is the whole synthetic set (training images included, as in a real
    # deployment); queries come from its last images, which training never saw.
    t0 = time.perf_counter()
    n_img, n_cap = args.images, args.images * cpi
    img_emb = np.empty((n_img, args.embed_dim), np.float32)
    cap_emb = np.empty((n_cap, args.embed_dim), np.float32)
    kinds = [c.strip() for c in args.codes.split(",") if c.strip()]
    bits = {"hash": args.nbits, "itq": args.itq_bits}
    img_codes = {c: np.empty((n_img, bits[c] // 8), np.uint8) for c in kinds}
    cap_codes = {c: np.empty((n_cap, bits[c] // 8), np.uint8) for c in kinds}
    for chunk in datasets.iter_paired(n_img, cpi, seed=args.seed, chunk_size=16_384):
        a, b = chunk.start, chunk.stop
        img_emb[a:b] = dual.encode_image(chunk.image_features)
        cap_emb[a * cpi:b * cpi] = dual.encode_text(chunk.text_features)
        if "hash" in kinds:
            img_codes["hash"][a:b] = hasher.encode_image(chunk.image_features)
            cap_codes["hash"][a * cpi:b * cpi] = hasher.encode_text(chunk.text_features)
        print(f"\rencoded {b}/{n_img} images", end="", flush=True)
    if "itq" in kinds:
        # One rotation for both modalities: they share the dual encoder's space.
        fit_rows = np.concatenate([img_emb[:args.train], cap_emb[:args.train * cpi:cpi]])
        itq = ITQBinarizer(args.itq_bits, seed=args.seed).fit(fit_rows)
        for start in range(0, n_img, 65_536):
            img_codes["itq"][start:start + 65_536] = itq.transform(img_emb[start:start + 65_536])
        for start in range(0, n_cap, 65_536):
            cap_codes["itq"][start:start + 65_536] = itq.transform(cap_emb[start:start + 65_536])
    report["encode_seconds"] = time.perf_counter() - t0
    print(f"\nencoded the database in {report['encode_seconds']:.0f} s", flush=True)

    rng = np.random.default_rng(args.seed)
    q_img = np.sort(rng.choice(np.arange(n_img - 10 * args.queries, n_img), args.queries, replace=False))
    q_cap = q_img * cpi + rng.integers(0, cpi, args.queries)
    directions = {
        "i2t": dict(db_emb=cap_emb, db_codes=cap_codes, q_emb=img_emb[q_img],
                    q_codes={c: img_codes[c][q_img] for c in kinds},
                    truth=lambda ids: (ids // cpi) == q_img[:, None]),
        "t2i": dict(db_emb=img_emb, db_codes=img_codes, q_emb=cap_emb[q_cap],
                    q_codes={c: cap_codes[c][q_cap] for c in kinds},
                    truth=lambda ids: ids == (q_cap // cpi)[:, None]),
    }
    report["directions"] = {}
    for name, d in directions.items():
        fine = cofisearch.FloatIndex(args.embed_dim)  # embeddings are unit rows already
        fine.add(d["db_emb"])
        t_float, exact = _timed(lambda: fine.search(d["q_emb"], 10, num_threads=args.threads),
                                args.repeats)
        problems += _check(f"{name} exhaustive", d["db_emb"], d["q_emb"], exact)
        base = _recall(exact.ids, d["truth"])
        print(f"\n{name}: database {fine.ntotal:,} items, {args.queries} queries, {args.threads} threads")
        print(f"  exhaustive float: R@1 {base['R@1']:.1f}  R@10 {base['R@10']:.1f}  "
              f"{1e3 * t_float / args.queries:.3f} ms/query")
        entry = {"exhaustive": {**base, "ms_per_query": 1e3 * t_float / args.queries}}
        for kind in kinds:
            coarse = cofisearch.BinaryIndex(bits[kind])
            coarse.add(d["db_codes"][kind])
            rows = []
            for depth in depths:
                cascade = cofisearch.Cascade(coarse, fine, n_candidates=depth)
                t_casc, res = _timed(lambda: cascade.search(d["q_codes"][kind], d["q_emb"], 10,
                                                            num_threads=args.threads), args.repeats)
                problems += _check(f"{name} cascade {kind} {depth}", d["db_emb"], d["q_emb"], res)
                rec = _recall(res.ids, d["truth"])
                row = {"n_candidates": depth, **rec, "ms_per_query": 1e3 * t_casc / args.queries,
                       "speedup": t_float / t_casc,
                       "screen_ms_per_query": 1e3 * res.timings["coarse"] / args.queries,
                       "rerank_ms_per_query": 1e3 * res.timings["fine"] / args.queries}
                rows.append(row)
                print(f"  cascade {kind} {bits[kind]}-bit n_candidates={depth:>6}: R@1 {rec['R@1']:.1f}  "
                      f"R@10 {rec['R@10']:.1f}  {row['ms_per_query']:.3f} ms/query  "
                      f"speed-up {row['speedup']:.1f}x")
            ok = [r for r in rows if r["R@10"] >= base["R@10"] - 1.0 and r["speedup"] >= 10.0]
            verdict = (f"{kind} codes, n_candidates={ok[0]['n_candidates']}: R@10 within 1 point at "
                       f"{ok[0]['speedup']:.1f}x lower latency" if ok else
                       f"{kind} codes: no n_candidates tried keeps R@10 within 1 point at >= 10x lower latency")
            print(f"  -> {verdict}")
            entry[kind] = {"nbits": bits[kind], "cascade": rows, "verdict": verdict}
        report["directions"][name] = entry
        fine = None  # frees this direction's index before the next one is built
    report["problems"] = problems
    for problem in problems:
        print(f"result check FAILED: {problem}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {os.path.abspath(args.json)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""The FiCo-ITR comparison, rerun end to end on cofisearch: FG vs CG vs the cascade.

:func:`run_study` generates a seeded synthetic paired dataset
(:func:`cofisearch.datasets.make_paired`), trains a fine-grained dual encoder and
cross-modal hashing encoders with an instance-level and a category-level loss, and
evaluates, in both directions (image->text and text->image) on the test split:

- FG exhaustive: float embeddings, exact cosine search;
- CG exhaustive: binary codes, exact Hamming search;
- the cascade: a Hamming screen of ``n_candidates`` per query, then the exact float rerank,
  for every hashing encoder and several depths;

with the study's metrics (R@K in percent, mAP@k as a fraction), the latency of each
stage and the storage per item. With ``scale_items``, it then streams that many more
captions through the trained dual encoder and measures exhaustive float search against
the exhaustive and IVF cascades at that size, where the cascade pays
(:mod:`cofisearch.study_scale`). :func:`run_fashion_mnist` adds category-level retrieval
on real images. Both return a result that renders as Markdown and saves JSON and plots.

Training needs torch (``pip install "cofisearch[torch]"``); plots need matplotlib.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import datasets, metrics, study_scale
from ._bench.measure import measure
from ._checks import check_int, check_positive_int
from ._files import json_default
from ._index import BinaryIndex, FloatIndex
from .cascade import Cascade

__all__ = ["DEMO_SCALES", "StudyResult", "run_fashion_mnist", "run_study"]

# Presets of ``cofisearch demo --scale``: images (train + test), test images, epochs,
# hidden and embedding widths, and the captions and image queries of the section at
# scale (keyword arguments of run_study).
DEMO_SCALES = {
    "tiny": dict(n_images=1_200, n_test=400, epochs=2, hidden=128, embed_dim=64,
                 scale_items=20_000, scale_queries=100),
    "small": dict(n_images=6_000, n_test=2_000, epochs=4, hidden=256, embed_dim=128,
                  scale_items=1_000_000, scale_queries=300),
    "medium": dict(n_images=24_000, n_test=5_000, epochs=6, hidden=512, embed_dim=256,
                   scale_items=2_000_000, scale_queries=1_000),
    "large": dict(n_images=60_000, n_test=10_000, epochs=8, hidden=1024, embed_dim=256,
                  scale_items=5_000_000, scale_queries=1_000),
}

RECALL_KS = (1, 5, 10, 50, 100, 200)
MAP_AT = (10, 100, None)
DIRECTIONS = ("i2t", "t2i")


@dataclass
class StudyResult:
    """Tables of one study run; every table is a list of flat dicts (one per row)."""

    title: str
    config: dict
    retrieval: list = field(default_factory=list)
    latency: list = field(default_factory=list)
    cascade: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    #: The section at scale (study_scale.ScaleSection's rows and summary), if it ran.
    scale: list = field(default_factory=list)
    scale_summary: list = field(default_factory=list)

    def to_markdown(self):
        parts = [f"## {self.title}", "", _config_line(self.config), ""]
        if self.retrieval:
            keys = [k for k in self.retrieval[0] if k not in ("method", "direction")]
            parts += ["### Retrieval quality (R@K in %, mAP as a fraction)", ""]
            parts += _table(self.retrieval, ["method", "direction"] + keys)
        if self.latency:
            parts += ["", "### Query latency (ms per query) and storage", ""]
            parts += _table(self.latency, list(self.latency[0]))
        if self.cascade:
            parts += ["", "### Cascade: recall and latency against n_candidates", ""]
            parts += _table(self.cascade, list(self.cascade[0]))
        if self.scale:
            n = self.config.get("scale_items", 0)
            parts += ["", f"### At scale: {n:,} captions, recall@10 against exact float search", ""]
            parts += _table(self.scale, list(self.scale[0]))
            parts += [""] + [f"- {line}" for line in self.scale_summary]
        if self.notes:
            parts += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def to_dict(self):
        return {
            "title": self.title,
            "config": self.config,
            "retrieval": self.retrieval,
            "latency": self.latency,
            "cascade": self.cascade,
            "notes": self.notes,
            "scale": self.scale,
            "scale_summary": self.scale_summary,
        }

    def save(self, out_dir, stem):
        """Writes ``{stem}.md``, ``{stem}.json`` and, with matplotlib and a cascade table,
        ``{stem}_recall.png`` and ``{stem}_latency.png`` (and ``{stem}_scale.png`` with
        the section at scale); returns the paths written."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, f"{stem}.md"), os.path.join(out_dir, f"{stem}.json")]
        with open(paths[0], "w") as f:
            f.write(self.to_markdown())
        with open(paths[1], "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=json_default)
        if self.cascade:
            paths += _plot_cascade(self, out_dir, stem)
        if self.scale:
            path = os.path.join(out_dir, f"{stem}_scale.png")
            title = (f"{self.config.get('scale_items', 0):,} captions, "
                     f"{self.config.get('scale_queries')} image queries, "
                     f"{self.config.get('search_threads')} thread(s)")
            if study_scale.plot_scale(self.scale, path, title):
                paths.append(path)
        return paths




def _config_line(config):
    return "Settings: " + ", ".join(f"{k}={v}" for k, v in config.items())


def _fmt(value):
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if value != value:
            return "—"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


def run_study(
    n_images=6_000,
    n_test=2_000,
    *,
    captions_per_image=5,
    nbits=(64, 128),
    n_candidates=(10, 20, 50, 100, 200, 500),
    epochs=6,
    hidden=512,
    embed_dim=256,
    batch_size=256,
    seed=0,
    num_threads=1,
    torch_threads=1,
    repeats=3,
    scale_items=0,
    scale_queries=300,
    show_progress_bar=False,
):
    """Runs the FG / CG / cascade comparison on synthetic data; returns a :class:`StudyResult`.

    ``n_images`` counts train and test images; ``n_test`` of them (with their captions)
    form the evaluation pool. Latencies are medians of ``repeats`` runs over all test
    queries with ``num_threads`` search threads, divided by the number of queries
    (the benchmark timer: a warm-up call, then interleaved samples).

    ``scale_items`` > 0 adds the section at scale (:func:`cofisearch.study_scale.
    run_scale`): that many more captions, ``scale_queries`` image queries, the trained
    dual encoder's embeddings and ITQ codes of them, in ``result.scale`` and
    ``result.scale_summary``. Its sizes and memory are checked before any training.
    """
    from .encoders import DualEncoder, HashEncoder

    n_images = check_int(n_images, "n_images", minimum=2)
    n_test = check_positive_int(n_test, "n_test")
    if n_test >= n_images:
        raise ValueError(f"n_test must be smaller than n_images ({n_images}), got {n_test}")
    nbits = tuple(check_positive_int(b, "nbits") for b in nbits)
    n_candidates = tuple(sorted({check_positive_int(c, "n_candidates") for c in n_candidates}))
    embed_dim = check_positive_int(embed_dim, "embed_dim")
    scale_items = study_scale.check_scale_items(
        scale_items, embed_dim=embed_dim, nbits=nbits, n_queries=scale_queries,
        captions_per_image=captions_per_image)
    config = dict(
        n_images=n_images, n_test=n_test, captions_per_image=captions_per_image, nbits=nbits,
        n_candidates=n_candidates, epochs=epochs, hidden=hidden, embed_dim=embed_dim,
        seed=seed, search_threads=num_threads, torch_threads=torch_threads,
        scale_items=scale_items, scale_queries=scale_queries if scale_items else None,
    )
    data = datasets.make_paired(n_images, captions_per_image, seed=seed, n_test=n_test)
    train, test = data.train, data.test
    d_img, d_txt = train.image_features.shape[1], train.text_features.shape[1]
    fit_args = dict(caption_to_image=train.caption_to_image, labels=train.image_labels,
                    epochs=epochs, batch_size=batch_size, show_progress_bar=show_progress_bar)

    started = time.perf_counter()
    dual = DualEncoder(d_img, d_txt, embed_dim=embed_dim, hidden=hidden, seed=seed,
                       num_threads=torch_threads)
    dual.fit(train.image_features, train.text_features, **fit_args)
    emb = {"i": dual.encode_image(test.image_features), "t": dual.encode_text(test.text_features)}
    hashers = {}
    for loss in ("instance", "category"):
        for bits in nbits:
            enc = HashEncoder(d_img, d_txt, nbits=bits, loss=loss, hidden=hidden, seed=seed,
                              num_threads=torch_threads)
            enc.fit(train.image_features, train.text_features, **fit_args)
            hashers[f"CG {loss} {bits}-bit"] = (
                enc.encode_image(test.image_features), enc.encode_text(test.text_features)
            )
    train_seconds = time.perf_counter() - started

    c2i, labels = test.caption_to_image, test.image_labels
    result = StudyResult("Synthetic paired data: FG vs CG vs cascade", config)
    result.notes.append(f"training all encoders took {train_seconds:.1f} s")

    def add_quality(method, pair):
        i2t, t2i = metrics.evaluate(pair[0], pair[1], captions_per_image=c2i, labels=labels,
                                    ks=RECALL_KS, map_at=MAP_AT)
        for direction, values in zip(DIRECTIONS, (i2t, t2i)):
            result.retrieval.append({"method": method, "direction": direction, **_quality(values)})

    add_quality("FG float (exhaustive)", (emb["i"], emb["t"]))
    for name, pair in hashers.items():
        add_quality(f"{name} (exhaustive)", pair)

    # Each direction searches the other modality: images query captions and vice versa.
    sides = {
        "i2t": dict(q_codes=0, db_codes=1, q_emb=emb["i"], db_emb=emb["t"]),
        "t2i": dict(q_codes=1, db_codes=0, q_emb=emb["t"], db_emb=emb["i"]),
    }
    fine = {}
    for direction, side in sides.items():
        index = FloatIndex(embed_dim, metric="cosine")
        index.add(side["db_emb"])
        fine[direction] = index
        seconds = measure(lambda: index.search(side["q_emb"], 10, num_threads=num_threads),
                          repeat=repeats).median
        result.latency.append({
            "method": "FG float (exhaustive)", "direction": direction,
            "ms/query": 1e3 * seconds / len(side["q_emb"]), "bytes/item": embed_dim * 4,
        })
    for name, pair in hashers.items():
        bits = int(name.split()[2].split("-")[0])
        for direction, side in sides.items():
            coarse = BinaryIndex(bits)
            coarse.add(pair[side["db_codes"]])
            queries = pair[side["q_codes"]]
            seconds = measure(lambda: coarse.search(queries, 10, num_threads=num_threads),
                              repeat=repeats).median
            result.latency.append({
                "method": f"{name} (exhaustive)", "direction": direction,
                "ms/query": 1e3 * seconds / len(queries), "bytes/item": bits // 8,
            })
            for depth in n_candidates:
                cascade = Cascade(coarse, fine[direction], n_candidates=depth)
                found = cascade.search(queries, side["q_emb"], max(RECALL_KS), num_threads=num_threads)
                quality = metrics.ranking_metrics(found.ids, c2i, direction=direction,
                                                  labels=labels, ks=RECALL_KS, map_at=(10, 100))
                stage = {key: [] for key in ("coarse", "fine", "total")}
                for _ in range(repeats):
                    timed = cascade.search(queries, side["q_emb"], 10, num_threads=num_threads)
                    for key in stage:
                        stage[key].append(timed.timings[key])
                per_query = {k: 1e3 * float(np.median(v)) / len(queries) for k, v in stage.items()}
                result.cascade.append({
                    "codes": name, "direction": direction, "n_candidates": depth,
                    "R@1": quality["R@1"], "R@10": quality["R@10"], "R@100": quality["R@100"],
                    "screen ms/q": per_query["coarse"], "rerank ms/q": per_query["fine"],
                    "total ms/q": per_query["total"],
                })
                if depth == max(n_candidates):
                    result.retrieval.append({
                        "method": f"Cascade {name} -> FG, n_candidates={depth}",
                        "direction": direction, **_quality(quality),
                    })
    result.notes.append(
        "mAP@N of a cascade is not defined (it ranks only its candidates); its mAP@k uses "
        "the same normalisation as fico-itr (relevant items found in the top k)."
    )
    if scale_items:
        section = study_scale.run_scale(
            dual, train.text_features, n_items=scale_items, n_queries=scale_queries,
            first_image=n_images, nbits=nbits, captions_per_image=captions_per_image,
            seed=seed, num_threads=num_threads, repeats=repeats,
            show_progress_bar=show_progress_bar)
        result.scale, result.scale_summary = section.rows, section.summary
        result.config.update(scale_nbits=section.config["nbits"], scale_nlist=section.config["nlist"])
    return result


def _quality(values):
    keys = [f"R@{k}" for k in RECALL_KS] + ["mAP@10", "mAP@100", "mAP@N"]
    return {k: values.get(k) for k in keys}


def _mean_average_precision(ids, query_labels, db_labels):
    """mAP over full rankings (every database item ranked), relevant = same label."""
    rel = db_labels[ids] == query_labels[:, None]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    precision_sum = (rel * (hits / ranks)).sum(axis=1)
    n_rel = rel.sum(axis=1)
    return float(np.mean(np.where(n_rel > 0, precision_sum / np.maximum(n_rel, 1), 0.0)))


def run_fashion_mnist(*, n_queries=1_000, n_database=20_000, nbits=(32, 64, 128), pca_dim=128,
                      seed=0, num_threads=1, directory=None):
    """Category-level retrieval on real images: Fashion-MNIST from Debian's package.

    Float features are the top ``pca_dim`` principal components of the pixels (cosine);
    codes come from the same components through ITQ and through a random rotation. Queries
    are test images, the database training images; relevant = same class; the metric is
    mAP@N over the whole database (every item ranked), as in the study's category tables.
    Raises ``FileNotFoundError`` naming the package when it is not installed.
    """
    from .encoders import ITQBinarizer, RandomRotationBinarizer

    data = datasets.load_fashion_mnist(directory, flatten=True)
    rng = np.random.default_rng(seed)
    db_idx = rng.choice(len(data.train_images), size=min(n_database, len(data.train_images)), replace=False)
    q_idx = rng.choice(len(data.test_images), size=min(n_queries, len(data.test_images)), replace=False)
    db_pixels = data.train_images[db_idx].astype(np.float32) / 255.0
    q_pixels = data.test_images[q_idx].astype(np.float32) / 255.0
    db_labels, q_labels = data.train_labels[db_idx], data.test_labels[q_idx]

    mean = db_pixels.mean(axis=0)
    _, _, vt = np.linalg.svd(db_pixels[:5000] - mean, full_matrices=False)
    basis = vt[:pca_dim].T
    db_feat = ((db_pixels - mean) @ basis).astype(np.float32)
    q_feat = ((q_pixels - mean) @ basis).astype(np.float32)

    config = dict(n_queries=len(q_idx), n_database=len(db_idx), pca_dim=pca_dim, nbits=tuple(nbits), seed=seed)
    result = StudyResult("Fashion-MNIST (real images): category-level retrieval, float vs codes", config)
    n = len(db_idx)

    def evaluate(name, index, queries, bytes_per_item):
        t0 = time.perf_counter()
        ids = index.search(queries, n, num_threads=num_threads).ids
        seconds = time.perf_counter() - t0
        top = ids[:, :100]
        p100 = float((db_labels[top] == q_labels[:, None]).mean())
        result.retrieval.append({"method": name, "direction": "image->image",
                                 "mAP@N": _mean_average_precision(ids, q_labels, db_labels),
                                 "P@100": p100})
        result.latency.append({"method": name, "ms/query (full ranking)": 1e3 * seconds / len(queries),
                               "bytes/item": bytes_per_item})

    findex = FloatIndex(pca_dim, metric="cosine")
    findex.add(db_feat)
    evaluate(f"float PCA-{pca_dim} (cosine)", findex, q_feat, pca_dim * 4)
    for bits in nbits:
        for label, binarizer in (("ITQ", ITQBinarizer(bits, seed=seed)),
                                 ("random rotation", RandomRotationBinarizer(bits, seed=seed))):
            if bits > pca_dim and label == "ITQ":
                continue
            binarizer.fit(db_feat)
            index = BinaryIndex(bits)
            index.add(binarizer.transform(db_feat))
            evaluate(f"{bits}-bit {label}", index, binarizer.transform(q_feat), bits // 8)
    result.notes.append("codes are training-free binarisations of the same PCA features")
    return result


def _plot_cascade(result, out_dir, stem):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    exhaustive = {(r["method"], r["direction"]): r for r in result.retrieval}
    for what, ylabel, suffix in (("R@10", "R@10 (%)", "recall"), ("total ms/q", "ms per query", "latency")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, direction in zip(axes, DIRECTIONS):
            rows = [r for r in result.cascade if r["direction"] == direction]
            for codes in sorted({r["codes"] for r in rows}):
                sel = [r for r in rows if r["codes"] == codes]
                ax.plot([r["n_candidates"] for r in sel], [r[what] for r in sel], marker="o", label=codes)
            if what == "R@10":
                fg = exhaustive.get(("FG float (exhaustive)", direction))
                if fg:
                    ax.axhline(fg["R@10"], color="black", linestyle="--", label="FG exhaustive")
            else:
                fg = [r for r in result.latency if r["method"] == "FG float (exhaustive)" and r["direction"] == direction]
                if fg:
                    ax.axhline(fg[0]["ms/query"], color="black", linestyle="--", label="FG exhaustive")
                ax.set_yscale("log")
            ax.set_xscale("log")
            ax.set_title(direction)
            ax.set_xlabel("n_candidates")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}_{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths

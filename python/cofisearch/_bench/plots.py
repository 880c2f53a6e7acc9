"""The figures of ``cofisearch bench`` (with matplotlib; without it, none).

Each figure is a matplotlib ``Figure`` with its own Agg canvas: no pyplot, so no global
backend is chosen or changed in the caller's process.
"""

from __future__ import annotations

import os

import numpy as np

from .report import count_text, engine_names, ratio_text
from .sections import K, RECALL_DIM

__all__ = ["matplotlib_available", "save_plots"]

_STYLE = {"cofisearch": ("C0", "o"), "faiss": ("C1", "s"), "numpy": ("C2", "^")}


def matplotlib_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save_plots(report, out_dir):
    """Draws every figure the report has data for into ``out_dir`` as ``bench_*.png``;
    returns the paths written (none without matplotlib)."""
    if not matplotlib_available():
        return []
    # Figure + its own Agg canvas: no pyplot, so no global backend is chosen or changed.
    from matplotlib.figure import Figure

    makers = [
        ("bench_hamming_scaling.png", _plot_scaling, "hamming"),
        ("bench_float_scaling.png", _plot_scaling, "float"),
        ("bench_equal_storage.png", _plot_storage, None),
        ("bench_equal_recall.png", _plot_recall, None),
        ("bench_cascade.png", _plot_cascade, None),
        ("bench_table7.png", _plot_study, None),
        ("bench_table7_recall.png", _plot_table7, None),
    ]
    paths = []
    for name, make, arg in makers:
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        drawn = make(fig, report, arg) if arg else make(fig, report)
        if drawn:
            path = os.path.join(out_dir, name)
            fig.savefig(path, dpi=110)
            paths.append(path)
    return paths


def _plot_scaling(fig, report, section):
    plan = report.config["plan"]
    if section == "hamming":
        width_key, width, nqs = "bits", 64, plan["hamming_nqs"]
        what = "Hamming top-10, 64-bit codes"
    else:
        width_key, width, nqs = "dim", plan["float_dim"], plan["float_nqs"]
        what = f"inner-product top-10, {width}-d float32"
    rows = [r for r in report.rows(section, k=K, threads=1) if r[width_key] == width]
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) < 2:
        return False
    axes = fig.subplots(1, len(nqs), squeeze=False)[0]
    for ax, nq in zip(axes, nqs):
        for name in engine_names(rows):
            pts = sorted((r["n"], r["queries_per_s"]) for r in rows
                         if r["engine"] == name and r["nq"] == nq)
            if pts:
                color, marker = _STYLE[name]
                ax.plot(*zip(*pts), marker=marker, color=color, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{nq:,} {'query' if nq == 1 else 'queries'} per call")
        ax.set_xlabel("database size (items)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("queries per second")
    fig.suptitle(f"{what}, one thread: queries/s against database size "
                 f"(points missing: over the time budget)")
    return True


def _plot_storage(fig, report):
    entries = report.equal_storage
    if not entries:
        return False
    nqs = sorted({e["nq"] for e in entries})
    axes = fig.subplots(1, len(nqs), squeeze=False)[0]
    for ax, nq in zip(axes, nqs):
        es = sorted((e for e in entries if e["nq"] == nq), key=lambda e: e["bytes_per_item"])
        x = [e["bytes_per_item"] for e in es]
        ax.plot(x, [nq / e["hamming_s"] if e["hamming_s"] else np.nan for e in es],
                "o-", color="C0", label="Hamming (8 bits per byte)")
        ax.plot(x, [nq / e["float_s"] if e["float_s"] else np.nan for e in es],
                "s-", color="C3", label="float32 (4 bytes per dimension)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{b} B\n{b * 8} bits\n{b // 4}-d" for b in x])
        ax.set_title(f"{nq:,} {'query' if nq == 1 else 'queries'} per call")
        ax.set_xlabel("bytes per item (as code bits, as float dimensions)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("queries per second")
    fig.suptitle(f"Hamming vs float at equal storage, {entries[0]['n']:,} items, top-10, "
                 "one thread (cofisearch)")
    return True


def _plot_recall(fig, report):
    rows = report.equal_recall
    if not rows:
        return False
    nq = rows[0]["batch_nq"]
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, key, title in ((axes[0], "one_query_s", "1 query per call"),
                           (axes[1], "batch_s", f"{nq:,} queries per call")):
        per_call = 1 if key == "one_query_s" else nq
        for family, color, marker, unit in (("binary (SRP)", "C0", "o", " b"),
                                            ("float (PCA)", "C3", "s", "-d")):
            fam = sorted((r for r in rows if r["family"] == family), key=lambda r: r["width"])
            if not fam:
                continue
            xs = [r["recall"] for r in fam]
            ys = [per_call / r[key] for r in fam]
            ax.plot(xs, ys, marker=marker, color=color, label=family)
            for r, x, y in zip(fam, xs, ys):
                ax.annotate(f"{r['width']}{unit}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=color)
        exact = [r for r in rows if r["family"] == "exact float"]
        if exact:
            ax.plot([1.0], [per_call / exact[0][key]], "*", color="k", markersize=12,
                    label=f"exact float ({exact[0]['width']}-d)")
        for t in report.config["plan"]["recall_targets"]:
            ax.axvline(t, color="0.7", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlim(0, 1.05)
        ax.set_xlabel(f"recall@{K} against exact float search")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("queries per second")
    fig.suptitle(f"Hamming vs float at equal recall, {rows[0]['n']:,} synthetic "
                 f"{RECALL_DIM}-d items, one thread (cofisearch); dotted: recall targets")
    return True


def _plot_cascade(fig, report):
    rows = report.cascade
    if not rows:
        return False
    ax = fig.subplots(1, 1)
    for i, bits in enumerate(sorted({c["bits"] for c in rows})):
        cs = sorted((c for c in rows if c["bits"] == bits), key=lambda c: c["n_candidates"])
        color = f"C{i}"
        xs = [c["ms_per_query"] for c in cs]
        ys = [c["recall_at_10"] for c in cs]
        ax.plot(xs, ys, "o-", color=color, label=f"{bits}-bit screen + float rerank")
        for c, x, y in zip(cs, xs, ys):
            ax.annotate(str(c["n_candidates"]), (x, y), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=color)
    exact_ms = rows[0]["exact_float_ms_per_query"]
    ax.plot([exact_ms], [1.0], "*", color="k", markersize=12, label="exhaustive float")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("ms per query (batch of queries, one thread)")
    ax.set_ylabel(f"recall@{K} against exhaustive float")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"Cascade over {rows[0]['n']:,} items: recall against latency "
                 "(labels: n_candidates)")
    return True


def _plot_study(fig, report):
    s = report.study
    if not s or not s["engines"]:
        return False
    ax = fig.subplots(1, 1)
    labels, ratios, colors = [], [], []
    for r in s["study"]:
        labels.append(f"study: faiss\n{count_text(r['nq'])} q x {count_text(r['n'])}")
        ratios.append(r["ratio"])
        colors.append("0.6")
    for name, e in s["engines"].items():
        labels.append(f"{name}, this machine\n{count_text(s['nq'])} q x {count_text(s['n'])}")
        ratios.append(e["ratio"])
        colors.append(_STYLE[name][0])
    y = np.arange(len(labels))
    ax.barh(y, ratios, color=colors)
    for yi, r in zip(y, ratios):
        ax.annotate(ratio_text(r), (r, yi), textcoords="offset points", xytext=(4, -3), fontsize=9)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("time of exhaustive 2048-d float search / time of exhaustive 64-bit Hamming")
    ax.set_title("FiCo-ITR Table 7, rerun: how much faster 64-bit codes are than 2048-d "
                 "floats (one thread)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return True


_TABLE7_STYLE = {"FG Flat": "s", "FG HNSW": "D", "CG Flat": "^", "CG IVF": "v", "cascade": "o"}


def _plot_table7(fig, report):
    t = report.table7
    if not t or not t["rows"]:
        return False
    ax = fig.subplots(1, 1)
    for i, r in enumerate(t["rows"]):
        pts = sorted((p["recall_at_10"], p["queries_per_s"]) for p in r["frontier"])
        if not pts:
            continue
        x, y = zip(*pts)
        style = "-" if len(pts) > 1 else ""
        ax.plot(x, y, style, marker=_TABLE7_STYLE.get(r["row"], "o"), color=f"C{i}",
                label=f"{r['row']}: {r['index']}")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{K} against exact float search")
    ax.set_ylabel("queries per second")
    ax.set_title(f"Table 7 indexes on {t['n']:,} cross-modal {t['dim']}-d items: every "
                 f"setting tried on {t['sample']:,} queries, top-{K}, {t['threads']} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return True

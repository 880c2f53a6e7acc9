"""The report of ``cofisearch bench``: its data, JSON and Markdown.

:class:`BenchReport` holds every measurement of a run (raw samples and parameters) and
the derived tables; ``to_dict`` is the JSON (``bench.json``), ``to_markdown`` the text
(``bench.md``, also printed). The formatting helpers (``count_text``, ``seconds_text``,
``ratio_text``, ``markdown_table``) are shared with the plots and ``bench/targets.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .._files import json_default
from .contenders import BINARY
from .machine import format_machine
from .sections import K, STUDY_RATIO_TEXT

__all__ = [
    "BenchReport",
    "count_text",
    "engine_names",
    "markdown_table",
    "qps_text",
    "ratio_text",
    "seconds_text",
]


@dataclass
class BenchReport:
    """Everything one :func:`~.runner.run` measured.

    ``measurements`` holds one dict per (contender, setting) with the raw samples
    (``times_s``, ``cpu_times_s``), their median and the parameters; the other tables are
    derived from them. ``skipped`` lists what the time budget left out and why;
    ``problems`` lists result checks that failed (empty on a healthy build).
    """

    config: dict
    machine: dict
    measurements: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    equal_storage: list = field(default_factory=list)
    equal_recall: list = field(default_factory=list)
    equal_recall_targets: list = field(default_factory=list)
    cascade: list = field(default_factory=list)
    study: dict = field(default_factory=dict)
    table7: dict = field(default_factory=dict)
    table6: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    elapsed_s: float = 0.0
    loadavg_after: list = None

    def rows(self, section, **params):
        """Measurements of ``section`` whose parameters equal ``params``."""
        return [
            m for m in self.measurements
            if m["section"] == section and all(m.get(k) == v for k, v in params.items())
        ]

    def to_dict(self):
        return {
            "format": "cofisearch.bench/1",
            "config": self.config,
            "machine": self.machine,
            "loadavg_after": self.loadavg_after,
            "elapsed_s": self.elapsed_s,
            "study_table7": self.study,
            "table7": self.table7,
            "table6": self.table6,
            "equal_storage": self.equal_storage,
            "equal_recall": self.equal_recall,
            "equal_recall_targets": self.equal_recall_targets,
            "cascade": self.cascade,
            "skipped": self.skipped,
            "problems": self.problems,
            "notes": self.notes,
            "measurements": self.measurements,
        }

    def to_markdown(self):
        parts = [f"# cofisearch bench ({self.config['scale']} scale)", ""]
        parts += [_machine_line(self.machine), ""]
        parts += [
            f"Medians of {self.config['repeat']} sample(s) after a warm-up, contenders "
            f"interleaved; k = {K} and one thread unless stated; times are per call (the whole "
            f"batch of queries); \"x\" columns are the contender's time over cofisearch's "
            f"(above 1: cofisearch is faster). Run took {self.elapsed_s:.0f} s; load average "
            f"{self.machine.get('loadavg')} before, {self.loadavg_after} after "
            f"({self.machine.get('logical_cpus')} CPUs).",
            "",
        ]
        parts += _study_markdown(self)
        parts += _table7_markdown(self)
        parts += [t["markdown"] + "\n" for t in self.table6]
        parts += _sweep_markdown(self, "hamming")
        parts += _sweep_markdown(self, "float")
        parts += _widths_markdown(self)
        parts += _all_vs_all_markdown(self)
        parts += _storage_markdown(self)
        parts += _recall_markdown(self)
        parts += _cascade_markdown(self)
        if self.problems:
            parts += ["## Result checks that FAILED", ""] + [f"- {p}" for p in self.problems] + [""]
        if self.skipped:
            parts += ["## Skipped", ""]
            parts += [f"- {_skip_text(s)}" for s in self.skipped] + [""]
        if self.notes:
            parts += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        parts += ["## Machine", "", "```", format_machine(self.machine), "```", ""]
        return "\n".join(parts)

    def save(self, out_dir):
        """Writes ``bench.json`` and ``bench.md`` into ``out_dir``, creating it; returns
        the paths written."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, "bench.json"), os.path.join(out_dir, "bench.md")]
        with open(paths[0], "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=json_default)
        with open(paths[1], "w") as f:
            f.write(self.to_markdown())
        return paths


# ---- Markdown -------------------------------------------------------------------------


def count_text(n):
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


def seconds_text(seconds):
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 1000 else f"{seconds:,.0f} s"


def ratio_text(ratio):
    if ratio is None:
        return "—"
    return f"{ratio:.3g}x" if ratio < 1000 else f"{ratio:,.0f}x"


def qps_text(q):
    if q is None:
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if q >= size:
            return f"{q / size:.3g}{unit}"
    return f"{q:.3g}"


def markdown_table(header, rows):
    """A Markdown table padded to aligned columns, so it reads as plain text too."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(r) for r in cells[1:]
    ]


def _machine_line(m):
    faiss = f"faiss {m['faiss']}" if m.get("faiss") else "faiss not installed"
    return (
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
        f"{m['mem_total_gib']} GiB; cofisearch {m['cofisearch']} at SIMD level "
        f"**{m['simd_level']}** (available: {', '.join(m['simd_levels_available'])}); "
        f"numpy {m['numpy']}, {faiss}."
    )


def _study_markdown(report):
    s = report.study
    if not s:
        return []
    out = [
        f"## FiCo-ITR Table 7, rerun: exhaustive {s['dim']}-d float vs 64-bit Hamming",
        "",
        f"{s['nq']:,} queries over {s['n']:,} candidates, top-{s['k']}, one thread, the same "
        f"queries and candidates for both kinds (random data: speed does not depend on it).",
        "",
    ]
    rows = []
    for name, e in s["engines"].items():
        rows.append([f"{name} (this machine)", seconds_text(e["float_s"]), seconds_text(e["binary_s"]),
                     ratio_text(e["ratio"])])
    for r in s["study"]:
        rows.append([f"study: faiss, {count_text(r['nq'])} q x {count_text(r['n'])} (Xeon 8480+)",
                     seconds_text(r["float_s"]), seconds_text(r["binary_s"]), ratio_text(r["ratio"])])
    out += markdown_table(["engine", f"{s['dim']}-d float IP", "64-bit Hamming", "float / binary"], rows)
    ours = s["engines"].get("cofisearch")
    faiss = s["engines"].get("faiss")
    line = "**float/binary time ratio: "
    line += f"cofisearch {ratio_text(ours['ratio'])}" if ours else "cofisearch —"
    line += f", faiss {ratio_text(faiss['ratio'])} (same run)" if faiss else ", faiss not installed"
    line += f"; the FiCo-ITR study measured {STUDY_RATIO_TEXT} with faiss.**"
    out += ["", line]
    if ours and faiss:
        out += ["", f"faiss takes {ratio_text(faiss['binary_s'] / ours['binary_s'])} cofisearch's time "
                    f"on the 64-bit codes and {ratio_text(faiss['float_s'] / ours['float_s'])} on the "
                    f"{s['dim']}-d floats. A ratio depends on the processor, the BLAS and the "
                    "sizes (the study's were far larger), so compare cofisearch's with faiss's "
                    "from the same run rather than with the study's."]
    return out + [""]


def _table7_markdown(report):
    t = report.table7
    if not t or not t["rows"]:
        return []
    cols = [f"R@{r}" for r in (1, 100, 1000) if str(r) in t["rows"][0]["recall_at"]]
    rows = []
    for r in t["rows"]:
        knobs = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "exhaustive"
        bits = f"{r['bits']}-bit codes" if r["bits"] else f"{t['dim']}-d floats"
        rows.append([r["row"], r["index"], bits, knobs]
                    + [f"{r['recall_at'][c[2:]]:.1f}" for c in cols]
                    + [f"{r['recall_at_10']:.3f}", seconds_text(r["build_s"]),
                       seconds_text(r["search_s"]), qps_text(t["nq"] / r["search_s"])])
    return [
        f"## FiCo-ITR Table 7, complete: ANN indexes with recall ({t['dim']}-d cross-modal data)",
        "",
        f"{t['nq']:,} text queries over {t['n']:,} images (the study's 1:5), top-{t['depth']} "
        f"per query, {t['threads']} thread(s), search times for the whole query set (median "
        f"of {t['repeat']}). R@k: % of queries whose exact float top-1 is among the first k "
        f"(the study's measure against FG Flat); recall@10: share of the exact top-10 in the "
        f"first 10. CG rows: {t['cg_bits']}-bit ITQ codes (the study's width); the cascade "
        f"screens {t['cascade_bits']}-bit ITQ codes in an IVFBinaryIndex of {t['nlist']} lists "
        f"routed by the query vectors and reranks exactly, at the settings cofisearch.tune "
        f"chose for recall@10 >= {t['target']} on {t['sample']:,} other queries (n_candidates "
        f"at least the depth); FG HNSW's efSearch is the smallest reaching the same on them "
        f"(faiss searches max(efSearch, k)); CG IVF probes nlist/16 lists.",
        "",
    ] + markdown_table(["row", "index", "data", "settings", *cols, "recall@10", "build",
                        "search", "queries/s"], rows) + [""]


def engine_names(rows):
    order = ["cofisearch", "faiss", "numpy"]
    present = {r["engine"] for r in rows}
    return [n for n in order if n in present]


def _sweep_markdown(report, section):
    rows = report.rows(section)
    if not rows:
        return []
    binary = section == "hamming"
    width_key = "bits" if binary else "dim"
    names = engine_names(rows)
    groups = {}
    for r in rows:
        key = (r[width_key], r["n"], r["nq"], r["k"], r["threads"])
        groups.setdefault(key, {})[r["engine"]] = r
    skipped = {(s[width_key], s["n"], s["nq"], s["k"], s["threads"], s["engine"])
               for s in report.skipped if s["section"] == section}
    header = ["n", width_key, "queries", "k", "threads"] + names
    header += ["cofisearch rate"] + [f"{n} / cofisearch" for n in names if n != "cofisearch"]
    table = []
    for key in sorted(groups):
        g = groups[key]
        cells = [count_text(key[1]), key[0], key[2], key[3], key[4]]
        for name in names:
            if name in g:
                cells.append(seconds_text(g[name]["median_s"]))
            else:
                cells.append("skipped" if key + (name,) in skipped else "—")
        cofi = g.get("cofisearch")
        cells.append(_rate(cofi, binary) if cofi else "—")
        for name in names:
            if name == "cofisearch":
                continue
            cells.append(ratio_text(g[name]["median_s"] / cofi["median_s"])
                         if cofi and name in g else "—")
        table.append(cells)
    title = ("## Hamming top-k: database size, code length, queries, k, threads" if binary
             else "## Float inner-product top-k: database size, dimension, queries, k, threads")
    rate = ("codes scanned per second" if binary
            else "GB/s streamed for one query, GFLOP/s for batches")
    return [title, "", f"Rate: {rate}.", ""] + markdown_table(header, table) + [""]


def _by_engine(report, section, key):
    """``{key(row): {engine: row}}`` of a section's measurements, and the engines' names."""
    rows = report.rows(section)
    groups = {}
    for r in rows:
        groups.setdefault(key(r), {})[r["engine"]] = r
    return groups, engine_names(rows)


def _skipped_keys(report, section, key):
    return {key(s) + (s["engine"],) for s in report.skipped if s["section"] == section}


def _peer_cells(group, names, skipped, key):
    """Time of every peer and its ratio to cofisearch's, or why there is none."""
    cofi = group.get("cofisearch")
    cells = []
    for name in names:
        if name == "cofisearch":
            continue
        if name in group:
            cells.append(seconds_text(group[name]["median_s"]))
            cells.append(ratio_text(group[name]["median_s"] / cofi["median_s"]) if cofi else "—")
        else:
            cells += ["skipped" if key + (name,) in skipped else "—", "—"]
    return cells


def _next_power_of_two(bits):
    return 1 << (bits - 1).bit_length()


def _widths_markdown(report):
    def key(r):
        return (r["n"], r["nq"], r["bits"])

    groups, names = _by_engine(report, "widths", key)
    if not groups:
        return []
    skipped = _skipped_keys(report, "widths", key)
    peers = [n for n in names if n != "cofisearch"]
    header = ["n", "queries", "bits", "cofisearch", "cofisearch rate",
              "time per code / linear from the next power of two"]
    for name in peers:
        header += [name, f"{name} / cofisearch"]
    table = []
    for n, nq, bits in sorted(groups):
        g = groups[(n, nq, bits)]
        cofi = g.get("cofisearch")
        power = groups.get((n, nq, _next_power_of_two(bits)), {}).get("cofisearch")
        cost = None
        if cofi and power and power["bits"] != bits:
            cost = (cofi["median_s"] / power["median_s"]) / (bits / power["bits"])
        table.append([count_text(n), nq, bits,
                      seconds_text(cofi["median_s"]) if cofi else "—",
                      _rate(cofi, True) if cofi else "—",
                      f"{cost:.3g}" if cost is not None else "—"]
                     + _peer_cells(g, names, skipped, (n, nq, bits)))
    return [
        "## Hamming top-k at every code width",
        "",
        ("One database size, every width: 384 bits is what MiniLM-sized models' binary "
         "embeddings give, 768 BERT-base sized ones. The cost column is the time per code "
         "over what linear-in-bits from the next power of two predicts (1: as cheap per bit "
         "as the power of two; issue 12 asks for at most 1.15 at 1,000 queries)."),
        "",
    ] + markdown_table(header, table) + [""]


def _all_vs_all_markdown(report):
    def key(r):
        return (r["kind"], r.get("bits") or r.get("dim"), r["n"], r["nq"])

    groups, names = _by_engine(report, "all_vs_all", key)
    if not groups:
        return []
    skipped = _skipped_keys(report, "all_vs_all", key)
    peers = [n for n in names if n != "cofisearch"]
    header = ["data", "shape", "cofisearch", "cofisearch rate", "share of the batch rate"]
    for name in peers:
        header += [name, f"{name} / cofisearch"]
    batch_rate = {}
    for (kind, width, n, nq), g in groups.items():
        if nq != n and "cofisearch" in g:
            batch_rate[(kind, width)] = _work_rate(g["cofisearch"])
    table = []
    # The batch first, then the all-vs-all sizes, per kind and width.
    for kind, width, n, nq in sorted(groups, key=lambda t: (t[0], t[1], t[3] == t[2], t[2])):
        g = groups[(kind, width, n, nq)]
        cofi = g.get("cofisearch")
        binary = kind == BINARY
        share = "—"
        if cofi and nq == n and (kind, width) in batch_rate:
            share = f"{_work_rate(cofi) / batch_rate[(kind, width)]:.3g}"
        table.append([
            f"{width} bits" if binary else f"float d={width}",
            f"{count_text(n)} x {count_text(n)}, all-vs-all" if nq == n
            else f"{nq:,} queries over {count_text(n)} (batch)",
            seconds_text(cofi["median_s"]) if cofi else "—",
            _rate(cofi, binary) if cofi else "—",
            share,
        ] + _peer_cells(g, names, skipped, (kind, width, n, nq)))
    return [
        "## All-vs-all: a database searched by itself (the evaluation shape)",
        "",
        (f"n queries over the same n items, top-{K}, one thread, beside a large batch of the "
         "same width; the share column is the all-vs-all rate over the batch's (issue 12 "
         "asks for at least 0.5 at n = 5,000 and 25,000)."),
        "",
    ] + markdown_table(header, table) + [""]


def _work_rate(row):
    # Codes compared, or multiply-adds, per second: comparable across shapes.
    per_pair = 1 if row["kind"] == BINARY else row["dim"]
    return row["n"] * row["nq"] * per_pair / row["median_s"]


def _rate(row, binary):
    t = row["median_s"]
    if binary:
        return f"{row['n'] * row['nq'] / t / 1e9:.3g} G codes/s"
    if row["nq"] == 1:
        return f"{row['database_bytes'] / t / 1e9:.3g} GB/s"
    return f"{2.0 * row['n'] * row['dim'] * row['nq'] / t / 1e9:.3g} GFLOP/s"


def _storage_markdown(report):
    if not report.equal_storage:
        return []
    rows = [
        [f"{e['bytes_per_item']} B", f"{e['bits']} bits", f"{e['dim']}-d", e["nq"],
         seconds_text(e["hamming_s"]), seconds_text(e["float_s"]), ratio_text(e["float_over_hamming"])]
        for e in report.equal_storage
    ]
    n = report.equal_storage[0]["n"]
    return [
        "## Hamming vs float at equal storage (cofisearch)",
        "",
        f"{n:,} items of the same size in bytes, top-{K}, one thread.",
        "",
    ] + markdown_table(["bytes/item", "code", "float", "queries", "Hamming", "float",
                "float / Hamming"], rows) + [""]


def _recall_markdown(report):
    if not report.equal_recall:
        return []
    nq = report.equal_recall[0]["batch_nq"]
    rows = [
        [r["family"], r["width"], f"{r['bytes_per_item']} B", f"{r['recall']:.3f}",
         seconds_text(r["one_query_s"]), seconds_text(r["batch_s"]), qps_text(nq / r["batch_s"])]
        for r in report.equal_recall
    ]
    out = [
        f"## Hamming vs float at equal recall@{K} (cofisearch)",
        "",
        f"{report.equal_recall[0]['n']:,} items; times for 1 query and for {nq:,} queries.",
        "",
    ]
    out += markdown_table(["method", "bits / dim", "bytes/item", f"recall@{K}", "1 query",
                   f"{nq} queries", "queries/s"], rows)
    if report.equal_recall_targets:
        out += ["", "The cheapest code and the cheapest float that reach each recall:", ""]
        trows = []
        for t in report.equal_recall_targets:
            b, f = t["binary (SRP)"], t["float (PCA)"]
            trows.append([
                f">= {t['target']:.2f}",
                f"{b['width']} bits ({b['recall']:.2f}): {seconds_text(b['batch_s'])}" if b else "none",
                f"{f['width']}-d ({f['recall']:.2f}): {seconds_text(f['batch_s'])}" if f else "none",
                ratio_text(t["float_over_binary_batch_s"]),
                ratio_text(t["float_over_binary_one_query_s"]),
                ratio_text(t["exact_over_binary_batch_s"]),
            ])
        out += markdown_table(["recall target", f"code, {nq} queries", f"float, {nq} queries",
                       "float / code (batch)", "float / code (1 query)",
                       "exact float / code (batch)"], trows)
    return out + [""]


def _cascade_markdown(report):
    if not report.cascade:
        return []
    first = report.cascade[0]
    rows = [
        [f"{c['bits']} bits", c["n_candidates"], f"{c['recall_at_10']:.3f}",
         f"{c['ms_per_query']:.3g}", f"{c['coarse_ms_per_query']:.3g}",
         f"{c['fine_ms_per_query']:.3g}", ratio_text(c["exact_float_ms_per_query"] / c["ms_per_query"])]
        for c in report.cascade
    ]
    return [
        f"## Cascade: recall@{K} against latency (cofisearch)",
        "",
        f"Hamming screen of n_candidates, exact float rerank, over {first['n']:,} items; "
        f"{first['nq']:,} queries in one batch, one thread; exhaustive float search takes "
        f"{first['exact_float_ms_per_query']:.3g} ms per query (recall 1).",
        "",
    ] + markdown_table(["screen", "n_candidates", f"recall@{K}", "ms/query", "screen ms",
                "rerank ms", "speed-up vs exact float"], rows) + [""]


def _skip_text(s):
    width = f"{s['bits']} bits" if "bits" in s else f"d={s['dim']}"
    return (f"{s['section']}: {s['engine']} at n={s['n']:,}, {width}, {s['nq']} queries, "
            f"k={s['k']}, {s['threads']} thread(s): predicted {s['predicted_s']:.2g} s per "
            f"call, over the {s['budget_s']:g} s budget of this scale")

"""The ``cofisearch`` command line, end to end at a tiny scale.

Commands run in-process through ``cli.main(argv, out=...)`` (their tables go to ``out``,
errors to stderr), plus real subprocesses for ``python -m cofisearch`` so that the entry
point itself, and what a user's terminal shows on an error, are covered too.
"""

import dataclasses
import importlib.util
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cofisearch
from cofisearch import cli
from cofisearch._bench import machine, runner, sections
from cofisearch._bench.contenders import open_engines
from cofisearch._bench.data import make_codes
from cofisearch._bench.plans import BENCH_PLANS
from cofisearch._bench.report import BenchReport

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
BENCH_PLOTS = (
    "bench_hamming_scaling.png",
    "bench_float_scaling.png",
    "bench_equal_storage.png",
    "bench_equal_recall.png",
    "bench_cascade.png",
    "bench_table7.png",
)


def run_cli(argv):
    """(exit status, stdout text) of ``cofisearch argv`` run in this process."""
    out = io.StringIO()
    try:
        status = cli.main(argv, out=out)
    except SystemExit as exc:
        status = exc.code
    return status, out.getvalue()


def run_module(*args):
    """``python -m cofisearch args`` in a subprocess that imports this same package."""
    package_root = os.path.dirname(os.path.dirname(cofisearch.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "cofisearch", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def is_png(path):
    with open(path, "rb") as f:
        return f.read(len(PNG_MAGIC)) == PNG_MAGIC


# ---- info -----------------------------------------------------------------------------------


def test_info_prints_version_and_simd_level():
    status, text = run_cli(["info"])
    assert status == 0
    assert cofisearch.__version__ in text
    assert cofisearch.simd_level() in text


def test_module_entry_point_runs_info():
    proc = run_module("info")
    assert proc.returncode == 0, proc.stderr
    assert "simd level" in proc.stdout
    assert proc.stderr == ""


# ---- bench ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One ``cofisearch bench --scale tiny`` shared by the bench tests: every section and
    plot, in seconds."""
    out_dir = tmp_path_factory.mktemp("bench")
    status, text = run_cli(
        ["bench", "--scale", "tiny", "--max-size", "2000", "--quiet", "--out", str(out_dir)]
    )
    return status, text, out_dir


def test_bench_exits_zero_and_prints_the_tables(bench_run):
    status, text, _ = bench_run
    assert status == 0
    assert "## Hamming top-k" in text
    assert "bench.json" in text.splitlines()[-1]


def test_bench_json_has_machine_and_timings(bench_run):
    _, _, out_dir = bench_run
    with open(out_dir / "bench.json") as f:
        report = json.load(f)
    assert report["machine"]["simd_level"] == cofisearch.simd_level()
    assert report["machine"]["cpu_model"]
    assert report["machine"]["logical_cpus"] >= 1
    engines = {m["engine"] for m in report["measurements"]}
    assert {"cofisearch", "numpy"} <= engines
    assert all(m["times_s"] and m["median_s"] > 0 for m in report["measurements"])


def test_bench_respects_max_size(bench_run):
    _, _, out_dir = bench_run
    with open(out_dir / "bench.json") as f:
        report = json.load(f)
    assert max(m["n"] for m in report["measurements"]) <= 2000


def test_bench_results_pass_their_checks(bench_run):
    _, _, out_dir = bench_run
    with open(out_dir / "bench.json") as f:
        report = json.load(f)
    assert report["problems"] == []


def test_bench_markdown_has_the_table7_ratio_line(bench_run):
    _, _, out_dir = bench_run
    text = (out_dir / "bench.md").read_text()
    ratio_lines = [line for line in text.splitlines() if "float/binary time ratio" in line]
    assert len(ratio_lines) == 1
    assert "cofisearch" in ratio_lines[0] and sections.STUDY_RATIO_TEXT in ratio_lines[0]


def test_bench_has_the_table6_analogue_where_torch_is(bench_run):
    _, _, out_dir = bench_run
    with open(out_dir / "bench.json") as f:
        report = json.load(f)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert report["table6"] == [] and any("Table 6" in n for n in report["notes"])
        return
    quality, cost = report["table6"]
    regimes = {row["regime"] for row in cost["rows"]}
    assert regimes == {"all pairs", "cascade-bounded"}
    assert "Table 6 analogue" in (out_dir / "bench.md").read_text()


def test_bench_times_every_code_width_of_its_plan(bench_run):
    _, _, out_dir = bench_run
    with open(out_dir / "bench.json") as f:
        report = json.load(f)
    plan = report["config"]["plan"]
    rows = [m for m in report["measurements"] if m["section"] == "widths"]
    assert {m["bits"] for m in rows if m["engine"] == "cofisearch"} == set(plan["width_bits"])
    assert "## Hamming top-k at every code width" in (out_dir / "bench.md").read_text()


def test_bench_times_all_vs_all_beside_a_batch(bench_run):
    _, _, out_dir = bench_run
    with open(out_dir / "bench.json") as f:
        report = json.load(f)
    plan = report["config"]["plan"]
    rows = [m for m in report["measurements"]
            if m["section"] == "all_vs_all" and m["engine"] == "cofisearch"]
    square = {(m["kind"], m["n"]) for m in rows if m["shape"] == "all-vs-all"}
    assert all(m["n"] == m["nq"] for m in rows if m["shape"] == "all-vs-all")
    assert square == {(kind, n) for kind in ("binary", "float") for n in plan["all_vs_all_ns"]}
    assert {m["kind"] for m in rows if m["shape"] == "batch"} == {"binary", "float"}
    text = (out_dir / "bench.md").read_text()
    assert "## All-vs-all" in text and "share of the batch rate" in text


def test_bench_budget_skips_peers_by_rate_key_but_not_engines_always_run():
    # A zero budget: every engine whose time can be predicted is over it.
    plan = dataclasses.replace(BENCH_PLANS["tiny"], max_call_s=0.0)
    bench = BenchReport(config={}, machine={})
    with runner.Runner(plan, bench, 0, False) as r:
        for n in (50, 100):  # different batch sizes: only the rate key links them
            db = make_codes(n, 64)
            engines = open_engines("binary", db, ["cofisearch", "numpy"])
            r.group("all_vs_all", "binary", engines, db, db, 10, 1, rate_key="square",
                    always=("cofisearch",))
    timed = {(m["engine"], m["n"]) for m in bench.measurements}
    assert timed == {("cofisearch", 50), ("numpy", 50), ("cofisearch", 100)}
    assert [(s["engine"], s["n"]) for s in bench.skipped] == [("numpy", 100)]
    assert bench.problems == []


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_bench_writes_every_plot(bench_run):
    _, _, out_dir = bench_run
    assert all(is_png(out_dir / name) for name in BENCH_PLOTS)


@pytest.mark.skipif(
    machine.mem_available_bytes() is None, reason="no /proc/meminfo to check memory against"
)
def test_bench_refuses_max_size_beyond_memory(capsys, tmp_path):
    out_dir = tmp_path / "report"
    status, _ = run_cli(["bench", "--max-size", str(10**15), "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "max_size" in err and "memory" in err
    assert not out_dir.exists()  # refused before the output directory was made


# The Python API behind the command: (keyword arguments, exception, words of the message).
BAD_RUN_ARGUMENTS = [
    ({"max_size": "10000"}, TypeError, "max_size must be an int"),
    ({"max_size": 1e6}, TypeError, "max_size must be an int"),
    ({"max_size": 999}, ValueError, "max_size must be at least 1,000"),
    ({"scale": "huge"}, ValueError, "scale must be one of"),
]


@pytest.mark.parametrize("kwargs, error, words", BAD_RUN_ARGUMENTS)
def test_benchmark_run_rejects_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        runner.run(show_progress_bar=False, **kwargs)


# ---- eval -----------------------------------------------------------------------------------


@pytest.fixture
def fico_dir(tmp_path):
    """A FiCo-ITR layout: an embedding model and a similarity model on 'f30k' (20 images,
    5 captions each, every caption near its image) and the dataset's labels."""
    rng = np.random.default_rng(7)
    images = rng.standard_normal((20, 16)).astype(np.float32)
    texts = np.repeat(images, 5, axis=0)
    texts += 0.05 * rng.standard_normal(texts.shape).astype(np.float32)
    labels = np.zeros((20, 4), dtype=np.int64)
    labels[np.arange(20), np.arange(20) % 4] = 1
    np.save(tmp_path / "toy_f30k_img.npy", images)
    np.save(tmp_path / "toy_f30k_txt.npy", texts)
    # Cosine, as the study computes from embeddings: rank 1 is then the true match.
    np.save(tmp_path / "toysim_f30k_sim.npy", _unit_rows(images) @ _unit_rows(texts).T)
    np.save(tmp_path / "flickr30k-karpathy-test-labels.npy", labels)
    return tmp_path


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _eval_rows(text):
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| model")
    ]


def test_eval_prints_a_row_per_model_and_direction(fico_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval")
    status, text = run_cli(["eval", str(fico_dir), "--out", str(out_dir), "--ks", "1,5"])
    assert status == 0
    rows = _eval_rows(text)
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("toy", "f30k", "i2t"), ("toy", "f30k", "t2i"),
        ("toysim", "f30k", "i2t"), ("toysim", "f30k", "t2i"),
    ]


def test_eval_finds_every_true_match_at_rank_one(fico_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval")
    _, text = run_cli(["eval", str(fico_dir), "--out", str(out_dir), "--ks", "1,5"])
    assert all(float(r[3]) == 100.0 for r in _eval_rows(text))


def test_eval_writes_the_table(fico_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval")
    _, text = run_cli(["eval", str(fico_dir), "--out", str(out_dir)])
    assert (out_dir / "eval.md").read_text().strip() in text


def test_eval_says_when_a_caption_map_does_not_fit_an_output(fico_dir, tmp_path_factory):
    # A map of 101 captions cannot describe the 100 captions of these outputs.
    np.save(fico_dir / "flickr30k_test_indices.npy", np.arange(101) // 5)
    out_dir = tmp_path_factory.mktemp("eval")
    status, text = run_cli(["eval", str(fico_dir), "--out", str(out_dir)])
    assert status == 0
    assert "Note: toy on f30k was evaluated with an even split" in text
    assert "the map covers 101 captions" in text


# ---- demo -----------------------------------------------------------------------------------


def test_demo_tiny_writes_tables_and_plots(tmp_path):
    pytest.importorskip("torch")
    status, text = run_cli(
        ["demo", "--scale", "tiny", "--quiet", "--no-fashion-mnist", "--out", str(tmp_path)]
    )
    assert status == 0
    assert "demo.md" in text.splitlines()[-1]
    with open(tmp_path / "demo.json") as f:
        assert json.load(f)["retrieval"]
    assert (tmp_path / "demo.md").read_text().startswith("## ")
    if HAS_MATPLOTLIB:
        assert is_png(tmp_path / "demo_recall.png") and is_png(tmp_path / "demo_latency.png")
        assert is_png(tmp_path / "demo_scale.png")
    # The section at scale: checked, not only timed.
    with open(tmp_path / "demo.json") as f:
        report = json.load(f)
    assert report["config"]["scale_items"] == 20_000 and "At scale:" in text
    rows = {}
    for row in report["scale"]:
        rows.setdefault(row["contender"], []).append(row)
    (exact,) = rows["exhaustive float"]
    assert exact["recall@10"] == 1.0
    deepest = max(rows["exhaustive cascade"], key=lambda r: r["n_candidates"])
    assert deepest["recall@10"] >= 0.5  # 1,000 ITQ candidates of 20,000 captions
    best = max(r["recall@10"] for r in rows["IVF cascade, asymmetric"])
    assert best >= 0.7
    # The Table 6 analogue: the reranker's quality and its cost in both regimes.
    table6 = (tmp_path / "demo_table6.md").read_text()
    assert table6.count("### ") == 2 and "all pairs" in table6 and "R@1" in table6


def test_demo_refuses_a_scale_that_cannot_fit(tmp_path, capsys):
    pytest.importorskip("torch")
    status, out = run_cli(["demo", "--scale", "tiny", "--quiet", "--no-fashion-mnist",
                           "--scale-items", str(10**13), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and "scale_items=10000000000000 needs about" in err
    assert "## " not in out  # refused before any training


# ---- bad arguments --------------------------------------------------------------------------

# (argv, exit status, words the error line must hold); "{tmp}" is an empty directory.
BAD_ARGUMENTS = [
    (["bench", "--bogus"], 2, "unrecognized arguments"),
    (["frobnicate"], 2, "invalid choice"),
    ([], 2, "required"),
    (["bench", "--max-size", "-5"], 2, "--max-size"),
    (["bench", "--max-size", "0"], 2, "--max-size"),
    (["bench", "--max-size", "many"], 2, "--max-size"),
    (["bench", "--max-size", "999", "--out", "{tmp}"], 1, "max_size"),
    (["bench", "--scale", "huge"], 2, "--scale"),
    (["bench", "--scale", "tiny", "--quick"], 2, "not allowed with"),
    (["demo", "--threads", "-1"], 2, "--threads"),
    (["demo", "--scale", "huge"], 2, "--scale"),
    (["demo", "--scale-items", "-1"], 2, "--scale-items"),
    (["demo", "--scale-items", "many"], 2, "--scale-items"),
    (["eval", "{tmp}", "--ks", "0"], 2, "--ks"),
    (["eval", "{tmp}", "--out", "{tmp}"], 1, "holds no FiCo-ITR model outputs"),
    (["eval", "{tmp}/missing"], 2, "does not exist"),
]


@pytest.mark.parametrize(
    "argv, status, words", BAD_ARGUMENTS, ids=[" ".join(a[0]) or "(none)" for a in BAD_ARGUMENTS]
)
def test_bad_argument_ends_with_a_one_line_error(argv, status, words, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    got, out = run_cli(argv)
    err = capsys.readouterr().err
    assert got == status
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("cofisearch") and "error:" in last and words in last
    assert "Traceback" not in err
    assert out == ""


# ---- checks before work ----------------------------------------------------------------------

# Commands whose --out lies under a regular file: each must fail before it works.
UNWRITABLE_OUT = [
    ["demo", "--scale", "tiny", "--quiet", "--no-fashion-mnist"],
    ["bench", "--scale", "tiny", "--quiet"],
]


@pytest.mark.parametrize("argv", UNWRITABLE_OUT, ids=lambda a: a[0])
def test_unwritable_out_fails_at_once(argv, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    t0 = time.perf_counter()
    status, out = run_cli(argv + ["--out", str(blocker / "report")])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "--out must be a writable directory" in err
    assert out == ""  # nothing announced, trained or measured
    assert elapsed < 1.0


def test_eval_with_unwritable_out_fails_before_evaluating(fico_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, out = run_cli(["eval", str(fico_dir), "--out", str(blocker / "report")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "--out must be a writable directory" in err
    assert out == ""


def test_eval_without_model_outputs_leaves_no_output_directory(tmp_path):
    status, _ = run_cli(["eval", str(tmp_path), "--out", str(tmp_path / "report")])
    assert status == 1
    assert not (tmp_path / "report").exists()


def test_bad_argument_from_the_entry_point_shows_no_traceback(tmp_path):
    proc = run_module("eval", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cofisearch eval: error:")

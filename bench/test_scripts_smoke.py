"""Every benchmark script once at its tiny scale: each path runs and every result check
passes, so that the scripts cannot rot between the runs that time them.

``targets.py``, ``cascade_scale.py`` and ``ivf_scale.py`` run in this process; ``bench_distributed.py``
runs in a subprocess, so that Ray's workers and settings stay out of the test process.
"""

import json
import os
import subprocess
import sys

import pytest

import cofisearch

from . import targets

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def test_targets_tiny_passes_its_checks(tmp_path, capsys):
    out = tmp_path / "targets.json"
    assert targets.main(["--scale", "tiny", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == []
    sections = {row["target"].split(":")[0].split(" ")[0] for row in report["rows"]}
    assert {"single-thread", "Hamming", "float", "study", "all-vs-all"} <= sections
    assert "passed" in capsys.readouterr().out


def test_targets_tiny_judges_every_width_and_shape_of_issue_12(tmp_path):
    out = tmp_path / "targets.json"
    assert targets.main(["--scale", "tiny", "--sections", "widths,shapes",
                         "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    judged = [r["target"] for r in rows if r["result"] in ("PASS", "FAIL")]
    for bits in targets.WIDTHS:
        assert any(t.startswith(f"Hamming {bits} bits: time per code") for t in judged)
    for bits in targets.FAISS_WIDTHS:
        assert sum(t.startswith(f"Hamming {bits} bits,") and "vs faiss" in t
                   for t in judged) == 2
    assert sum(t.startswith("all-vs-all") for t in judged) == 3 * 2
    assert sum("2 threads speed-up" in t and "1 query" in t for t in judged) == 2


def test_targets_leaves_out_peer_all_vs_all_predicted_over_budget(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(targets, "PEER_BUDGET_S", 0.0)
    out = tmp_path / "targets.json"
    assert targets.main(["--scale", "tiny", "--sections", "shapes", "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["target"].startswith("all-vs-all")]
    # The smallest size of each width is timed (nothing to predict from), the rest not.
    timed = [r for r in rows if "; faiss " in r["reference"] and "left out" not in r["reference"]]
    assert len(timed) == 3
    assert sum("faiss left out" in r["reference"] for r in rows) == len(rows) - 3


def test_cascade_scale_tiny_passes_its_checks(tmp_path):
    pytest.importorskip("torch")
    from . import cascade_scale

    out = tmp_path / "cascade.json"
    assert cascade_scale.main(["--scale", "tiny", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert set(report["directions"]) == {"i2t", "t2i"}
    assert all({"hash", "itq"} <= set(d) for d in report["directions"].values())


def test_ivf_scale_tiny_passes_its_checks(tmp_path):
    pytest.importorskip("faiss")
    from . import ivf_scale

    out = tmp_path / "ivf.json"
    assert ivf_scale.main(["--scale", "tiny", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert {"float", "hamming", "ivf-codes", "ivf-vectors", "faiss-ivf"} == {
        row["index"] for row in report["rows"]}


def test_ivf_scale_asymmetric_tiny_passes_its_checks(tmp_path):
    pytest.importorskip("faiss")
    from . import ivf_scale

    out = tmp_path / "asym.json"
    assert ivf_scale.main(["--scale", "tiny", "--asymmetric", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert {"asym-ivf", "asym-flat", "sym-ivf", "rabitq-refine", "hnsw-flat", "ivf-flat"} <= {
        row["index"] for row in report["rows"]}


def test_bench_distributed_tiny_finds_identical_results():
    pytest.importorskip("ray")
    package_root = os.path.dirname(os.path.dirname(cofisearch.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "bench_distributed.py"), "--scale", "tiny"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sharded results identical to the single index" in proc.stdout
    assert "Ray overhead" in proc.stdout


def test_reliability_tiny_stress_finds_no_problem(capsys):
    from . import reliability

    assert reliability.main(["--scale", "tiny", "--skip-fuzz"]) == 0
    out = capsys.readouterr().out
    assert "stress binary" in out and "stress cascade" in out


def test_rerank_scale_tiny_writes_both_tables(tmp_path):
    pytest.importorskip("torch")
    from . import rerank_scale

    assert rerank_scale.main(["--scale", "tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "rerank_scale.json").read_text())
    quality, cost = report["tables"]
    assert [r["method"].split(",")[0] for r in quality["rows"]][:2] == [
        "dual encoder (exhaustive cosine)", "cascade (32-bit ITQ screen of 256"]
    regimes = {(r["scale"], r["regime"]) for r in cost["rows"]}
    assert regimes == {(s, g) for s in ("100/500", "200/1K")
                       for g in ("all pairs", "cascade-bounded")}
    assert "Table 6 analogue" in (tmp_path / "rerank_scale.md").read_text()


def test_filters_runs_every_path_at_small_sizes(tmp_path):
    from . import filters

    assert filters.main(["--codes", "3000", "--floats", "800", "--dim", "16", "--queries", "20",
                         "--fractions", "0.5,0.01", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "filters.json").read_text())
    assert {r["kind"] for r in report["rows"]} == {"binary", "float"}
    assert all(r["scan_s"] > 0 and r["pack_s"] > 0 for r in report["rows"])
    assert report["remove"]["removed"] == 30 and report["ivf_remove"]["remove_s"] > 0
    assert "IVFBinaryIndex" in (tmp_path / "filters.md").read_text()

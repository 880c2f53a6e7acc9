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
    assert {"single-thread", "Hamming", "float", "study"} <= sections
    assert "passed" in capsys.readouterr().out


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

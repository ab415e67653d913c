"""Every benchmark in scripts/bench/ runs one iteration at tiny sizes (numbers are not checked:
tests never assert times; this catches a benchmark that no longer runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_runs_one_iteration(tmp_path):
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "run_all.py"), "--smoke", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    table = out.read_text(encoding="utf-8")
    present = [p.stem for p in (REPO / "scripts" / "bench").glob("*.py") if p.stem not in ("harness", "run_all", "prep_memory")]
    for name in present:
        assert f"| {name} | " in table, f"no result row from scripts/bench/{name}.py"
    assert "failed" not in table
    for expected in ("training tokens/s", "generation tokens/s", "training steps/s", "sampling images/s", "prep MB/s", "`aigc --help`",
                     "SFT conversation tokens/s", "DPO pairs/s",
                     "classifier training examples/s", "classifier prediction examples/s"):
        assert expected in table


def test_prep_memory_study_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "prep_memory.py"), "--smoke"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "char: 1 MB → 2 MB corpus" in done.stdout

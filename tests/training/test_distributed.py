"""Multi-process training: real torchrun launches on CPU (gloo) against one in-process run.

Two processes must take exactly the steps one process takes on the same global batch (the loss
curve within 1e-5), and their checkpoints must resume in a single process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aigc_cli.errors import AigcError
from tests.conftest import TINY_TEXT, json_out, tiny_config

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"precision": "fp32", "save_every": 10, "keep_last": 0, "log_every": 1, "batch_size": 4}


def curve(run_dir: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["step"], key, r[key]) for r in rows for key in ("train_loss", "val_loss") if key in r]


def assert_same_curve(got: list, want: list, tolerance: float = 1e-5) -> None:
    assert [(step, key) for step, key, _ in got] == [(step, key) for step, key, _ in want]
    worst = max(abs(a[2] - b[2]) for a, b in zip(got, want))
    assert worst < tolerance, f"loss curves differ by up to {worst}"


def torchrun(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "aigc_cli", "train", str(config), "--json", *overrides]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A prepared corpus and a 20-step single-process run of the tiny GPT."""
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
    config = tiny_config(tmp, tmp / "corpus.txt", train=TRAIN)
    runner = CliRunner()
    assert runner.invoke(app, ["prep", str(config), "-q"]).exit_code == 0
    json_out(runner.invoke(app, ["train", str(config), "-q", "--json", f"train.out_dir={tmp / 'single'}"]))
    return config, tmp


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume_on_one(reference, strategy, cli):
    config, tmp = reference
    run_dir = tmp / strategy
    done = torchrun(config, f"train.out_dir={run_dir}", f"train.strategy={strategy}")
    result = json.loads(done.stdout)  # process 1 prints nothing on stdout: one JSON object for the job
    assert result["steps"] == 20
    want = curve(tmp / "single")
    assert_same_curve(curve(run_dir), want)
    provenance = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["processes"] == 2 and provenance["strategy"] == strategy

    # The 2-process checkpoint at step 10 continues in one process along the same curve.
    resumed = tmp / f"{strategy}-resumed"
    shutil.copytree(run_dir, resumed)
    (resumed / "checkpoints" / "latest").write_text("step-000010\n", encoding="utf-8")
    json_out(cli("train", config, "-q", "--json", "--resume", f"train.out_dir={resumed}"))
    assert_same_curve(curve(resumed), want)


def test_batch_must_divide_over_processes(monkeypatch):
    from aigc_cli.training.distributed import start_processes

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AigcError, match="train.batch_size=4 does not divide over 3 processes"):
        start_processes("auto", 4, "gpt", "cpu")


def test_fsdp_refuses_backends_it_cannot_shard(monkeypatch):
    from aigc_cli.training.distributed import start_processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AigcError, match="fsdp does not support the gan backend"):
        start_processes("fsdp", 4, "gan", "cpu")

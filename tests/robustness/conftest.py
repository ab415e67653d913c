"""Shared by the robustness tests: a small trained world to break, snapshots of every file, real
`aigc` subprocesses."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigc_cli.cli import app
from tests.conftest import TINY_TEXT, tiny_config

REPO = Path(__file__).resolve().parents[2]
CFG = "experiment.yaml"
STEP2, STEP4 = "run/checkpoints/step-000002", "run/checkpoints/step-000004"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A prepared corpus, a run with checkpoints at steps 2 and 4, and its generations; all paths relative."""
    root = tmp_path_factory.mktemp("world")
    (root / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
    tiny_config(root, "corpus.txt", data={"prepared_dir": "prepared"},
                train={"out_dir": "run", "max_steps": 4, "save_every": 2, "keep_last": 0, "eval_every": 4, "eval_batches": 1})
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for args in (["prep", CFG], ["train", CFG], ["generate", CFG]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.stderr
    finally:
        os.chdir(cwd)
    return root


def world_copy(world: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the world, made the working directory."""
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    monkeypatch.chdir(copy)
    return copy


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def changed_files(before: dict[str, str], root: Path) -> list[str]:
    """Files of `before` that are gone or different now (new files are not counted)."""
    after = snapshot(root)
    return [name for name, digest in before.items() if after.get(name) != digest]


def start_aigc(*args, cwd: Path, preexec_fn=None) -> subprocess.Popen:
    """`aigc ARGS` as a real process, this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "aigc_cli", *map(str, args)], cwd=cwd, env=env, preexec_fn=preexec_fn,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, process: subprocess.Popen, timeout: float = 300.0, poll: float = 0.002):
    """Poll `condition()` until it returns something truthy; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"aigc exited with {process.returncode} before the condition held:\n{err}")
        time.sleep(poll)
    process.kill()
    raise AssertionError("timed out waiting for the condition")


def freeze(process: subprocess.Popen) -> None:
    """SIGSTOP, and wait until the kernel reports the process stopped (state T in /proc)."""
    process.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{process.pid}/stat")
    deadline = time.monotonic() + 10
    while process.poll() is None and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.0005)


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return ""

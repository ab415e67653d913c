"""`aigc serve` at the command line: help and bad input come back at once, one line, exit 2,
without torch (checked in a fresh interpreter, as a user runs it)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "fastapi", "uvicorn"}


def run_cli(args: list[str], cwd: Path) -> tuple[int, str, set[str]]:
    """The CLI in a fresh interpreter: exit code, stderr, and which heavy modules it imported."""
    code = ("import sys\nfrom aigc_cli.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            f"print('LOADED=' + ','.join(m for m in {sorted(HEAVY)!r} if m in sys.modules), file=sys.stderr)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=120)
    loaded = [line for line in proc.stderr.splitlines() if line.startswith("LOADED=")][-1]
    errors = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("LOADED="))
    return proc.returncode, errors, set(filter(None, loaded.removeprefix("LOADED=").split(",")))


def test_serve_help_imports_nothing_heavy(tmp_path):
    code, _, loaded = run_cli(["serve", "--help"], tmp_path)
    assert code == 0 and not loaded & HEAVY


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("args, message", [
    (["serve", "nowhere"], "error: checkpoint not found: nowhere — pass a directory under <train.out_dir>/checkpoints/, or a run directory"),
    (["serve", "{run}", "--port", "{port}"], "error: cannot listen on 127.0.0.1:{port}: Address already in use — stop the server using it or pick another --port"),
    (["serve", "{run}", "--device", "tpu"], "error: --device tpu is not a device aigc knows — use one of auto, cuda, mps, cpu"),
    (["serve", "{run}", "--host", "no-such-host.invalid"], "error: --host no-such-host.invalid is not an address this machine can listen on"),
    (["serve", "{run}", "--max-batch", "0"], "error: Invalid value for '--max-batch': Input should be greater than or equal to 1"),
])
def test_bad_input_is_one_line_and_exit_2_before_torch(tmp_path, plain_run, taken_port, args, message):
    values = {"run": plain_run, "port": taken_port}
    code, stderr, loaded = run_cli([a.format(**values) for a in args], tmp_path)
    assert code == 2 and len(stderr.splitlines()) == 1 and stderr.startswith(message.format(**values)), stderr
    assert not loaded & HEAVY

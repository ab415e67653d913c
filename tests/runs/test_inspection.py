"""`aigc runs` and `aigc info` on real runs: statuses, numbers that match the model, no torch import."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_TEXT, json_out, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/done (finished), runs/group/cut (interrupted: last checkpoint before max_steps),
    runs/group/live (a live process holds its lock), runs/group/dead (the lock's process is gone).
    Built once for the module: the tests only read it."""
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    tmp_path = tmp_path_factory.mktemp("inspection")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    cli = lambda *args: CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    cfg = tiny_config(tmp_path, corpus, train={"out_dir": str(tmp_path / "runs" / "done")})
    json_out(cli("prep", cfg, "--json"))
    json_out(cli("train", cfg, "--json"))
    done = tmp_path / "runs" / "done"
    cut = tmp_path / "runs" / "group" / "cut"
    shutil.copytree(done, cut)
    # What a run killed between its step-10 and step-20 checkpoints leaves behind.
    shutil.rmtree(cut / "checkpoints" / "step-000020")
    (cut / "checkpoints" / "latest").write_text("step-000010\n")
    metrics = [line for line in (cut / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 15]
    (cut / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    shutil.copytree(cut, tmp_path / "runs" / "group" / "live")
    # The lock of `aigc train` sits beside its run directory and names the holder.
    (tmp_path / "runs" / "group" / ".live.lock").write_text(f"pid={os.getpid()}\nhost={socket.gethostname()}\ncommand=aigc train\n")
    shutil.copytree(cut, tmp_path / "runs" / "group" / "dead")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "runs" / "group" / "dead" / "train.lock").write_text(json.dumps({"pid": gone.pid}))  # other formats are read too
    return tmp_path / "runs"


def test_runs_lists_status_steps_and_best_loss(cli, runs_dir):
    listed = {r["name"]: r for r in json_out(cli("runs", runs_dir, "--json"))}
    assert sorted(listed) == ["done", "group/cut", "group/dead", "group/live"]
    assert {name: r["status"] for name, r in listed.items()} == {
        "done": "finished", "group/cut": "interrupted", "group/dead": "interrupted", "group/live": "running"}
    rows = [json.loads(line) for line in (runs_dir / "done" / "metrics.jsonl").read_text().splitlines()]
    done = listed["done"]
    assert done["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in rows if "val_loss" in r))
    assert (done["steps"], done["max_steps"], done["checkpoint_step"], done["backend"]) == (20, 20, 20, "gpt")
    assert done["last_checkpoint"] == str(runs_dir / "done" / "checkpoints" / "step-000020")
    assert listed["group/cut"]["checkpoint_step"] == 10

    table = cli("runs", runs_dir)
    assert table.exit_code == 0
    line = next(line for line in table.stdout.splitlines() if line.startswith("group/cut"))
    assert line.split() == ["group/cut", "gpt", "15/20", f"{listed['group/cut']['best_val_loss']:.4f}", "step-000010", "interrupted"]


def test_runs_on_a_missing_folder_exits_2(cli, tmp_path):
    result = cli("runs", tmp_path / "nowhere")
    assert result.exit_code == 2 and result.stderr.startswith("error: no such directory")


def test_info_describes_a_checkpoint_like_the_loaded_model(cli, runs_dir):
    from transformers import AutoModelForCausalLM

    checkpoint = runs_dir / "done" / "checkpoints" / "step-000020"
    info = json_out(cli("info", checkpoint, "--json"))
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["architecture"]["model_type"] == "gpt2" and info["architecture"]["n_layer"] == 1
    meta = json.loads((runs_dir.parent / "prepared" / "meta.json").read_text())
    assert info["tokenizer"] == {"kind": "char", "vocab_size": meta["vocab_size"]}
    assert info["step"] == 20 and info["backend"] == "gpt"
    assert info["config_hash"] == hashlib.sha256((checkpoint / "config.yaml").read_bytes()).hexdigest()[:12]
    assert info["size_bytes"] == sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())

    run = json_out(cli("info", runs_dir / "done", "--json"))
    assert run["kind"] == "run" and run["status"] == "finished" and run["checkpoints"] == ["step-000010", "step-000020"]
    assert run["latest"]["parameters"] == info["parameters"]
    text = cli("info", checkpoint).stdout
    assert f"parameters: {info['parameters']:,}" in text and "tokenizer: kind=char" in text


def test_info_counts_parameters_of_a_pickled_bin_checkpoint(cli, runs_dir, tmp_path):
    """Older hub checkpoints ship pytorch_model.bin only: the count comes from its tensors' shapes."""
    import shutil

    import torch
    from safetensors.torch import load_file

    checkpoint = tmp_path / "bin-only"
    shutil.copytree(runs_dir / "done" / "checkpoints" / "step-000020", checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    torch.save(weights, checkpoint / "pytorch_model.bin")
    info = json_out(cli("info", checkpoint, "--json"))
    assert info["parameters"] == sum(t.numel() for t in weights.values()) > 0


def test_info_describes_prepared_text(cli, runs_dir):
    prepared = runs_dir.parent / "prepared"
    info = json_out(cli("info", prepared, "--json"))
    meta = json.loads((prepared / "meta.json").read_text())
    assert info["kind"] == "prepared text"
    assert (info["train_tokens"], info["val_tokens"]) == (meta["train_tokens"], meta["val_tokens"])
    assert info["inputs"][0]["sha256"] == meta["inputs"][0]["sha256"]


def test_runs_and_info_never_import_torch(runs_dir):
    """Listing and describing read headers and JSON only: instant even beside big checkpoints."""
    checks = [["runs", str(runs_dir)], ["info", str(runs_dir.parent / "prepared")],
              ["info", str(runs_dir / "done" / "checkpoints" / "step-000020")], ["info", str(runs_dir / "done")]]
    code = ("import sys\nfrom aigc_cli.cli import app\n"
            "for args in %r:\n"
            "    try:\n        app(args + ['--json'], prog_name='aigc')\n    except SystemExit as exc:\n        assert exc.code in (0, None), exc.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n") % checks
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("make, message", [(lambda p: p / "missing", "error: not found"),
                                           (lambda p: p, "is not a checkpoint, run directory or prepared dataset")])
def test_info_on_something_else_exits_2(cli, tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("info", make(tmp_path))
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


"""What a new user meets first: errors that say what to run and come back fast, readable help,
a training run that says how long it will take, eval that says what it scored, and re-runs of
finished work that return at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigc_cli.cli import app
from tests.conftest import json_out, tiny_config

REPO = Path(__file__).resolve().parents[2]
VERBS = ["prep", "train", "finetune", "generate", "chat", "eval", "init", "runs", "info", "serve", "export"]


def _modules_after(args: list[str], cwd: Path) -> tuple[int, str, set[str]]:
    """Run the CLI in a fresh interpreter; its exit code, stderr and which heavy modules it imported."""
    code = ("import sys\nfrom aigc_cli.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "names = ('torch', 'transformers', 'diffusers', 'numpy', 'pydantic', 'yaml')\n"
            "print('LOADED=' + ','.join(m for m in names if m in sys.modules), file=sys.stderr)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    loaded = [line for line in proc.stderr.splitlines() if line.startswith("LOADED=")][-1]
    return proc.returncode, proc.stderr, set(filter(None, loaded.removeprefix("LOADED=").split(",")))


def test_generate_before_train_says_train_first_and_creates_nothing(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("generate", cfg, "--prompt", "To be")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train first" in errors[0] and f"aigc train {cfg}" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no empty run directory, no lock file


@pytest.mark.parametrize("args, message", [
    (["generate", "{cfg}"], "train first"),
    (["eval", "{cfg}"], "aigc prep"),  # the first missing step is named first
    (["train", "{cfg}"], "aigc prep"),
    (["generate", "{cfg}", "--checkpoint", "nowhere"], "checkpoint not found"),
    (["eval", "{cfg}", "--metrics", "bleu", "--predictions", "none.jsonl", "--references", "r.txt"], "--predictions not found"),
    (["finetune", "{cfg}", "finetune.base=./no-such-model"], "finetune.base not found"),
    (["export", "nowhere", "--format", "onnx"], "checkpoint not found"),
])
def test_errors_that_need_no_model_come_back_without_torch(tmp_path, corpus, args, message):
    cfg = tiny_config(tmp_path, corpus)
    code, stderr, loaded = _modules_after([a.format(cfg=cfg) for a in args], tmp_path)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not loaded & {"torch", "transformers", "diffusers"}


def test_help_needs_neither_pydantic_nor_yaml(tmp_path):
    code, _, loaded = _modules_after(["--help"], tmp_path)
    assert code == 0 and not loaded & {"torch", "pydantic", "yaml"}


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_metavars_not_python_types(verb):
    result = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "140", "NO_COLOR": "1"})
    assert result.exit_code == 0
    for python_type in ("<str>", "<bool>", "<int", "<list", "{config}", "{overrides}", "[overrides]"):
        assert python_type not in result.stdout, f"aigc {verb} --help shows {python_type}"


def test_train_says_its_estimated_duration_first(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus)
    json_out(cli("prep", cfg, "--json"))
    result = cli("train", cfg)
    first = [line for line in result.stderr.splitlines() if line.strip()][0]
    assert first.startswith("training gpt") and "estimated" in first and "for 20 steps" in first
    # The step-0 evaluation waited for that line instead of coming before it.
    assert result.stderr.index("estimated") < result.stderr.index("step 0: val loss")


def test_eval_says_what_it_scored(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus)
    json_out(cli("prep", cfg, "--json"))
    checkpoint = json_out(cli("train", cfg, "--json"))["checkpoint"]
    result = cli("eval", cfg)
    assert result.exit_code == 0
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["checkpoint"] == checkpoint and report["split"] == "val" and report["windows"] > 0
    assert report["scored"].startswith(f"{checkpoint} on the val split") and f"{report['windows']:,} windows" in report["scored"]
    assert f"scored: {report['scored']}" in result.stdout  # on screen too


def test_finished_generate_rerun_does_not_load_the_model(cli, tmp_path, corpus, monkeypatch):
    cfg = tiny_config(tmp_path, corpus)
    json_out(cli("prep", cfg, "--json"))
    json_out(cli("train", cfg, "--json"))
    out = tmp_path / "gen.jsonl"
    json_out(cli("generate", cfg, "--prompt", "To be", "--out", out, "--json"))
    first = out.read_bytes()

    import aigc_cli.inference.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although every completion is in the manifest")

    monkeypatch.setattr(loading, "load_model", refuse)
    json_out(cli("generate", cfg, "--prompt", "To be", "--out", out, "--json"))
    assert out.read_bytes() == first
    # Nor does it import torch: the sampling is the inference layer's, imported only when something is missing.
    code, stderr, heavy = _modules_after(["generate", str(cfg), "--prompt", "To be", "--out", str(out), "--json"], tmp_path)
    assert code == 0, stderr
    assert "torch" not in heavy and out.read_bytes() == first

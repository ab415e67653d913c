"""Shared fixtures: tiny corpora, tiny configs, the CLI run in-process.

HF_HUB_OFFLINE is set before anything imports huggingface_hub: a hub lookup would otherwise
wait ~25 s for the network before failing.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aigc_cli.cli import app

TINY_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    "Ünïcödé and emoji 🙂 survive the round trip.\n"
) * 60


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, source: Path | str, backend: str = "gpt", **sections) -> Path:
    """A complete experiment small enough to train in a couple of seconds."""
    model = {"backend": backend, "n_layer": 1, "n_embd": 32, "block_size": 16}
    if backend == "gpt":
        model["n_head"] = 2
    else:
        model["hidden_size"] = 32
    raw = {
        "data": {"source": str(source), "prepared_dir": str(tmp_path / "prepared")},
        "model": model,
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 20, "batch_size": 4, "warmup_steps": 2,
                  "learning_rate": 3e-3, "eval_every": 10, "eval_batches": 2, "save_every": 10, "log_every": 5},
        "generate": {"max_new_tokens": 12, "num_samples": 1},
        "eval": {"max_batches": 4},
    }
    raw["train"]["sample_tokens"] = 4  # the samples written at each evaluation: a few tokens are enough here
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def json_out(result) -> dict:
    """The one JSON object a --json verb prints on stdout."""
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)

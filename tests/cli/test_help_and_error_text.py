"""What a person sees: `aigc --help` and a few error messages, compared with stored text.

The expected outputs live in tests/expected/*.txt. After an intended change to help texts or
messages, regenerate them and review the diff:

    AIGC_UPDATE_EXPECTED=1 python -m pytest -q tests/cli/test_help_and_error_text.py && git diff tests/cli/expected
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigc_cli.cli import app

EXPECTED = Path(__file__).resolve().parent / "expected"
WIDTH = "100"  # the terminal width help is rendered at, so the text does not depend on the terminal running the tests

CASES = {
    "help": ["--help"],
    "help-chat": ["chat", "--help"],
    "init-list": ["init", "--list"],
    "error-config-not-found": ["train", "nothere.yaml"],
    "error-unknown-key": ["train", "text-gpt.yaml", "train.max_step=10"],
    "error-wrong-type": ["train", "text-gpt.yaml", "train.max_steps=ten"],
    "error-bad-override": ["prep", "text-gpt.yaml", "max_steps"],
    "error-unknown-template": ["init", "--template", "text-gtp"],
    "error-init-exists": ["init", ".", "--template", "text-gpt"],
    "error-info-not-found": ["info", "nowhere"],
}


def render(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, prog_name="aigc", env={"COLUMNS": WIDTH, "NO_COLOR": "1"})
    text = f"$ aigc {' '.join(args)}\n[exit {result.exit_code}]\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # colour codes, should a CI force them
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip() + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_expected_text(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # error messages name paths relative to here
    (tmp_path / "text-gpt.yaml").write_text("data:\n  source: builtin:python-docs\n", encoding="utf-8")
    actual = render(CASES[name])
    path = EXPECTED / f"{name}.txt"
    if os.environ.get("AIGC_UPDATE_EXPECTED"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.is_file(), f"no {path.name}: run AIGC_UPDATE_EXPECTED=1 python -m pytest {__file__}"
    assert actual == path.read_text(encoding="utf-8"), (
        f"the output of `aigc {' '.join(CASES[name])}` changed; if intended: "
        f"AIGC_UPDATE_EXPECTED=1 python -m pytest -q tests/cli/test_help_and_error_text.py, and review git diff tests/cli/expected")

"""aigc_cli/cli.py: every option is a config override merged before validation, and every verb
shares one error path (messages, exit codes, Ctrl-C, a full disk)."""

from __future__ import annotations

import errno

import pytest
import yaml
from typer.testing import CliRunner

from aigc_cli.cli import app


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _printed_config(*args: str) -> dict:
    result = _invoke(*args, "--print-config")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text("data:\n  source: builtin:python-docs\n", encoding="utf-8")
    return "exp.yaml"


def test_generate_options_are_overrides(config):
    by_options = _printed_config("generate", config, "--seed", "7", "--num", "3", "--out", "007.jsonl", "--prompt", "a", "--prompt", "b")
    by_keys = _printed_config("generate", config, "generate.seed=7", "generate.num_samples=3", "generate.out='007.jsonl'", "generate.prompts=[a, b]")
    assert by_options == by_keys and by_options["generate"]["out"] == "007.jsonl"


def test_num_is_the_image_count_for_an_image_model(config):
    printed = _printed_config("generate", config, "model.backend=vae", "--num", "5")
    assert printed["generate"]["images"]["num_images"] == 5 and printed["generate"]["num_samples"] == 1


def test_an_option_is_validated_like_an_override(config):
    result = _invoke("generate", config, "generate.top_k=0", "--seed", "7")
    assert result.exit_code == 2 and "'generate.top_k'" in result.stderr


def test_eval_options_are_overrides(config):
    by_options = _printed_config("eval", config, "--metrics", "bleu,chrf", "--lang", "de", "--fail-under", "bleu=25",
                                 "--predictions", "p.txt", "--references", "r.txt")
    by_keys = _printed_config("eval", config, "eval.metrics=[bleu, chrf]", "eval.lang=de", "eval.fail_under={bleu: 25}",
                              "eval.generations=p.txt", "eval.references=r.txt")
    assert by_options == by_keys


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C): finished files are intact"),
    (OSError(errno.ENOSPC, "No space left on device", "out/x"), 2, "error: cannot write or read out/x: No space left on device — free disk space"),
    (ValueError("boom"), 70, "internal error: ValueError: boom — rerun with --debug"),
])
@pytest.mark.parametrize("verb", ["init", "info", "prep"])
def test_every_verb_shares_one_error_path(config, monkeypatch, verb, raised, code, line):
    def fail(*args, **kwargs):
        raise raised

    target = {"init": "aigc_cli.starter_configs.write_starter", "info": "aigc_cli.runs.inspection.describe",
              "prep": "aigc_cli.data.prepare.prepare_text_corpus"}[verb]
    monkeypatch.setattr(target, fail)
    args = {"init": ["init", "new", "--template", "text-gpt"], "info": ["info", "."], "prep": ["prep", config]}[verb]
    result = _invoke(*args)
    assert result.exit_code == code and result.stderr.startswith(line), result.output

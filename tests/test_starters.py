"""`aigc init`: every shipped template is a valid config; init writes, lists, refuses to overwrite;
an image template runs end to end (the text ones run in tests/test_readme.py's quick start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aigc_cli.config import validate_config
from aigc_cli.starter_configs import render_template, template_names
from tests.conftest import json_out

TEMPLATES = ["finetune-lora", "image-ddpm", "image-gan", "image-vae", "text-gpt", "text-rnn"]


def test_the_six_templates_are_shipped():
    assert template_names() == TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_is_a_valid_commented_config(name):
    text = render_template(name, "starters")
    assert text.startswith(f"# {name}: ")
    cfg = validate_config(yaml.safe_load(text), source=name)
    assert cfg.train.out_dir == f"runs/{name}"
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#") or " # " in line]
    assert len(comments) >= 10, "a starter config explains itself"
    if name == "finetune-lora":
        assert cfg.finetune.train_file == "starters/python-summaries.jsonl" and cfg.finetune.base == "./runs/text-gpt"
    else:
        assert cfg.data.source in ("builtin:python-docs", "digits"), "a starter runs offline, on data every machine has"


def test_init_list_names_each_template_on_one_line(cli):
    result = cli("init", "--list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == TEMPLATES
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)
    listed = json_out(cli("init", "--list", "--json"))["templates"]
    assert [t["name"] for t in listed] == TEMPLATES


def test_init_writes_and_never_overwrites_without_force(cli, tmp_path):
    target = tmp_path / "exp" / "text-gpt.yaml"
    out = json_out(cli("init", tmp_path / "exp", "--template", "text-gpt", "--json"))
    assert out["written"] == [str(target)]
    assert target.read_text(encoding="utf-8") == render_template("text-gpt", tmp_path / "exp")

    target.write_text("# my edits\n", encoding="utf-8")
    again = cli("init", tmp_path / "exp", "--template", "text-gpt")
    assert again.exit_code == 2
    assert again.stderr.startswith("error: ") and "already exists" in again.stderr and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert target.read_text(encoding="utf-8") == "# my edits\n"

    forced = cli("init", tmp_path / "exp", "--template", "text-gpt", "--force", "--quiet")
    assert forced.exit_code == 0 and forced.stdout == "" and forced.stderr == ""
    assert target.read_text(encoding="utf-8").startswith("# text-gpt: ")


@pytest.mark.parametrize("args, message", [(["--template", "image-ddmp"], "did you mean 'image-ddpm'"),
                                           ([], "no template chosen")])
def test_init_bad_template_exits_2(cli, tmp_path, args, message):
    result = cli("init", tmp_path, *args)
    assert result.exit_code == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_finetune_template_comes_with_its_pairs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = json_out(cli("init", "starters", "--template", "finetune-lora", "--json"))
    assert sorted(Path(p).name for p in out["written"]) == ["finetune-lora.yaml", "python-summaries-val.ref.txt",
                                                             "python-summaries-val.src.txt", "python-summaries.jsonl"]
    cfg = validate_config(yaml.safe_load(Path("starters/finetune-lora.yaml").read_text(encoding="utf-8")))
    pairs = [json.loads(line) for line in Path(cfg.finetune.train_file).read_text(encoding="utf-8").splitlines()]
    sources = Path(cfg.finetune.val_source_file).read_text(encoding="utf-8").splitlines()
    targets = Path(cfg.finetune.val_target_file).read_text(encoding="utf-8").splitlines()
    assert len(pairs) > 1000 and len(sources) == len(targets) == 200
    assert Path(cfg.eval.references).resolve() == Path(cfg.finetune.val_target_file).resolve()
    assert not set(sources) & {p["source"] for p in pairs}, "held-out functions are not trained on"
    assert all(set(p) == {"source", "target"} and "(" in p["source"] and len(p["source"] + p["target"]) <= 100 for p in pairs)


def test_image_template_runs_end_to_end(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    json_out(cli("init", "starters", "--template", "image-vae", "--json"))
    config = "starters/image-vae.yaml"
    tiny = ["train.max_steps=2", "train.eval_every=1", "train.eval_batches=1", "train.batch_size=8", "train.sample_images=4"]
    json_out(cli("prep", config, "--json"))
    trained = json_out(cli("train", config, *tiny, "--json"))
    assert trained["checkpoint"].endswith("runs/image-vae/checkpoints/step-000002")
    assert sorted(p.name for p in Path("runs/image-vae/train_samples").iterdir()) == ["step-000000.png", "step-000001.png", "step-000002.png"]
    images = json_out(cli("generate", config, "--num", "4", "generate.images.reconstruct=null", "--json"))
    assert images["count"] == 4
    report = json_out(cli("eval", config, "eval.metrics=[loss,psnr,ssim]", "--json"))
    assert set(report["metrics"]) >= {"loss", "psnr", "ssim"}

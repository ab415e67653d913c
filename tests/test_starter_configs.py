"""`aigc init`: every shipped template is a valid config; init writes, lists, refuses to overwrite;
an image template runs end to end (the text ones run in tests/docs/test_readme.py's quick start)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from aigc_cli.config import validate_config
from aigc_cli.starter_configs import render_template, template_names
from tests.conftest import json_out

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["chat-dpo", "chat-sft", "classify", "finetune-lora", "image-ddpm", "image-gan", "image-vae", "ner", "text-gpt", "text-rnn", "text-to-image"]


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
    elif name == "chat-sft":
        assert cfg.finetune.train_file == "starters/python-chat.jsonl" and cfg.finetune.format == "messages" and cfg.finetune.base == "./runs/text-gpt"
    elif name == "chat-dpo":
        assert cfg.finetune.train_file == "starters/python-prefs.jsonl" and cfg.finetune.method == "dpo" and cfg.finetune.base == "./runs/chat-sft"
    elif name in ("classify", "ner"):  # records `aigc init` wrote from the installed standard library
        assert cfg.data.source == {"classify": "starters/python-docstrings.jsonl", "ner": "starters/python-tags.conll"}[name]
    else:
        assert cfg.data.source in ("builtin:python-docs", "digits"), "a starter runs offline, on data every machine has"


def test_init_list_is_a_table_of_the_templates_headers(cli):
    result = cli("init", "--list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "task", "data"]
    assert [line.split()[0] for line in lines[1:len(TEMPLATES) + 1]] == TEMPLATES
    listed = json_out(cli("init", "--list", "--json"))["templates"]
    assert [t["name"] for t in listed] == TEMPLATES
    for row in listed:
        assert set(row) == {"name", "summary", "task", "data", "time", "measured"} and all(row.values()), row
        assert re.search(r"\b(bf16|fp32)\b", row["time"]), "a time names its precision"
        assert "AVX" in row["measured"] and re.search(r"\d-core", row["measured"]), "and the CPU it was measured on"
        assert f"measured {row['measured']}" in result.stdout


def test_init_doc_shows_what_init_list_prints(cli):
    doc = (REPO / "docs" / "verbs" / "init.md").read_text(encoding="utf-8")
    shown = re.search(r"```\n\$ aigc init --list\n(.*?)```", doc, flags=re.S)
    assert shown, "docs/verbs/init.md shows the output of `aigc init --list` in a code block"
    assert shown.group(1) == cli("init", "--list").stdout, "paste the output of `aigc init --list` into docs/verbs/init.md"


# A time figure: "1 min 54 s", "52 s", "0.35 s", "about 2 minutes".
TIME = re.compile(r"\b\d+ min \d+ s\b|\b\d+(?:\.\d+)? s\b|\b\d+(?:\.\d+)? (?:min|minutes?)\b")


def doc_sentences(text: str) -> list[str]:
    """A Markdown text's sentences: a table row or a line of code is one; prose splits at sentence ends."""
    units, prose, fenced = [], [], False

    def flush():
        units.extend(re.split(r"(?<=[.!?])\s+(?=[A-Z`(*])", " ".join(prose)) if prose else [])
        prose.clear()

    for line in text.splitlines():
        if line.startswith("```") or fenced or line.lstrip().startswith("|"):
            flush()
            fenced ^= line.startswith("```")
            units.append(line)
            continue
        if not line.strip() or line.lstrip().startswith(("- ", "#")):
            flush()
        if line.strip():
            prose.append(line.strip())
    flush()
    return units


def test_every_starter_time_in_the_docs_is_its_templates():
    """A sentence of the docs that names starters may give only times from their templates' `# time:`
    lines (which is what `aigc init --list` prints); a template's other comments give none."""
    allowed = {}
    for name in TEMPLATES:
        lines = render_template(name, "starters").splitlines()
        time_line = next(line for line in lines if line.startswith("# time: "))
        allowed[name] = set(TIME.findall(time_line))
        assert allowed[name], f"{name}: the time line gives a time"
        assert not TIME.findall("\n".join(line for line in lines if line != time_line)), f"{name}: a time outside its `# time:` line"
    stray = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for sentence in doc_sentences(path.read_text(encoding="utf-8")):
            named = [n for n in TEMPLATES if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", sentence)]
            if named:
                stray += [f"{path.name}: {figure!r} in {sentence!r}" for figure in TIME.findall(sentence)
                          if figure not in set().union(*(allowed[n] for n in named))]
    assert not stray, "a starter's time in the docs differs from its template's `# time:` line:\n" + "\n".join(stray)


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


def test_readme_chat_starters_run(cli, tmp_path, monkeypatch):
    """The README's chat-starter block as written, in order, on a text-gpt base trained two steps:
    shrunk data and step counts, the real configs and commands (chat reads /quit from stdin)."""
    import shlex

    from typer.testing import CliRunner

    from aigc_cli.cli import app
    from tests.docs.test_readme import TINY

    block = re.search(r"<!-- chat starters[^>]*-->\n```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["init", "finetune", "generate", "eval", "init", "finetune", "chat"]
    monkeypatch.chdir(tmp_path)
    for command in (["init", "my-first", "--template", "text-gpt"], ["prep", "my-first/text-gpt.yaml"], ["train", "my-first/text-gpt.yaml"]):
        assert cli(*command, *TINY.get(command[0], [])).exit_code == 0
    keep = {"python-chat.jsonl": 24, "python-chat-val.jsonl": 4, "python-chat-val-prompts.jsonl": 4, "python-chat-val.ref.txt": 4,
            "python-prefs.jsonl": 24, "python-prefs-val.jsonl": 4}
    for command in commands:
        if command[1] == "chat":
            result = CliRunner().invoke(app, command[1:] + ["--max-new-tokens", "4"], input="what does len do?\n/quit\n")
        else:
            result = cli(*command[1:], *TINY.get(command[1], []))
        assert result.exit_code == 0, f"{' '.join(command)}\n{result.stderr}"
        for name, n in keep.items():  # shrink what init just wrote: a few records stand for thousands
            path = tmp_path / "my-first" / name
            if path.is_file() and len(path.read_text(encoding="utf-8").splitlines()) > n:
                path.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    sft, dpo = tmp_path / "runs" / "chat-sft", tmp_path / "runs" / "chat-dpo"
    replies = [json.loads(line) for line in (sft / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(replies) == 4 and all("messages" in r and "completion" in r for r in replies)
    assert {"chrf", "rougeL"} <= set(json.loads((sft / "eval" / "report.json").read_text())["metrics"])
    rows = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("val_rewards/accuracies" in r for r in rows) and any("rewards/margins" in r for r in rows)


@pytest.mark.parametrize("name, data_file", [("classify", "python-docstrings.jsonl"), ("ner", "python-tags.conll")])
def test_label_starters_run_end_to_end(cli, tmp_path, monkeypatch, name, data_file):
    """classify and ner: init writes their records, train reads them (no prep), eval scores the held-out ones."""
    monkeypatch.chdir(tmp_path)
    out = json_out(cli("init", "starters", "--template", name, "--json"))
    assert sorted(Path(p).name for p in out["written"]) == sorted([f"{name}.yaml", data_file])
    small = ["train.max_steps=4", "train.eval_every=4", "train.eval_batches=1", "model.n_layer=1", "model.n_embd=32"]
    json_out(cli("train", f"starters/{name}.yaml", *small, "--json"))
    report = json_out(cli("eval", f"starters/{name}.yaml", *small, "--json"))
    assert ("accuracy" if name == "classify" else "micro_f1") in report["metrics"]
    if name == "classify":
        assert len(report["labels"]) == 8

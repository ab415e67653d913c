"""The README's promises that a test can check: its config reference and its test command."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_matches_the_schema():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert module.readme_with_reference(text) == text, "run: python scripts/config_reference.py --write"
    from aigc_cli import config
    from aigc_cli.backends import BACKENDS

    sections = {cls for cls in vars(config).values() if isinstance(cls, type) and issubclass(cls, config.Section)} - {config.Section, config.ExperimentConfig}
    sections |= {entry.config for entry in BACKENDS.values() if entry.config}  # the model sections live in the registry
    assert sections == {cls for _, cls in module.SECTIONS}, "add the new config section to scripts/config_reference.py SECTIONS"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in readme and "\npython -m pytest -q\n" in ci


# ----------------------------------------------------------------------------- the quick start, run
# The README's quick-start blocks run as written, in order, in an empty folder; only step counts and
# lengths are shrunk by overrides appended per verb, so the test takes seconds, not minutes.
TINY_TRAIN = ["train.max_steps=2", "train.eval_every=1", "train.eval_batches=1", "train.batch_size=2", "train.sample_tokens=2"]
TINY = {"train": TINY_TRAIN, "finetune": TINY_TRAIN, "generate": ["generate.max_new_tokens=2", "generate.num_samples=1"],
        "eval": ["eval.max_batches=1", "eval.batch_size=2"]}


HELD_OUT = 6  # of the 200 held-out function summaries, as few steps stand for 600


def shrink_held_out_pairs(folder: Path, keep: int) -> None:
    for name in ("python-summaries-val.src.txt", "python-summaries-val.ref.txt"):
        lines = (folder / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:keep]), encoding="utf-8")


def quick_start_commands(readme: str) -> list[list[str]]:
    import re
    import shlex

    blocks = re.findall(r"<!-- quick start[^>]*-->\n```bash\n(.*?)```", readme, flags=re.S)
    return [shlex.split(line, comments=True) for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_quick_start_runs(cli, tmp_path, monkeypatch):
    commands = quick_start_commands((REPO / "README.md").read_text(encoding="utf-8"))
    verbs = [c[1] for c in commands]
    assert all(c[0] == "aigc" for c in commands)
    assert {"init", "prep", "train", "generate", "eval", "finetune", "runs", "info"} <= set(verbs)
    assert verbs.index("init") == 0, "the quick start starts from nothing"
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = cli(*command[1:], *TINY.get(command[1], []))
        assert result.exit_code == 0, f"{' '.join(command)}\n{result.stderr}"
        if command[1:4] == ["init", "my-first", "--template"] and command[4] == "finetune-lora":
            shrink_held_out_pairs(tmp_path / "my-first", keep=HELD_OUT)

    run = tmp_path / "runs" / "text-gpt"
    assert sorted(p.name for p in (run / "train_samples").iterdir()) == ["step-000000.txt", "step-000001.txt", "step-000002.txt"]
    assert (run / "loss.png").is_file() and list(run.glob("events.out.tfevents.*"))
    assert (run / "generations.jsonl").is_file() and (run / "eval" / "report.json").is_file()
    tuned = tmp_path / "runs" / "finetune-lora"
    assert (tuned / "checkpoints" / "latest").is_file()
    assert len((tuned / "generations.jsonl").read_text(encoding="utf-8").splitlines()) == HELD_OUT
    assert "chrf" in json.loads((tuned / "eval" / "report.json").read_text())["metrics"]
    listed = {r["name"]: r["status"] for r in json.loads(cli("runs", "--json").stdout)}
    assert listed == {"text-gpt": "finished", "finetune-lora": "finished"}

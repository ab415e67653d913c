"""`aigc init`: commented starter configs that run as they are, one per task.

The templates are YAML files shipped in the package (aigc_cli/templates/NAME.yaml). Their first
line is `# NAME: what it does`; the header lines after it, `# task: ...`, `# data: ...`, `# time: ...`
and `# measured: ...` (where and how the time was measured), are the table `aigc init --list`
prints, so a starter's time is written once, in its template. `__DIR__` in a template stands
for the folder it is written into, so the paths of files written beside it resolve from the
directory aigc runs in. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import json
import random
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from aigc_cli.runs.atomic_files import write_text_atomic
from aigc_cli.config import validate_config
from aigc_cli.errors import AigcError

DIR_MARK = "__DIR__"
FACTS = ("task", "data", "time", "measured")  # the header lines `aigc init --list` prints
VAL_PAIRS = 200  # held-out function summaries: enough for a stable chrF, quick to generate on a CPU


def template_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("aigc_cli").joinpath("templates").iterdir()
                  if p.name.endswith(".yaml"))


def template_text(name: str) -> str:
    names = template_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise AigcError(f"unknown template '{name}'", f"{hint}available: {', '.join(names)} (aigc init --list)")
    return resources.files("aigc_cli").joinpath("templates", f"{name}.yaml").read_text(encoding="utf-8")


def template_summary(name: str) -> str:
    first = template_text(name).splitlines()[0]
    return first.removeprefix("#").strip().removeprefix(f"{name}:").strip()


def template_facts(name: str) -> dict[str, str]:
    """The `# KEY: value` lines of the template's header, for KEY in FACTS ("" where one is missing)."""
    found = {}
    for line in template_text(name).splitlines()[1:]:
        if not line.startswith("#"):
            break
        key, sep, value = line.removeprefix("#").strip().partition(": ")
        if sep and key in FACTS:
            found[key] = value.strip()
    return {key: found.get(key, "") for key in FACTS}


def template_table(rows: list[dict]) -> list[str]:
    """`aigc init --list`: a header and one aligned line per template, then where its times were measured."""
    columns = {"name": "name", "task": "task", "data": "data", "time": "measured time"}
    widths = {key: max(len(title), *(len(row[key]) for row in rows)) for key, title in columns.items()}
    lines = ["  ".join(f"{row[key]:<{widths[key]}}" for key in columns).rstrip() for row in [columns, *rows]]
    measured: dict[str, list[str]] = {}
    for row in rows:
        measured.setdefault(row["measured"], []).append(row["name"])
    measured.pop("", None)
    for place, names in measured.items():
        whose = "" if len(measured) == 1 else f"of {', '.join(names)} "
        lines.append(f"times {whose}measured {place}")
    return lines + ["a CPU without native bf16 (no AVX512-BF16 or AMX) trains in fp32 and takes longer: README \"On a CPU without native bf16\""]


def render_template(name: str, directory: str | Path) -> str:
    """The template with its files' folder filled in ("." stays "./")."""
    return template_text(name).replace(DIR_MARK, Path(directory).as_posix())


def write_starter(name: str, directory: str | Path, force: bool = False) -> list[Path]:
    """Write NAME.yaml (and the data files its template needs) into `directory`; the written paths.

    Existing files are left alone unless `force`: a starter config is meant to be edited, and
    `aigc init` run twice must not throw those edits away."""
    directory = Path(directory)
    text = render_template(name, directory)
    validate_config(yaml.safe_load(text), source=f"template {name}")  # e.g. a folder name that breaks the YAML
    files = {directory / f"{name}.yaml": lambda: text}
    if name in STARTER_DATA:
        files.update(STARTER_DATA[name](directory))
    if directory.exists() and not directory.is_dir():
        raise AigcError(f"{directory} is a file, not a folder", "pass the folder to write the config into")
    existing = [str(path) for path in files if path.exists()]
    if existing and not force:
        raise AigcError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}",
                        "pass --force to overwrite, or choose another folder: aigc init DIR --template NAME")
    contents = {path: make() for path, make in files.items()}  # build everything before writing anything
    for path, content in contents.items():
        write_text_atomic(path, content)
    return list(contents)


def _function_summary_files(directory: Path) -> dict:
    """Prompt/response pairs for finetune-lora from the standard library's docstrings: training
    pairs as JSONL, and held-out functions and summaries as line-aligned text files (the same
    files serve `generate --prompts-file` and `eval.references`)."""
    cache: dict[str, list[dict]] = {}

    def split() -> tuple[list[dict], list[dict]]:
        if not cache:
            from aigc_cli.data.builtin_corpus import python_function_summaries

            pairs = python_function_summaries()
            order = list(range(len(pairs)))
            random.Random(0).shuffle(order)
            held_out = set(order[:VAL_PAIRS])
            cache["train"] = [p for i, p in enumerate(pairs) if i not in held_out]
            cache["val"] = [p for i, p in enumerate(pairs) if i in held_out]
        return cache["train"], cache["val"]

    return {
        directory / "python-summaries.jsonl": lambda: "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in split()[0]),
        directory / "python-summaries-val.src.txt": lambda: "".join(p["source"] + "\n" for p in split()[1]),
        directory / "python-summaries-val.ref.txt": lambda: "".join(p["target"] + "\n" for p in split()[1]),
    }


def _chat_files(directory: Path) -> dict:
    """Conversations about the standard library for chat-sft (`messages` rows), and the held-out
    conversations cut before their last answer, with those answers line by line (for
    `generate --prompts-file` and `eval.references`)."""
    from aigc_cli.data.builtin_chat import jsonl, python_chat

    def val():
        return python_chat("val")

    return {
        directory / "python-chat.jsonl": lambda: jsonl([c.row() for c in python_chat("train")]),
        directory / "python-chat-val.jsonl": lambda: jsonl([c.row() for c in val()]),
        directory / "python-chat-val-prompts.jsonl": lambda: jsonl([{"messages": c.messages[:-1]} for c in val()]),
        directory / "python-chat-val.ref.txt": lambda: "".join(c.messages[-1]["content"] + "\n" for c in val()),
    }


def _preference_files(directory: Path) -> dict:
    """Preference pairs for chat-dpo: {"prompt": messages, "chosen": str, "rejected": str}."""
    from aigc_cli.data.builtin_chat import jsonl, python_preferences

    return {
        directory / "python-prefs.jsonl": lambda: jsonl([p.row() for p in python_preferences("train")]),
        directory / "python-prefs-val.jsonl": lambda: jsonl([p.row() for p in python_preferences("val")]),
    }


def _docstring_label_files(directory: Path) -> dict:
    """classify: standard-library summary sentences labelled by their package (JSONL text/label)."""
    from aigc_cli.data.builtin_corpus import python_docstring_labels

    return {directory / "python-docstrings.jsonl": lambda: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in python_docstring_labels())}


def _comment_tag_files(directory: Path) -> dict:
    """ner: summary sentences, a word per line with its tag (CoNLL columns, a blank line between sentences)."""
    from aigc_cli.data.builtin_corpus import python_comment_tags

    return {directory / "python-tags.conll": lambda: "\n".join("".join(f"{w} {t}\n" for w, t in zip(words, tags))
                                                               for words, tags in python_comment_tags())}


# Templates whose data `aigc init` writes beside them: name -> {path: a function making its text}.
STARTER_DATA: dict[str, Callable[[Path], dict[Path, Callable[[], str]]]] = {
    "finetune-lora": _function_summary_files,
    "chat-sft": _chat_files,
    "chat-dpo": _preference_files,
    "classify": _docstring_label_files,
    "ner": _comment_tag_files,
}

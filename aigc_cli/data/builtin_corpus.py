"""Corpora that exist on every machine aigc runs on, so the quick start needs no download.

`python-docs`: the docstrings of the Python standard library that runs aigc (about 1.6 MB of
English technical prose for CPython 3.11). It is deterministic for a given Python version; the
prepared data records its SHA-256 like any other input.

`python_function_summaries`: prompt/response pairs from the same source — a public function's
name and parameters, and the first sentence of its docstring — which the finetune-lora starter
config (`aigc init --template finetune-lora`) fine-tunes on.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
_MIN_DOCSTRING_CHARS = 40  # one-liners like "Return self." teach little


def python_docs() -> Iterator[str]:
    """One document per standard-library module: its docstrings in source order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _SKIPPED_DIRS.intersection(p.relative_to(root).parts))
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # a broken or unreadable stdlib file is not the user's problem
        docs = [_docstring(node) for node in _in_source_order(tree)]
        docs = [d for d in docs if d and len(d) >= _MIN_DOCSTRING_CHARS]
        if docs:
            yield "\n\n".join(docs)


def _in_source_order(tree: ast.AST) -> Iterator[ast.AST]:
    yield tree
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _in_source_order(node)


def _docstring(node: ast.AST) -> str | None:
    return ast.get_docstring(node, clean=True) if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None


@functools.lru_cache(maxsize=2)  # parsing the standard library takes seconds; its content never changes in a process
def python_function_summaries(max_chars: int = 100) -> tuple[dict[str, str], ...]:
    """{"source": "json.dumps(obj, *, skipkeys=False, ...)", "target": "Serialize ``obj`` to ..."} for
    every public function and method of the standard library whose signature and summary sentence
    fit in `max_chars` together, sorted by signature (deterministic for a Python version)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*.py") if not _SKIPPED_DIRS.intersection(p.relative_to(root).parts)):
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not parts or any(part.startswith("_") for part in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for name, summary in _summaries(tree.body, ".".join(parts)):
            if len(name) + len(summary) <= max_chars:
                pairs.setdefault(name, summary)
    return tuple({"source": name, "target": pairs[name]} for name in sorted(pairs))


def _summaries(body: list[ast.stmt], prefix: str, in_class: bool = False) -> Iterator[tuple[str, str]]:
    for node in body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        if isinstance(node, ast.ClassDef):
            yield from _summaries(node.body, f"{prefix}.{node.name}", in_class=True)
            continue
        summary = _first_sentence(ast.get_docstring(node, clean=True) or "")
        # A summary that restates the signature ("fromfd(fd, family) -> socket") teaches nothing.
        if len(summary) >= 20 and not summary.startswith(node.name):
            yield f"{prefix}.{node.name}({_parameters(node.args, in_class)})", summary


def _parameters(params: ast.arguments, method: bool) -> str:
    """The parameter list as written, without a method's self or cls (the tree is ours to change)."""
    positional = params.posonlyargs or params.args
    if method and positional and positional[0].arg in ("self", "cls"):
        positional.pop(0)
    return ast.unparse(params)


def _first_sentence(docstring: str) -> str:
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


# The largest standard-library packages by summarised functions (tkinter's 365 to http's 48): eight labels.
CLASSIFY_MODULES = ("tkinter", "asyncio", "logging", "turtle", "mailbox", "xml", "email", "http")


def python_docstring_labels() -> list[dict[str, str]]:
    """{"text": a function's summary sentence, "label": the package it is from} for the functions of
    CLASSIFY_MODULES: a classification task every machine with Python has (the name is left out)."""
    rows = []
    for pair in python_function_summaries():
        package = pair["source"].split(".")[0]
        if package in CLASSIFY_MODULES:
            rows.append({"text": pair["target"], "label": package})
    return rows


def _word_tag(word: str) -> str:
    import keyword

    bare = word.strip(".,;:()[]{}'\"`")
    if not bare:
        return "O"
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", bare):
        return "B-NUM"
    if bare in ("None", "True", "False") or (keyword.iskeyword(bare) and "`" in word):  # prose "if"/"and" are words
        return "B-KW"
    if "_" in bare or "(" in word or "`" in word or re.fullmatch(r"[a-z]+[A-Z]\w*|\w+\.\w+", bare):
        return "B-ID"
    return "O"


def _split_punctuation(word: str) -> list[str]:
    """CoNLL-style tokens of a word: opening brackets and quotes, then the word, then closing
    punctuation, each its own token ("(1)." → "(", "1", ")", "."); a call's "()" and `backticks` stay
    on the word. A tagger reads a word's first sub-token, so "(1)" would otherwise look like "(the"."""
    lead = re.match(r"[(\[{\"']*", word).group()
    rest = word[len(lead):]
    tail = ""
    while rest and (rest[-1] in ".,;:!?\"'" or (rest[-1] in ")]}" and "(" not in rest and "[" not in rest and "{" not in rest)):
        tail, rest = rest[-1] + tail, rest[:-1]
    return [*lead, *([rest] if rest else []), *tail]


def python_comment_tags() -> list[tuple[list[str], list[str]]]:
    """(tokens, tags) of every standard-library summary sentence, punctuation split off the words
    (_split_punctuation): identifiers (B-ID: snake_case, camelCase, dotted names, calls, `quoted`
    names), numbers (B-NUM) and Python constants and quoted keywords (B-KW), by rule."""
    out = []
    for summary in python_function_summaries():
        tokens = [t for w in summary["target"].split() for t in _split_punctuation(w)]
        out.append((tokens, [_word_tag(t) for t in tokens]))
    return out


BUILTIN_CORPORA: dict[str, Callable[[], Iterator[str]]] = {"python-docs": python_docs}

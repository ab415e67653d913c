"""Every `error: …` line in the docs is one the program can print.

The docs quote error messages so a reader can search for what they saw. A quote drifts when a
message changes; this test reads every AigcError(message, hint) in the package, turns its
f-strings into patterns (each `{…}` matches any text) and requires each documented line to match
one of them, message and hint alike.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _pattern(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(part.value) if isinstance(part, ast.Constant) else ".*" for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _pattern(node.left), _pattern(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.IfExp):
        options = [_pattern(node.body), _pattern(node.orelse)]
        return None if None in options else "(?:" + "|".join(options) + ")"
    return ".*"  # a name or call: any text


@functools.cache
def program_messages() -> list[re.Pattern]:
    patterns = []
    for path in (REPO / "aigc_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("AigcError", "Interrupted"):
                parts = [_pattern(arg) for arg in node.args[:2]]
                literal = len(re.sub(r"\.\*|\\", "", parts[0] or "")) if parts else 0
                if parts and parts[0] is not None and literal >= 10:  # f"{exc}" alone would match anything
                    text = parts[0] + (r"(?: — " + parts[1] + ")?" if len(parts) > 1 and parts[1] else "")
                    patterns.append(re.compile(text, re.S))
    return patterns


def documented_errors() -> list[tuple[str, str]]:
    """The quoted error lines: `error: …` lines in code blocks, and whole `error: …` spans in inline code."""
    found = []
    for doc in DOCS:
        in_block = False
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            quotes = [line.strip()] if in_block and line.strip().startswith("error: ") else re.findall(r"`(error: [^`]+)`", line)
            for quote in quotes:
                text = re.sub(r"\s+\(exit \d+\)$", "", quote.removeprefix("error: ").strip())
                # Config errors are built from pydantic's (tests/cli/test_help_and_error_text.py checks them); "…" marks a shortened quote.
                # Gate failures are printed by cli.py itself; "WHAT — HOW TO FIX" describes the form.
                skip = re.match(r"\S+\.yaml: |quality gate failed: |[A-Z ]+ — [A-Z ]+$", text) or text.endswith(("...", "…"))
                if not skip:
                    found.append((doc.relative_to(REPO).as_posix(), text))
    return found


ERRORS = documented_errors()


def test_the_docs_quote_errors():
    assert len(ERRORS) >= 20  # the parser still finds the quotes


@pytest.mark.parametrize("doc, text", ERRORS, ids=[f"{d}:{t[:40]}" for d, t in ERRORS])
def test_documented_error_is_one_the_program_prints(doc, text):
    patterns = program_messages()
    assert any(p.fullmatch(text) for p in patterns), f"{doc} quotes an error aigc does not print: {text!r}"

"""Corpora that exist on every machine aigc runs on, so the quick start needs no download.

`python-docs`: the docstrings of the Python standard library that runs aigc (about 1.6 MB of
English technical prose for CPython 3.11). It is deterministic for a given Python version; the
prepared data records its SHA-256 like any other input.
"""

from __future__ import annotations

import ast
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


BUILTIN_CORPORA: dict[str, Callable[[], Iterator[str]]] = {"python-docs": python_docs}

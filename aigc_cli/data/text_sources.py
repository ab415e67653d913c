"""Reading text sources as a stream of cleaned chunks, hashing every input as it is read.

A source is a .txt file, a directory of .txt files, a JSONL file with a text field, or the
built-in `python-docs` corpus. Nothing here holds a whole corpus in memory: text is read line by
line and handed on in chunks of at most CHUNK_LINES lines.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from aigc_cli.config import CleaningConfig, DataConfig
from aigc_cli.data.records import not_null, read_jsonl, read_lines
from aigc_cli.errors import AigcError

CHUNK_LINES = 64  # the unit of the random train/val split inside one long document
BUILTIN_PREFIX = "builtin:"
_HTML_TAG = re.compile(r"<[^>\n]{0,2000}>")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")


@dataclass
class Chunk:
    text: str
    ends_document: bool


@dataclass
class SourceStats:
    """Filled in while a source is read: what went in and what cleaning removed."""

    inputs: list[dict] = field(default_factory=list)  # {"path", "bytes", "sha256"}
    documents: int = 0
    lines: int = 0
    duplicate_lines_dropped: int = 0
    blank: bool = True  # nothing but whitespace so far (a corpus empty after cleaning is an error)


class LineCleaner:
    def __init__(self, cfg: CleaningConfig):
        self.cfg = cfg
        self.seen: set[bytes] = set()
        self.dropped = 0

    def __call__(self, line: str) -> str | None:
        """The cleaned line without its newline, or None when it is an exact duplicate."""
        cfg = self.cfg
        if cfg.strip_html:
            line = html.unescape(_HTML_TAG.sub("", line))
        if cfg.unicode != "none":
            line = unicodedata.normalize(cfg.unicode, line)
        if cfg.whitespace:
            line = _SPACES.sub(" ", line).strip()
        if cfg.dedupe_lines and line.strip():
            key = hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest()
            if key in self.seen:
                self.dropped += 1
                return None
            self.seen.add(key)
        return line


def list_input_files(cfg: DataConfig) -> list[Path]:
    """The files a source names, in a fixed order; raises a clear error when there are none."""
    path = Path(cfg.source)
    if not path.exists():
        raise AigcError(f"data.source not found: {cfg.source}", "point data.source at a .txt/.jsonl file, a directory of .txt files, or builtin:python-docs")
    if path.is_dir():
        suffixes = {".jsonl", ".json"} if cfg.format == "jsonl" else {".txt"}
        # Regular files only: a named pipe or device among them would block or never end.
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise AigcError(f"no {'/'.join(sorted(suffixes))} files under {cfg.source}", "put text files there or point data.source at a file")
        return files
    if not path.is_file():
        raise AigcError(f"data.source {cfg.source} is not a regular file (a pipe or device would block or never end)",
                        "point data.source at a file or a directory of files")
    return [path]


def source_format(cfg: DataConfig, path: Path) -> str:
    if cfg.format != "auto":
        return cfg.format
    return "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "text"


def iter_chunks(cfg: DataConfig, stats: SourceStats) -> Iterator[Chunk]:
    """Cleaned chunks of the whole source, in order. `stats` is filled in as a side effect."""
    for chunk in _source_chunks(cfg, stats):
        stats.blank = stats.blank and not chunk.text.strip()
        yield chunk


def _source_chunks(cfg: DataConfig, stats: SourceStats) -> Iterator[Chunk]:
    cleaner = LineCleaner(cfg.cleaning)
    if cfg.source.startswith(BUILTIN_PREFIX):
        yield from _builtin_chunks(cfg.source[len(BUILTIN_PREFIX):], cleaner, stats)
    else:
        for path in list_input_files(cfg):
            digest = hashlib.sha256()  # of the file's bytes, fed as they are read
            if source_format(cfg, path) == "jsonl":
                yield from _jsonl_chunks(read_jsonl(path, "fix that line; each line must be one JSON object", digest=digest), cfg.jsonl_field, cleaner, stats)
            else:
                yield from _text_chunks(read_lines(path, keep_ends=True, digest=digest), cleaner, stats)
            stats.inputs.append({"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()})
    stats.duplicate_lines_dropped = cleaner.dropped


def _text_chunks(lines, cleaner: LineCleaner, stats: SourceStats) -> Iterator[Chunk]:
    buffer: list[str] = []
    for _, line in lines:
        stats.lines += 1
        ending = "\n" if line.endswith("\n") else ""
        cleaned = cleaner(line.rstrip("\r\n"))
        if cleaned is None:
            continue
        buffer.append(cleaned + ending)
        if len(buffer) >= CHUNK_LINES:
            yield Chunk("".join(buffer), ends_document=False)
            buffer = []
    stats.documents += 1
    yield Chunk("".join(buffer), ends_document=True)


def _jsonl_chunks(records, field_name: str, cleaner: LineCleaner, stats: SourceStats) -> Iterator[Chunk]:
    for where, record in records:
        if field_name not in record:
            raise AigcError(f"{where}: no field '{field_name}' in this record", "set data.jsonl_field to the field that holds the text")
        value = not_null(record[field_name], where, field_name)
        if not isinstance(value, str):
            raise AigcError(f"{where}: field '{field_name}' is {type(value).__name__}, not text", "the text field must hold a string")
        kept = [c for c in (cleaner(part) for part in value.split("\n")) if c is not None]
        stats.lines += 1
        stats.documents += 1
        yield Chunk("\n".join(kept), ends_document=True)


def _builtin_chunks(name: str, cleaner: LineCleaner, stats: SourceStats) -> Iterator[Chunk]:
    from aigc_cli.data.builtin_corpus import BUILTIN_CORPORA

    if name not in BUILTIN_CORPORA:
        raise AigcError(f"unknown built-in corpus '{name}'", f"available: {', '.join('builtin:' + n for n in BUILTIN_CORPORA)}")
    digest = hashlib.sha256()
    size = 0
    for document in BUILTIN_CORPORA[name]():
        raw = document.encode("utf-8")
        digest.update(raw)
        size += len(raw)
        kept = [c for c in (cleaner(line) for line in document.split("\n")) if c is not None]
        stats.lines += len(kept)
        stats.documents += 1
        for start in range(0, len(kept), CHUNK_LINES):
            last = start + CHUNK_LINES >= len(kept)
            yield Chunk("\n".join(kept[start:start + CHUNK_LINES]) + ("" if last else "\n"), ends_document=last)
    stats.inputs.append({"path": f"builtin:{name}", "bytes": size, "sha256": digest.hexdigest()})

"""Reading the files aigc is handed or writes as logs: numbered lines, JSONL records, file hashes.

One reader for every input, so that every input behaves the same:
- a name ending in .gz is read through gzip;
- lines split at "\\n" and lose their "\\r\\n"; a UTF-8 byte-order mark at the start is dropped;
- every error names FILE:LINE: (bad UTF-8, malformed JSON, a line that is not a JSON object,
  a `null` where text is needed) and exits 2, as an AigcError;
- files are streamed line by line, never held whole.
Append-only logs (metrics.jsonl, generation manifests) are read by `log_records`, which skips the
torn last line a killed run leaves. Nothing here imports torch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from aigc_cli.errors import AigcError

BOM = "\ufeff"


def open_input(path: str | Path) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in .gz."""
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def is_jsonl(path: str | Path) -> bool:
    """JSONL by name: .jsonl or .json, before an optional .gz."""
    return str(path).lower().removesuffix(".gz").endswith((".jsonl", ".json"))


def read_lines(path: str | Path, keep_ends: bool = False, digest=None) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, "\\r\\n" removed unless `keep_ends`. `digest` (a hashlib
    object) is fed every line's bytes before decoding (after decompression), so an input is hashed
    in the same pass that reads it."""
    try:
        with open_input(path) as handle:
            for number, raw in enumerate(handle, start=1):
                if digest is not None:
                    digest.update(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise AigcError(f"{path}:{number}: not valid UTF-8", "convert the file to UTF-8 (e.g. iconv -t utf-8)") from None
                if number == 1:
                    line = line.removeprefix(BOM)  # written by some editors; not part of the text
                yield number, line if keep_ends else line.rstrip("\r\n")
    except PermissionError:
        raise AigcError(f"cannot read {path}: permission denied", "fix the file's permissions") from None
    except IsADirectoryError:
        raise AigcError(f"{path} is a directory, not a file", "pass the path of a file") from None
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or damaged .gz, an I/O error
        raise AigcError(f"cannot read {path}: {exc}", "check that the file is intact") from None


def read_jsonl(path: str | Path, hint: str, objects_only: bool = True, digest=None) -> Iterator[tuple[str, Any]]:
    """("FILE:LINE", record) for every non-blank line. `hint` says how to fix a malformed line;
    with `objects_only` a line holding anything but a JSON object is an error too. `digest` as
    for read_lines."""
    for number, line in read_lines(path, digest=digest):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AigcError(f"{where}: malformed JSON ({exc.msg})", hint) from None
        if objects_only and not isinstance(record, dict):
            raise AigcError(f"{where}: expected a JSON object, got {type(record).__name__}", hint)
        yield where, record


def not_null(value: Any, where: str, field: str) -> Any:
    """`value`, unless it is JSON's null: that is an error, never the text "None"."""
    if value is None:
        raise AigcError(f"{where}: field '{field}' is null", f"give '{field}' a value, or leave the field out")
    return value


def text_fields(record: dict, where: str) -> dict[str, str]:
    """A JSONL record's fields as text, for filling a template (numbers as written: 1, 0.5, true → True)."""
    return {key: str(not_null(value, where, key)) for key, value in record.items()}


def log_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(line, record) for every whole JSON-object line of an append-only log. The line a killed run
    (or a full disk) left half-written, or anything else that is not a JSON object on one UTF-8
    line, is skipped. A missing file has no records."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
                record = json.loads(line)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
                continue
            if isinstance(record, dict):
                yield line, record


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

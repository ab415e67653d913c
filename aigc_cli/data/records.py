"""Reading the files aigc is handed or writes as logs: numbered lines, JSONL records, file hashes.

One reader for every input, so that every input behaves the same:
- a name ending in .gz is read through gzip;
- lines split at "\\n" and lose their "\\r\\n"; a UTF-8 byte-order mark at the start is dropped;
- every error names FILE:LINE: (bad UTF-8, malformed JSON, a line that is not a JSON object,
  a `null` where text is needed) and exits 2, as an AigcError;
- files are streamed line by line, never held whole.
Append-only logs (metrics.jsonl, generation manifests) are read by `log_records`, which skips the
torn last line a killed run leaves. Nothing here imports torch.

Records (one dict per example) come from any tabular file through `read_records`: JSONL by the
reader above (line-accurate errors), a JSON array by the standard library (no schema to infer,
so one odd row is that row's error), and CSV/TSV, Parquet, Arrow and `datasets.save_to_disk`
directories through the `datasets` library, streamed. Records are named "FILE:N" for errors: N
is the line in JSONL and CSV/TSV (the header is line 1), the record's number (from 1) in the others.
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


# ----------------------------------------------------------------------------- records of any table
RECORD_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
                  ".arrow": "arrow", ".feather": "arrow"}
RECORD_FILES = "JSONL, JSON, CSV, TSV, Parquet or Arrow file (.jsonl .json .csv .tsv .parquet .arrow) or a `datasets.save_to_disk` directory"


def record_format(path: str | Path) -> str:
    """jsonl, json, csv, tsv, parquet, arrow or disk (a save_to_disk directory), by name and kind
    (names without a known suffix are JSONL); a missing path, a directory that is no save_to_disk
    directory or anything but a regular file is an error."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
            example = "train" if "train" in splits or not splits else splits[0]
            raise AigcError(f"{path} holds a DatasetDict (splits: {', '.join(splits) or 'none'}), not one table",
                            f"pass one split's directory, e.g. {path / example}")
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            return "disk"
        raise AigcError(f"{path} is a directory, not a data file or a `datasets.save_to_disk` directory", f"pass a {RECORD_FILES}")
    if not path.exists():
        raise AigcError(f"file not found: {path}", "check the path in the config")
    if not path.is_file():
        raise AigcError(f"{path} is not a regular file", f"pass a {RECORD_FILES}")
    kind = RECORD_FORMATS.get(("".join(path.suffixes[-2:-1]) if path.suffix == ".gz" else path.suffix).lower(), "jsonl")
    if path.suffix == ".gz" and kind not in ("jsonl", "json", "csv", "tsv"):
        raise AigcError(f"{path}: a compressed {kind} file", f"pass the {kind} file uncompressed (it compresses itself)")
    return kind  # any other name is read as JSONL, as it always was


def read_records(path: str | Path, hint: str = "fix that record") -> Iterator[tuple[str, dict]]:
    """("FILE:N", record) for every record of a table file (see the module docstring), streamed.
    `hint` says how to fix a malformed JSONL line."""
    kind = record_format(path)
    if kind == "jsonl":
        yield from read_jsonl(path, hint)
    elif kind == "json":
        yield from _json_records(path, hint)
    else:
        yield from _datasets_records(Path(path), kind)


def _json_records(path: str | Path, hint: str) -> Iterator[tuple[str, dict]]:
    with open_input(path) as handle:
        head = handle.read(4096).decode("utf-8", errors="replace").lstrip(BOM + " \t\r\n")
    if not head.startswith("["):  # JSON Lines under a .json name (or one object): line by line
        yield from read_jsonl(path, hint)
        return
    try:
        with open_input(path) as handle:
            rows = json.loads(handle.read().decode("utf-8").removeprefix(BOM))
    except UnicodeDecodeError:
        raise AigcError(f"{path}: not valid UTF-8", "convert the file to UTF-8 (e.g. iconv -t utf-8)") from None
    except json.JSONDecodeError as exc:
        raise AigcError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})", "fix the JSON array, or write one record per line as JSONL") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise AigcError(f"cannot read {path}: {exc}", "check that the file is intact") from None
    for number, record in enumerate(rows, start=1):
        if not isinstance(record, dict):
            raise AigcError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}", "make every element of the array an object")
        yield f"{path}:{number}", record


def _datasets_records(path: Path, kind: str) -> Iterator[tuple[str, dict]]:
    import logging

    import datasets

    datasets.utils.logging.set_verbosity(logging.CRITICAL)  # it logs the failures it also raises
    datasets.disable_progress_bars()
    first_line = 2 if kind in ("csv", "tsv") else 1  # CSV: the line number (line 1 is the header)
    what = {"disk": "a datasets directory", "csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "arrow": "Arrow"}[kind]
    try:
        if kind == "disk":
            table = datasets.load_from_disk(str(path))
        else:
            options = _csv_options(path, kind) if kind in ("csv", "tsv") else {}
            table = datasets.load_dataset("csv" if kind == "tsv" else kind, data_files=str(path), split="train", streaming=True, **options)
        for number, record in enumerate(table, start=first_line):
            yield f"{path}:{number}", record
    except AigcError:
        raise
    except PermissionError:
        raise AigcError(f"cannot read {path}: permission denied", "fix the file's permissions") from None
    except Exception as exc:  # noqa: BLE001 — pyarrow, pandas and datasets each raise their own types for a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot read {path} as {what}: {first}", "check that the file is intact and of the type its name says") from None


def _csv_options(path: Path, kind: str) -> dict:
    """Every column as text, an empty cell as "" (pandas would read numbers and NaN)."""
    import csv

    import datasets

    sep = "\t" if kind == "tsv" else ","
    with open_input(path) as handle:
        header = handle.readline().decode("utf-8", errors="replace").removeprefix(BOM)
    names = next(csv.reader([header], delimiter=sep), [])
    if not names:
        raise AigcError(f"{path}:1: no header line", f"start the {kind.upper()} file with a line of column names")
    features = datasets.Features({name: datasets.Value("string") for name in names})
    return {"sep": sep, "features": features, "keep_default_na": False}

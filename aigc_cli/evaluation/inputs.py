"""Predictions and references for `aigc eval`, read as streams and paired item by item.

A file is JSONL when its name ends in .jsonl or .json (before an optional .gz), else plain text
with one item per line. Items pair up by `id` when both sides' rows carry one, else by position.
Nothing here holds a whole file: memory stays flat in the number of items, except when ids come
in a different order on the two sides (the rows read ahead are kept until their id is asked for).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from aigc_cli.data.records import is_jsonl, not_null, read_jsonl, read_lines
from aigc_cli.errors import AigcError

ID_FIELD = "id"


@dataclass
class Row:
    texts: list[str]  # one prediction, or the references of one item
    key: str | None  # the row's id, if it has one
    where: str  # "path:line", for messages


@dataclass
class Item:
    prediction: str
    references: list[str]
    where: str


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"{what} file not found: {path}", f"check the path given for the {what}")
    return path


def _as_texts(value, where: str, field: str) -> list[str]:
    if isinstance(not_null(value, where, field), str):
        return [value]
    if isinstance(value, (int, float, bool)):  # labels such as 1 / 0
        return [str(value)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise AigcError(f"{where}: field '{field}' holds {type(value).__name__}, not text", "give a string (or, for references, a list of strings)")


def read_rows(path: str | Path, field: str, what: str, skip_later_samples: bool = False) -> Iterator[Row]:
    """Rows of a JSONL file (texts from `field`) or of a text file (one row per line)."""
    _existing(path, what)
    if not is_jsonl(path):
        for number, line in read_lines(path):
            yield Row([line], None, f"{path}:{number}")
        return
    for where, record in read_jsonl(path, f"fix that line; each line of the {what} must be one JSON object"):
        if skip_later_samples and record.get("sample", 0) != 0:
            continue  # `aigc generate --num N` writes N samples per input; the first one is scored
        if field not in record:
            option = "--predictions-field (eval.predictions_field)" if what == "predictions" else "--references-field (eval.references_field)"
            raise AigcError(f"{where}: no field '{field}' in the {what}", f"set {option} to the field that holds the text")
        key = record.get(ID_FIELD)
        yield Row(_as_texts(record[field], where, field), None if key is None else str(key), where)


def _peek(rows: Iterator[Row]) -> tuple[Row | None, Iterator[Row]]:
    first = next(rows, None)
    return first, (rows if first is None else itertools.chain([first], rows))


def _require_key(row: Row) -> str:
    if row.key is None:
        raise AigcError(f"{row.where}: no '{ID_FIELD}' (the first row has one, so items are paired by id)",
                        f"give every row an '{ID_FIELD}', or none to pair items by line")
    return row.key


class _ById:
    """References looked up by id: read ahead until the id turns up, keeping what was passed over."""

    def __init__(self, rows: Iterator[Row], path: str):
        self.rows, self.path, self.waiting = rows, path, {}

    def take(self, key: str, prediction: Row) -> Row:
        if key in self.waiting:
            return self.waiting.pop(key)
        for row in self.rows:
            row_key = _require_key(row)
            if row_key == key:
                return row
            if row_key in self.waiting:
                raise AigcError(f"{row.where}: id {row_key!r} appears twice", "give every reference row its own id")
            self.waiting[row_key] = row
        raise AigcError(f"{prediction.where}: id {key!r} has no reference in {self.path}", "score predictions and references of the same items")

    def finish(self) -> None:
        left = next(iter(self.waiting.values()), None) or next(self.rows, None)
        if left is not None:
            raise AigcError(f"{left.where}: reference id {left.key!r} has no prediction", "score predictions and references of the same items")


class _ByLine:
    def __init__(self, rows: Iterator[Row], path: str):
        self.rows, self.path, self.count = rows, path, 0

    def take(self, key, prediction: Row) -> Row:
        row = next(self.rows, None)
        if row is None:
            raise AigcError(f"{self.path} has {self.count} items but the predictions go on: {prediction.where} has no reference",
                            "give one reference per prediction, in the same order (or pair them by 'id')")
        self.count += 1
        return row

    def finish(self) -> None:
        left = next(self.rows, None)
        if left is not None:
            raise AigcError(f"{self.path} has more items than the predictions ({self.count}): {left.where} has no prediction",
                            "give one reference per prediction, in the same order (or pair them by 'id')")


def read_items(predictions: str | Path, references: list[str], predictions_field: str = "completion",
               references_field: str = "reference") -> Iterator[Item]:
    """Prediction + references per item, paired by id when both sides carry ids, else by line."""
    first, pred_rows = _peek(read_rows(predictions, predictions_field, "predictions", skip_later_samples=True))
    if first is None:
        raise AigcError(f"{predictions} holds no predictions", "pass the file written by `aigc generate`, or one item per line")
    sources = []
    for path in references:
        ref_first, rows = _peek(read_rows(path, references_field, "references"))
        by_id = first.key is not None and ref_first is not None and ref_first.key is not None
        sources.append(_ById(rows, path) if by_id else _ByLine(rows, path))
    for row in pred_rows:
        key = _require_key(row) if any(isinstance(s, _ById) for s in sources) else row.key
        refs = [text for source in sources for text in source.take(key, row).texts]
        yield Item(row.texts[0], refs, row.where)
    for source in sources:
        source.finish()

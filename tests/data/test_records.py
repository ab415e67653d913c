"""aigc_cli.data.records: the one reader of lines, JSONL records and append-only logs, and file hashing."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from aigc_cli.data.records import is_jsonl, log_records, not_null, read_jsonl, read_lines, sha256_file, text_fields
from aigc_cli.errors import AigcError

BOM = "\ufeff".encode("utf-8")


def test_lines_are_numbered_without_their_endings(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\ntwo\n\nlast")
    assert list(read_lines(path)) == [(1, "one"), (2, "two"), (3, ""), (4, "last")]
    assert [line for _, line in read_lines(path, keep_ends=True)] == ["one\r\n", "two\n", "\n", "last"]


def test_a_byte_order_mark_is_dropped_from_text_and_jsonl_but_hashed(tmp_path):
    text, jsonl = tmp_path / "a.txt", tmp_path / "a.jsonl"
    text.write_bytes(BOM + b"hello\nworld\n")
    jsonl.write_bytes(BOM + b'{"text": "hi"}\n')
    digest = hashlib.sha256()
    assert list(read_lines(text, digest=digest)) == [(1, "hello"), (2, "world")]
    assert digest.hexdigest() == hashlib.sha256(text.read_bytes()).hexdigest()  # the file as it is, mark included
    assert list(read_jsonl(jsonl, "hint")) == [(f"{jsonl}:1", {"text": "hi"})]


def test_only_a_leading_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"a\n" + BOM + b"b\n")
    assert [line for _, line in read_lines(path)] == ["a", "\ufeffb"]


def test_gzip_is_read_by_name(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(BOM + b'{"text": "x"}\n\n{"text": "y"}\n')
    assert is_jsonl(path) and not is_jsonl(tmp_path / "a.txt.gz")
    assert [record["text"] for _, record in read_jsonl(path, "hint")] == ["x", "y"]
    assert [where for where, _ in read_jsonl(path, "hint")] == [f"{path}:1", f"{path}:3"]  # blank lines keep their numbers


def test_a_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(b"line\n" * 1000)[:40])
    with pytest.raises(AigcError, match=f"cannot read {path}"):
        list(read_lines(path))


@pytest.mark.parametrize("content, message", [
    (b'{"a": 1}\n{oops\n', ":2: malformed JSON"),
    (b'{"a": 1}\n[1, 2]\n', ":2: expected a JSON object, got list"),
    (b'{"a": 1}\n"text"\n', ":2: expected a JSON object, got str"),
    (b'{"a": 1}\n{"b": "\xff"}\n', ":2: not valid UTF-8"),
])
def test_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(AigcError, match=f"^{path}{message}") as caught:
        list(read_jsonl(path, "fix that line"))
    assert caught.value.exit_code == 2
    if "JSON" in message:
        assert caught.value.hint == "fix that line"


def test_values_other_than_objects_may_be_allowed(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('"a prompt"\n{"prompt": "b"}\n', encoding="utf-8")
    assert [record for _, record in read_jsonl(path, "hint", objects_only=False)] == ["a prompt", {"prompt": "b"}]


def test_null_is_rejected_not_turned_into_none(tmp_path):
    with pytest.raises(AigcError, match="^f.jsonl:3: field 'target' is null$") as caught:
        text_fields({"source": "a", "target": None}, "f.jsonl:3")
    assert caught.value.exit_code == 2
    assert text_fields({"source": "a", "label": 1, "ok": True}, "f:1") == {"source": "a", "label": "1", "ok": "True"}
    assert not_null("", "f:1", "x") == ""


def test_logs_skip_the_torn_last_line_and_other_non_objects(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "train_loss": 2.5}, {"step": 2, "val_loss": float("nan")}]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"[1]\n\xff\xfe\n" + b'{"step": 3, "tra')
    read = list(log_records(path))
    assert [line for line, _ in read] == [json.dumps(r) for r in rows]  # as written, for rewriting them verbatim
    assert read[0][1] == rows[0] and read[1][1]["step"] == 2
    assert list(log_records(tmp_path / "missing.jsonl")) == []


def test_sha256_of_a_file(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- read_records: every table format
ROWS = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "n": 1},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "n": 2}]


def _written(tmp_path, kind: str):
    """ROWS saved as `kind` by the datasets library (or by hand for the JSON ones)."""
    import datasets

    table = datasets.Dataset.from_list(ROWS)
    path = tmp_path / {"disk": "saved", "arrow": "rows.arrow"}.get(kind, f"rows.{kind}")
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps(ROWS, indent=1), encoding="utf-8")
    elif kind == "parquet":
        table.to_parquet(str(path))
    elif kind == "disk":
        table.save_to_disk(str(path))
    elif kind == "arrow":
        import pyarrow.feather

        pyarrow.feather.write_feather(table.data.table, str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "arrow", "disk"])
def test_every_table_format_gives_the_same_records_numbered(tmp_path, kind):
    from aigc_cli.data.records import read_records

    path = _written(tmp_path, kind)
    read = list(read_records(path))
    assert [record for _, record in read] == ROWS
    assert [where for where, _ in read] == [f"{path}:1", f"{path}:2"]


def test_csv_cells_are_text_and_rows_are_numbered_as_lines(tmp_path):
    from aigc_cli.data.records import read_records

    path = tmp_path / "pairs.csv"
    path.write_bytes(BOM + b'source,target\n1,\n"two\nlines",2.50\n')
    read = list(read_records(path))
    # Numbers stay as written and an empty cell is "", not NaN; line 1 is the header.
    assert read == [(f"{path}:2", {"source": "1", "target": ""}), (f"{path}:3", {"source": "two\nlines", "target": "2.50"})]
    tsv = tmp_path / "pairs.tsv.gz"
    tsv.write_bytes(gzip.compress(b"source\ttarget\na\tb\n"))
    assert [r for _, r in read_records(tsv)] == [{"source": "a", "target": "b"}]


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing.parquet", "file not found: {t}/missing.parquet"),
    (lambda t: t, "{t} is a directory, not a data file or a `datasets.save_to_disk` directory"),
    (lambda t: __import__("pathlib").Path("/dev/null"), "/dev/null is not a regular file"),
    (lambda t: (t / "bad.parquet", (t / "bad.parquet").write_bytes(b"not parquet" * 10))[0], "cannot read {t}/bad.parquet as Parquet:"),
    (lambda t: (t / "bad.csv", (t / "bad.csv").write_text('a,b\n"never closed\n'))[0], "cannot read {t}/bad.csv as CSV:"),
    (lambda t: (t / "a.json", (t / "a.json").write_text('[{"a": 1},\n {"a": 2'))[0], "{t}/a.json:2: malformed JSON"),
    (lambda t: (t / "a.json", (t / "a.json").write_text('[{"a": 1}, 7]'))[0], "{t}/a.json:2: expected a JSON object, got int"),
    (lambda t: (t / "x.parquet.gz", (t / "x.parquet.gz").write_bytes(b""))[0], "{t}/x.parquet.gz: a compressed parquet file"),
])
def test_unreadable_tables_are_one_clear_error(tmp_path, make, message):
    from aigc_cli.data.records import read_records

    with pytest.raises(AigcError) as caught:
        list(read_records(make(tmp_path)))
    assert caught.value.exit_code == 2 and caught.value.message.startswith(message.format(t=tmp_path)), caught.value.message


def test_a_dataset_dict_directory_names_its_splits(tmp_path):
    import datasets

    from aigc_cli.data.records import read_records

    table = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(AigcError, match=r"holds a DatasetDict \(splits: test, train\)") as caught:
        list(read_records(tmp_path / "dd"))
    assert caught.value.hint == f"pass one split's directory, e.g. {tmp_path / 'dd' / 'train'}"
    assert [r for _, r in read_records(tmp_path / "dd" / "train")] == ROWS

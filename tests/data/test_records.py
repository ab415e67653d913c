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

"""`aigc prep`: tokenizers round-trip any text, arrays are memmaps, bad input fails cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from aigc_cli.data.tokenization import build_char_tokenizer, train_bpe_tokenizer
from tests.conftest import TINY_TEXT, json_out, tiny_config

SAMPLES = ["hello world", "床前明月光，疑是地上霜。", "emoji 🙂🚀 and combining é", "tabs\tand\nnewlines\r\n", "字符未见过的文字 ζωή", ""]


@pytest.mark.parametrize("text", SAMPLES)
def test_char_tokenizer_round_trips_unseen_unicode(text):
    tok = build_char_tokenizer("abcdefgh ")  # most of SAMPLES is unseen: bytes fall back
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_tokenizer_round_trips(text):
    tok = train_bpe_tokenizer([TINY_TEXT], vocab_size=400)
    assert tok.get_vocab_size() <= 400
    assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prep_writes_memmaps_tokenizer_and_meta(cli, tmp_path, corpus, kind):
    cfg = tiny_config(tmp_path, corpus, data={"tokenizer": {"kind": kind, "vocab_size": 600}})
    out = json_out(cli("prep", cfg, "--json"))
    data_dir = tmp_path / "prepared"
    assert out["data_dir"] == str(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["inputs"][0]["sha256"]
    assert (data_dir / "config.yaml").is_file() and (data_dir / "provenance.json").is_file()
    tok = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    train = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"] > 0
    # Both splits together decode back to the corpus (end-of-text ids removed).
    text = tok.decode([int(i) for i in train if i != meta["eos_id"]]) + tok.decode([int(i) for i in val if i != meta["eos_id"]])
    assert sorted(text) == sorted(TINY_TEXT)
    if kind == "bpe":
        assert len(train) + len(val) < len(TINY_TEXT.encode()) * 0.5  # merges actually compress


def test_tail_split_is_the_last_fraction(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, data={"split": "tail", "val_fraction": 0.2})
    json_out(cli("prep", cfg, "--json"))
    tok = Tokenizer.from_file(str(tmp_path / "prepared" / "tokenizer.json"))
    val = np.fromfile(tmp_path / "prepared" / "val.bin", dtype=np.uint16)
    assert tok.decode(val[:-1].tolist()) == TINY_TEXT[int(len(TINY_TEXT) * 0.8):]


def test_uint32_when_vocabulary_exceeds_uint16(cli, tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(20_000)) + "".join(chr(0x20000 + i) for i in range(46_000)) + "\n", encoding="utf-8")
    cfg = tiny_config(tmp_path, path, data={"split": "tail"})
    out = json_out(cli("prep", cfg, "--json"))
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert out["vocab_size"] > 65536 and meta["dtype"] == "uint32"


def test_jsonl_source_directory_and_cleaning(cli, tmp_path):
    src = tmp_path / "docs.jsonl"
    rows = [{"body": f"<p>Doc {i} &amp; more   text</p>\nrepeated line"} for i in range(50)]
    src.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cfg = tiny_config(tmp_path, src, data={"jsonl_field": "body", "cleaning": {"strip_html": True, "whitespace": True, "dedupe_lines": True}})
    json_out(cli("prep", cfg, "--json"))
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["documents"] == 50 and meta["duplicate_lines_dropped"] == 49
    tok = Tokenizer.from_file(str(tmp_path / "prepared" / "tokenizer.json"))
    ids = np.fromfile(tmp_path / "prepared" / "train.bin", dtype=np.uint16).tolist() + np.fromfile(tmp_path / "prepared" / "val.bin", dtype=np.uint16).tolist()
    text = tok.decode(ids)
    assert "<p>" not in text and "&amp;" not in text and "Doc 7 & more text" in text
    assert text.count("repeated line") == 1


def test_directory_of_text_files(cli, tmp_path):
    (tmp_path / "books").mkdir()
    for i in range(3):
        (tmp_path / "books" / f"{i}.txt").write_text(TINY_TEXT[: 2000 + i], encoding="utf-8")
    out = json_out(cli("prep", tiny_config(tmp_path, tmp_path / "books"), "--json"))
    assert len(json.loads((tmp_path / "prepared" / "meta.json").read_text())["inputs"]) == 3
    assert out["train_tokens"] > 0


def test_rerun_reuses_and_changed_input_needs_force(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus)
    first = json_out(cli("prep", cfg, "--json"))
    assert json_out(cli("prep", cfg, "--json"))["reused"] is True
    corpus.write_text(TINY_TEXT + "new text\n", encoding="utf-8")
    before = (tmp_path / "prepared" / "train.bin").read_bytes()
    refused = cli("prep", cfg)
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert (tmp_path / "prepared" / "train.bin").read_bytes() == before  # untouched
    replaced = json_out(cli("prep", cfg, "--json", "--force"))
    assert replaced["reused"] is False and replaced["train_tokens"] + replaced["val_tokens"] != first["train_tokens"] + first["val_tokens"]


@pytest.mark.parametrize("setup, overrides, message", [
    (lambda d: d / "missing.txt", [], "data.source not found"),
    (lambda d: (d / "empty.txt").write_text("") and d / "empty.txt" or d / "empty.txt", [], "holds no text"),
    (lambda d: d / "corpus.txt", ["data.tokenizer.kind=bpe", "data.tokenizer.vocab_size=100"], "too small"),
    (lambda d: (d / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n') and d / "bad.jsonl", [], "bad.jsonl:2: malformed JSON"),
    (lambda d: (d / "nofield.jsonl").write_text('{"body": "ok"}\n') and d / "nofield.jsonl", [], "no field 'text'"),
    (lambda d: (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1")) and d / "latin1.txt", [], "not valid UTF-8"),
    (lambda d: d / "corpus.txt", ["data.tokenizer.kind=pretrained"], "needs data.tokenizer.path"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, corpus, setup, overrides, message):
    source = setup(tmp_path)
    result = cli("prep", tiny_config(tmp_path, source), *overrides)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prepared").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]  # no half-written staging dir

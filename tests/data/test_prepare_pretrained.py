"""`aigc prep` with data.tokenizer.kind=pretrained: an existing model's tokenizer, its files kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_TEXT, json_out, tiny_config
from tests.tiny_pretrained import save_tokenizer, train_bpe

DOCUMENTS = TINY_TEXT.splitlines()[:6] * 10


def jsonl_source(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCUMENTS), encoding="utf-8")
    return path


def pretrained_config(tmp_path: Path, path: str | Path) -> Path:
    return tiny_config(tmp_path, jsonl_source(tmp_path), data={"tokenizer": {"kind": "pretrained", "path": str(path)}})


def documents_of(ids: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    ids = ids.tolist()
    ends = [i for i, t in enumerate(ids) if t == eos]
    return [tuple(ids[start + 1:end]) for start, end in zip([-1] + ends, ends)]


def test_eos_is_the_one_the_tokenizer_declares_and_its_files_are_kept(cli, tmp_path):
    from transformers import AutoTokenizer

    tok = train_bpe(DOCUMENTS)  # holds <|endoftext|> too, which aigc's own tokenizers end documents with
    save_tokenizer(tok, tmp_path / "model", bos="<s>", eos="</s>")
    meta = json.loads((Path(json_out(cli("prep", pretrained_config(tmp_path, tmp_path / "model"), "--json"))["data_dir"]) / "meta.json").read_text())
    assert meta["eos_id"] == tok.token_to_id("</s>") != tok.token_to_id("<|endoftext|>")
    assert meta["tokenizer_source"] == str((tmp_path / "model").resolve())

    prepared = tmp_path / "prepared"
    assert (prepared / "tokenizer.json").read_bytes() == (tmp_path / "model" / "tokenizer.json").read_bytes()
    reloaded = AutoTokenizer.from_pretrained(prepared)
    assert (reloaded.bos_token, reloaded.eos_token) == ("<s>", "</s>")
    train = np.fromfile(prepared / "train.bin", dtype=meta["dtype"])
    encoded = {tuple(reloaded(d, add_special_tokens=False).input_ids) for d in DOCUMENTS}
    assert train[-1] == meta["eos_id"] and set(documents_of(train, meta["eos_id"])) <= encoded


def test_a_directory_without_tokenizer_json_is_read_by_transformers(cli, tmp_path):
    """GPT-2's original form, vocab.json + merges.txt: transformers converts it once, prep copies the result."""
    from transformers import AutoTokenizer

    tok = train_bpe(DOCUMENTS, special_tokens=("<|endoftext|>",))
    slow = tmp_path / "gpt2-files"
    slow.mkdir()
    tok.model.save(str(slow))
    (slow / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>",
                                                            "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    assert not (slow / "tokenizer.json").exists()
    json_out(cli("prep", pretrained_config(tmp_path, slow), "--json"))

    prepared = tmp_path / "prepared"
    meta = json.loads((prepared / "meta.json").read_text())
    original = AutoTokenizer.from_pretrained(slow)
    train = np.fromfile(prepared / "train.bin", dtype=meta["dtype"])
    encoded = {tuple(original(d, add_special_tokens=False).input_ids) for d in DOCUMENTS}
    assert meta["eos_id"] == original.eos_token_id and set(documents_of(train, meta["eos_id"])) <= encoded
    assert AutoTokenizer.from_pretrained(prepared)("To be").input_ids == original("To be").input_ids


def test_a_prepared_data_directory_lends_its_tokenizer(cli, tmp_path, corpus):
    first = tiny_config(tmp_path / "first", corpus)
    assert cli("prep", first).exit_code == 0
    again = tiny_config(tmp_path / "again", corpus, data={"tokenizer": {"kind": "pretrained", "path": str(tmp_path / "first" / "prepared")}})
    assert cli("prep", again).exit_code == 0
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "again" / "prepared" / name).read_bytes() == (tmp_path / "first" / "prepared" / name).read_bytes()


def test_another_tokenizer_at_the_same_path_is_not_reused_silently(cli, tmp_path):
    save_tokenizer(train_bpe(DOCUMENTS, vocab_size=300), tmp_path / "model")
    cfg = pretrained_config(tmp_path, tmp_path / "model")
    assert json_out(cli("prep", cfg, "--json"))["reused"] is False
    assert json_out(cli("prep", cfg, "--json"))["reused"] is True
    save_tokenizer(train_bpe(DOCUMENTS, vocab_size=340), tmp_path / "model")  # same path, another tokenizer
    refused = cli("prep", cfg)
    assert refused.exit_code == 2 and "holds data prepared from other inputs or settings" in refused.stderr
    assert json_out(cli("prep", cfg, "--json", "--force"))["vocab_size"] == 340


@pytest.mark.parametrize("path, message", [
    ("some-org/tokenizer", "data.tokenizer.path 'some-org/tokenizer' is a hub id, but HF_HUB_OFFLINE is set so nothing can be downloaded"),
    ("./no/such/dir", "data.tokenizer.path not found: ./no/such/dir"),
])
def test_a_tokenizer_that_cannot_be_had_is_exit_2(cli, tmp_path, monkeypatch, path, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("prep", pretrained_config(tmp_path, path))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "prepared").exists()


def test_a_directory_with_no_tokenizer_is_exit_2(cli, tmp_path):
    (tmp_path / "empty-model").mkdir()
    result = cli("prep", pretrained_config(tmp_path, tmp_path / "empty-model"))
    assert result.exit_code == 2 and f"data.tokenizer.path {tmp_path / 'empty-model'} holds no tokenizer" in result.stderr
    assert "Traceback" not in result.stderr

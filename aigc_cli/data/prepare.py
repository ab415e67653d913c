"""`aigc prep` for text: source → tokenizer → train.bin / val.bin / meta.json, in two streaming passes.

Pass 1 reads the source to build the tokenizer (char set, or BPE merges) and to count
characters; pass 2 reads it again, encodes ~1 MB at a time and appends the ids to flat binary
files. Memory stays flat however large the corpus is: nothing holds more than one batch of text,
except BPE training, which sees at most `tokenizer.max_train_bytes` (and holds ~10-12x that).
"""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from aigc_cli.runs.atomic_files import remove_stale_temporaries, staging_dir, write_json_atomic
from aigc_cli.config import DataConfig, ExperimentConfig, require_data
from aigc_cli.data.text_sources import Chunk, SourceStats, iter_chunks
from aigc_cli.data import tokenization
from aigc_cli.data.prepared_dir import read_meta, reusable_output
from aigc_cli.errors import AigcError
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.runs.provenance import software_versions, write_provenance

META_FORMAT = "aigc-prepared-text-v1"
ENCODE_BATCH_CHARS = 1 << 20


@dataclass
class PrepResult:
    data_dir: Path
    meta: dict
    reused: bool

    def to_json(self) -> dict:
        meta = self.meta
        return {"data_dir": str(self.data_dir), "vocab_size": meta["vocab_size"], "train_tokens": meta["train_tokens"],
                "val_tokens": meta["val_tokens"], "reused": self.reused}

    def summary_lines(self) -> list[str]:
        meta = self.meta
        return [f"prepared data: {self.data_dir}" + (" (unchanged, reused)" if self.reused else ""),
                f"  vocabulary {meta['vocab_size']:,} ({meta['tokenizer']}), train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens"]


def prepare_text_corpus(cfg: ExperimentConfig, force: bool = False, log: Callable[[str], None] = print) -> PrepResult:
    """Holds data.prepared_dir's lock throughout (see runs/locks.py)."""
    out = Path(require_data(cfg).prepared_dir)
    with exclusive_lock(out, "prepared-data directory"):
        remove_stale_temporaries(out.parent, (out.name,))
        with ExitStack() as stack:
            return _prepare_text_corpus(cfg, stack, force, log)


def pretrained_tokenizer_ref(cfg: ExperimentConfig) -> tuple[str, str]:
    """(where data.tokenizer.kind=pretrained takes its tokenizer from, the key that says so):
    data.tokenizer.path, else the model continued pretraining starts from."""
    data = require_data(cfg)
    if data.tokenizer.path:
        return data.tokenizer.path, "data.tokenizer.path"
    init_from = getattr(cfg.model, "init_from", None)
    if init_from:
        return init_from, "model.init_from"
    raise AigcError("data.tokenizer.kind=pretrained needs data.tokenizer.path (or model.init_from, whose tokenizer it then uses)",
                    "set data.tokenizer.path to a model, checkpoint or prepared-data directory holding the tokenizer")


def _prepare_text_corpus(cfg: ExperimentConfig, stack: ExitStack, force: bool = False, log: Callable[[str], None] = print) -> PrepResult:
    data = require_data(cfg)
    out = Path(data.prepared_dir)
    existing = read_meta(out, META_FORMAT)
    pretrained = None
    if data.tokenizer.kind == "pretrained":
        pretrained = stack.enter_context(tokenization.pretrained_tokenizer(*pretrained_tokenizer_ref(cfg)))
    if data.tokenizer.kind == "bpe" and data.tokenizer.vocab_size < tokenization.MIN_BPE_VOCAB:
        tokenization.train_bpe_tokenizer([], data.tokenizer.vocab_size)  # raises the clear error before any reading

    log(f"pass 1/2: reading {data.source} to build the {data.tokenizer.kind} tokenizer"
        if pretrained is None else f"pass 1/2: reading {data.source} (tokenizer: {pretrained.source})")
    stats = SourceStats()
    tok, total_chars = _build_tokenizer(data, stats, pretrained)
    if total_chars == 0 or stats.blank:
        raise AigcError(f"data.source {data.source} holds no text after cleaning", "point data.source at a non-empty corpus")
    # A pretrained tokenizer is part of the inputs: the same path may hold another one tomorrow.
    tokenizer_record = {} if pretrained is None else {"tokenizer_source": pretrained.source, "tokenizer_sha256": pretrained.sha256}
    fingerprint = _fingerprint(data, stats.inputs, tokenizer_record)
    if reusable_output(out, existing, fingerprint, force):
        log(f"{out} is already prepared from the same inputs and settings; reusing it")
        return PrepResult(out, existing, reused=True)

    vocab_size = tok.get_vocab_size()
    eos = pretrained.eos_id if pretrained is not None else tokenization.eos_id(tok)
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    log(f"pass 2/2: encoding {total_chars:,} characters with a {vocab_size:,}-token vocabulary")
    with staging_dir(out, replace=True) as tmp:
        counts = _encode_splits(data, tok, eos, total_chars, tmp, dtype)
        for split in ("train", "val"):
            if counts[split] == 0:
                raise AigcError(f"the {split} split is empty", "add more text or change data.val_fraction")
        if pretrained is None:
            tokenization.save_tokenizer(tok, tmp)
        else:
            tokenization.copy_pretrained_tokenizer(pretrained, tmp)
        meta = {
            "format": META_FORMAT,
            "tokenizer": data.tokenizer.kind,
            **tokenizer_record,
            "vocab_size": vocab_size,
            "eos_id": eos,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "characters": total_chars,
            "documents": stats.documents,
            "lines": stats.lines,
            "duplicate_lines_dropped": stats.duplicate_lines_dropped,
            "split": {"method": data.split, "val_fraction": data.val_fraction, "seed": data.seed},
            "inputs": stats.inputs,
            "fingerprint": fingerprint,
            "versions": software_versions(),
        }
        write_json_atomic(tmp / "meta.json", meta)
        write_provenance(tmp, cfg, stats.inputs)
    return PrepResult(out, meta, reused=False)



def _fingerprint(data: DataConfig, inputs: list[dict], tokenizer_record: dict) -> str:
    settings = data.model_dump(mode="json", exclude={"prepared_dir"})
    # Keyed only when there is one, so data prepared before pretrained tokenizers were recorded is still reused.
    extra = {"tokenizer": tokenizer_record} if tokenizer_record else {}
    blob = json.dumps({"format": META_FORMAT, "settings": settings, "inputs": [i["sha256"] for i in inputs], **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _build_tokenizer(data: DataConfig, stats: SourceStats, pretrained: tokenization.PretrainedTokenizer | None):
    kind = data.tokenizer.kind
    total = 0
    if pretrained is not None:
        for chunk in iter_chunks(data, stats):
            total += len(chunk.text)
        return pretrained.tokenizer, total
    if kind == "char":
        chars: set[str] = set()
        for chunk in iter_chunks(data, stats):
            chars.update(chunk.text)
            total += len(chunk.text)
        return tokenization.build_char_tokenizer(chars), total

    budget = data.tokenizer.max_train_bytes

    def training_texts() -> Iterator[str]:
        nonlocal total
        used = 0
        for chunk in iter_chunks(data, stats):
            total += len(chunk.text)
            if used < budget:
                used += len(chunk.text.encode("utf-8"))
                yield chunk.text

    tok = tokenization.train_bpe_tokenizer(training_texts(), data.tokenizer.vocab_size)
    return tok, total


def _split_chunks(data: DataConfig, total_chars: int) -> Iterator[tuple[str, Chunk]]:
    """(split, chunk) in source order. random: whole chunks by a seeded coin; tail: the last
    val_fraction of the characters, cut inside a chunk when the boundary falls there."""
    stats = SourceStats()
    if data.split == "tail":
        boundary = int(total_chars * (1 - data.val_fraction))
        seen = 0
        for chunk in iter_chunks(data, stats):
            start, seen = seen, seen + len(chunk.text)
            if seen <= boundary:
                yield "train", chunk
            elif start >= boundary:
                yield "val", chunk
            else:
                cut = boundary - start
                yield "train", Chunk(chunk.text[:cut], ends_document=False)
                yield "val", Chunk(chunk.text[cut:], ends_document=chunk.ends_document)
        return
    rng = random.Random(data.seed)
    held: Chunk | None = None  # one chunk of look-ahead, so a tiny corpus still gets a val split
    val_seen = False
    for chunk in iter_chunks(data, stats):
        if held is not None:
            split = "val" if rng.random() < data.val_fraction else "train"
            val_seen |= split == "val"
            yield split, held
        held = chunk
    if held is None:
        return
    if rng.random() < data.val_fraction or not val_seen:
        if val_seen:
            yield "val", held
            return
        cut = int(len(held.text) * (1 - data.val_fraction))
        yield "train", Chunk(held.text[:cut], ends_document=False)
        yield "val", Chunk(held.text[cut:], ends_document=held.ends_document)
    else:
        yield "train", held


def _encode_splits(data: DataConfig, tok, eos: int, total_chars: int, out: Path, dtype) -> dict[str, int]:
    counts = {"train": 0, "val": 0}
    pending: dict[str, list[Chunk]] = {"train": [], "val": []}
    pending_chars = {"train": 0, "val": 0}
    with open(out / "train.bin", "wb") as train_f, open(out / "val.bin", "wb") as val_f:
        files = {"train": train_f, "val": val_f}

        def flush(split: str) -> None:
            chunks = pending[split]
            if not chunks:
                return
            encodings = tok.encode_batch_fast([c.text for c in chunks], add_special_tokens=False)
            ids: list[int] = []
            for chunk, enc in zip(chunks, encodings):
                ids.extend(enc.ids)
                if chunk.ends_document:
                    ids.append(eos)
            np.asarray(ids, dtype=dtype).tofile(files[split])
            counts[split] += len(ids)
            pending[split], pending_chars[split] = [], 0

        for split, chunk in _split_chunks(data, total_chars):
            pending[split].append(chunk)
            pending_chars[split] += len(chunk.text)
            if pending_chars[split] >= ENCODE_BATCH_CHARS:
                flush(split)
        flush("train")
        flush("val")
    return counts

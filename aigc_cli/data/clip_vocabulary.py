"""A CLIP tokenizer built offline from captions: byte-level BPE files (vocab.json, merges.txt) in
the layout of openai/clip-vit's, whose merges spell the captions' most frequent words whole.

Every byte is in the vocabulary alone and word-final ("</w>"), so any text tokenizes; a word
seen in the captions is one token. transformers' CLIPTokenizer reads the two files as it reads
a downloaded CLIP tokenizer, and saves them into a pipeline's tokenizer/ folder. No torch here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

START, END = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer splits on letters runs, single digits and punctuation runs, after lower-casing.
_WORD = re.compile(r"[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's map from each byte to a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def caption_words(captions: Iterable[str], limit: int) -> list[str]:
    """The `limit` most frequent words of the captions (ties alphabetical), as CLIP splits them."""
    counts = Counter(word for text in captions for word in _WORD.findall(" ".join(text.lower().split())))
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]


def write_clip_tokenizer(directory: str | Path, words: Iterable[str]) -> Path:
    """vocab.json and merges.txt in `directory`: the bytes, then the merges (and their products)
    that join each word's bytes left to right into one word-final token."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    byte_chars = bytes_to_unicode()
    chars = list(byte_chars.values())
    vocab = dict.fromkeys(chars + [c + "</w>" for c in chars])
    merges: dict[str, None] = {}
    for word in words:
        spelled = [byte_chars[b] for b in word.encode("utf-8")]
        pieces = spelled[:-1] + [spelled[-1] + "</w>"]
        while len(pieces) > 1:
            merges[f"{pieces[0]} {pieces[1]}"] = None
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab[pieces[0]] = None
    vocab.update(dict.fromkeys([START, END]))
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    return directory


def clip_tokenizer(directory: str | Path, max_length: int):
    """transformers' CLIPTokenizer on the files write_clip_tokenizer wrote (padding with the end token, as CLIP does)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)

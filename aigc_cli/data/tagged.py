"""Tagged sentences for taggers: CoNLL-style column files or records with word and tag lists;
tags aligned to sub-word tokens; entities read from BIO/IOB2 tags as conlleval (and seqeval) do.

A CoNLL file has a token per line, its tag in the last column (whitespace-separated), a blank line
between sentences; `-DOCSTART-` lines are skipped. Records (JSONL/CSV/Parquet) hold a list of
words and a list of tags of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aigc_cli.errors import AigcError

IGNORE_INDEX = -100
CONLL_SUFFIXES = (".conll", ".conllu", ".txt", ".tsv", ".iob", ".bio")


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str]
    where: str


def read_conll(path: str | Path) -> list[TaggedSentence]:
    from aigc_cli.data.records import read_lines

    sentences, words, tags, start = [], [], [], None
    for number, line in read_lines(path):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedSentence(words, tags, f"{path}:{start}"))
            words, tags, start = [], [], None
            continue
        if len(parts) < 2:
            raise AigcError(f"{path}:{number}: '{line.strip()}' has no tag column", "write a token and its tag per line (the tag last)")
        words.append(parts[0])
        tags.append(parts[-1])
        start = start or number
    if words:
        sentences.append(TaggedSentence(words, tags, f"{path}:{start}"))
    return sentences


def read_tagged(path: str, tokens_field: str, tags_field: str) -> list[TaggedSentence]:
    """A CoNLL column file (by its suffix) or records with word and tag lists."""
    from aigc_cli.data.records import read_records

    if Path(path).suffix.lower() in CONLL_SUFFIXES:
        sentences = read_conll(path)
    else:
        sentences = []
        for where, record in read_records(path):
            words, tags = record.get(tokens_field), record.get(tags_field)
            if not isinstance(words, list) or not isinstance(tags, list):
                raise AigcError(f"{where}: '{tokens_field}' and '{tags_field}' must be lists (fields: {', '.join(map(str, record))})",
                                "set data.tokens_field and data.tags_field to the record's word and tag lists")
            sentences.append(TaggedSentence([str(w) for w in words], [str(t) for t in tags], where))
    for s in sentences:
        if len(s.words) != len(s.tags):
            raise AigcError(f"{s.where}: {len(s.words)} words but {len(s.tags)} tags", "give one tag per word")
    if not sentences:
        raise AigcError(f"{path} holds no tagged sentences", "a token and its tag per line, a blank line between sentences")
    return sentences


def tag_names(sentences: list[TaggedSentence], declared: list[str] | None) -> list[str]:
    found = {t for s in sentences for t in s.tags}
    if declared is not None:
        unknown = sorted(found - set(declared))
        if unknown:
            raise AigcError(f"tags {unknown[:5]} are not in model.labels", "add them to model.labels (or leave it out)")
        return list(declared)
    return (["O"] if "O" in found else []) + sorted(found - {"O"}, key=lambda t: (t[2:], t))


def align(tokenizer, sentences: list[list[str]], tag_ids: list[list[int]] | None, max_length: int) -> tuple[list, list]:
    """(token ids, targets) per sentence: each word's first sub-word token gets its tag, the rest
    (and special tokens) IGNORE_INDEX. Returns the word index of each token too when tag_ids is None."""
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    ids, targets = [], []
    for row, token_ids in enumerate(encoded["input_ids"]):
        words = encoded.word_ids(row)
        previous, target = None, []
        for word in words:
            first = word is not None and word != previous
            target.append((tag_ids[row][word] if tag_ids is not None else word) if first else IGNORE_INDEX)
            previous = word
        ids.append(token_ids)
        targets.append(target)
    return ids, targets


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return tag == "B" or (tag == "I" and (prev in ("O", "") or prev_type != type_))


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return prev in ("B", "I") and (tag in ("B", "O", "") or prev_type != type_)


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in BIO/IOB2 tags, by conlleval's rules (an I-
    after O or another type starts an entity), as seqeval's default mode reads them."""
    found, start, prev, prev_type = [], None, "O", ""
    for i, label in enumerate(list(tags) + ["O"]):
        tag, _, type_ = label.partition("-") if label != "O" else ("O", "", "")
        if tag not in ("B", "I", "O"):
            tag = "O" if label == "O" else "I"  # a bare type counts as inside it
            type_ = type_ or label
        if _ends(prev, tag, prev_type, type_) and start is not None:
            found.append((prev_type, start, i - 1))
            start = None
        if _starts(prev, tag, prev_type, type_):
            start = i
        prev, prev_type = tag, type_
    return found


class TaggedBatches:
    """Token ids and aligned targets; random_batch pads ids with pad_id and targets with -100."""

    def __init__(self, ids: list[list[int]], targets: list[list[int]], pad_id: int):
        self.ids, self.targets, self.pad_id = ids, targets, pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: list[int]):
        from aigc_cli.data.labelled import padded_with_mask
        from aigc_cli.data.packing import padded

        return padded_with_mask([self.ids[i] for i in rows], self.pad_id), padded([self.targets[i] for i in rows], IGNORE_INDEX)

    def random_batch(self, batch_size: int, block_size: int, generator, shard=(0, 1)):
        import torch

        from aigc_cli.data.batches import own_rows

        rows = torch.randint(len(self.ids), (batch_size,), generator=generator).tolist()
        return self.batch(own_rows(rows, shard))

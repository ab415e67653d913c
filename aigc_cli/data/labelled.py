"""Labelled texts for classifiers: records (CSV/JSONL/Parquet via records.read_records) with a text
column and a label column, the label set, the held-out split and padded batches.

A label is a name, an integer id 0..K-1 (into model.labels, or named by its number), a list of names
(or names joined by commas) for multi_label, or a number for regression. The label set is the
names in model.labels' order, else sorted; it is recorded in the checkpoint's config.json.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from aigc_cli.data.records import read_records
from aigc_cli.errors import AigcError


@dataclass
class LabelledText:
    text: str
    label: Any  # str (single_label), list[str] (multi_label), float (regression)
    where: str  # FILE:N, for messages


def read_labelled(path: str, text_field: str, label_field: str, task: str, key: str = "data.source") -> list[LabelledText]:
    """Every record of `path` as (text, label); a record without either field is an error naming it."""
    out = []
    for where, record in read_records(path, "fix that record"):
        if text_field not in record or label_field not in record:
            missing = text_field if text_field not in record else label_field
            raise AigcError(f"{where}: no '{missing}' field (fields: {', '.join(map(str, record))})",
                            f"set data.jsonl_field (the text) and data.label_field (the label) to the record's columns ({key})")
        text, label = record[text_field], record[label_field]
        if not isinstance(text, str):
            raise AigcError(f"{where}: '{text_field}' is {type(text).__name__}, not text", "give each record's text as a string")
        out.append(LabelledText(text, _label(label, task, where, label_field), where))
    if not out:
        raise AigcError(f"{path} holds no records", "give labelled records (a text and a label column)")
    return out


def _label(value: Any, task: str, where: str, field: str) -> Any:
    if value is None or value == "":
        raise AigcError(f"{where}: '{field}' is empty", "give every record a label")
    if task == "regression":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AigcError(f"{where}: '{field}' is {value!r}, not a number", "model.task=regression needs numeric labels") from None
    if task == "multi_label":
        names = value if isinstance(value, list) else str(value).split(",")
        return sorted({str(n).strip() for n in names if str(n).strip()})
    if isinstance(value, (list, dict)):
        raise AigcError(f"{where}: '{field}' holds a {type(value).__name__}", "single_label needs one label per record (or set model.task=multi_label)")
    return str(value).strip() if not isinstance(value, bool) else str(value)


def label_names(records: list[LabelledText], task: str, declared: list[str] | None) -> list[str]:
    """The label set in id order: model.labels, else the names found (sorted; integers numerically)."""
    if task == "regression":
        return ["score"]
    found = sorted({n for r in records for n in (r.label if task == "multi_label" else [r.label])},
                   key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
    if declared is None:
        if len(found) < 2 and task == "single_label":
            raise AigcError(f"the training records hold {len(found)} label(s): {found}", "a classifier needs at least two labels")
        return found
    if len(set(declared)) != len(declared):
        raise AigcError("model.labels names a label twice", "list each label once")
    ids_given = all(n.isdigit() for n in found) and not set(found) & set(declared)
    unknown = [n for n in found if (int(n) >= len(declared) if ids_given else n not in declared)]
    if unknown:
        raise AigcError(f"labels {unknown[:5]} are not in model.labels {declared}", "add them to model.labels (or leave it out)")
    return list(declared)


def label_ids(records: list[LabelledText], names: list[str], task: str) -> list[Any]:
    """Per record: its label id (single_label), a 0/1 row (multi_label) or the number (regression)."""
    if task == "regression":
        return [r.label for r in records]
    index = {n: i for i, n in enumerate(names)}
    as_id = lambda n: index[n] if n in index else int(n)  # an integer label is an id into the names
    if task == "multi_label":
        rows = []
        for r in records:
            row = [0.0] * len(names)
            for n in r.label:
                row[as_id(n)] = 1.0
            rows.append(row)
        return rows
    return [as_id(r.label) for r in records]


def held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded random `fraction` of the records held out (at least one)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(records) * fraction))
    if len(records) - n_val < 1:
        raise AigcError(f"only {len(records)} record(s): nothing left to train on after holding out validation", "add records")
    return [records[i] for i in sorted(order[n_val:])], [records[i] for i in sorted(order[:n_val])]


def class_weights(ids: list[Any], n_labels: int, task: str) -> list[float]:
    """scikit-learn's 'balanced': n / (K × count) per class (multi_label: negatives / positives per label)."""
    if task == "multi_label":
        pos = [sum(row[k] for row in ids) for k in range(n_labels)]
        return [(len(ids) - p) / p if p else 1.0 for p in pos]
    counts = [0] * n_labels
    for i in ids:
        counts[i] += 1
    return [len(ids) / (n_labels * c) if c else 0.0 for c in counts]


class EncodedTexts:
    """Token ids of each text (cut to max_length) with their labels; random_batch pads a batch on the right."""

    def __init__(self, ids: list[list[int]], labels: list[Any], pad_id: int, task: str):
        self.ids, self.labels, self.pad_id, self.task = ids, labels, pad_id, task

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: list[int]):
        import torch

        ids, mask = padded_with_mask([self.ids[i] for i in rows], self.pad_id)
        labels = [self.labels[i] for i in rows]
        targets = torch.tensor(labels, dtype=torch.long if self.task == "single_label" else torch.float32)
        return (ids, mask), targets

    def random_batch(self, batch_size: int, block_size: int, generator, shard=(0, 1)):
        import torch

        from aigc_cli.data.batches import own_rows

        rows = torch.randint(len(self.ids), (batch_size,), generator=generator).tolist()
        return self.batch(own_rows(rows, shard))


def padded_with_mask(rows: list[list[int]], pad_id: int):
    """(ids, attention mask) of token rows, right-padded to the longest: what an encoder takes."""
    from aigc_cli.data.packing import padded

    return padded(rows, pad_id), padded([[1] * len(row) for row in rows], 0)


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """A transformers tokenizer's ids (with its special tokens), cut to max_length."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


# ----------------------------------------------------------------------------- preference pairs (reward models)
def _turns_text(turns: list[dict]) -> str:
    return "\n".join(str(m.get("content", "")) for m in turns)


def pair_texts(pair) -> tuple[str, str]:
    """(chosen text, rejected text) of a chat_formats PreferencePair: the prompt, a newline, the reply."""
    prompt = _turns_text(pair.prompt)
    return f"{prompt}\n{_turns_text(pair.chosen)}", f"{prompt}\n{_turns_text(pair.rejected)}"


class PreferenceTexts:
    """Encoded chosen and rejected texts; a batch of B pairs is 2B rows, the chosen ones first."""

    def __init__(self, chosen: list[list[int]], rejected: list[list[int]], pad_id: int):
        self.chosen, self.rejected, self.pad_id = chosen, rejected, pad_id
        self.texts = EncodedTexts(chosen + rejected, [0.0] * (2 * len(chosen)), pad_id, "regression")

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, rows: list[int]):
        return self.texts.batch(rows + [len(self.chosen) + i for i in rows])

    def random_batch(self, batch_size: int, block_size: int, generator, shard=(0, 1)):
        import torch

        from aigc_cli.data.batches import own_rows

        rows = torch.randint(len(self.chosen), (batch_size,), generator=generator).tolist()
        return self.batch(own_rows(rows, shard))

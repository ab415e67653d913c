"""Prompt/response pairs for fine-tuning and few-shot prompting.

Pairs come from records (JSONL, CSV, Parquet, ... any field names: records.read_records) or two
line-aligned text files (.gz allowed). A prompt
is the config's template filled with the record's fields; the loss covers the response and the
end-of-text token only (prompt positions get the label -100, which cross-entropy ignores).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aigc_cli.data.records import read_lines, read_records, text_fields
from aigc_cli.errors import AigcError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


@dataclass
class PairRecord:
    fields: dict[str, str]
    where: str  # "path:line" for error messages


def _existing(path: str | Path) -> str | Path:
    if not Path(path).is_file():
        raise AigcError(f"file not found: {path}", "check the path in the config")
    return path


def read_text_lines(path: str | Path) -> list[str]:
    """Every line of a text file (.gz allowed), without its line ending."""
    return [line for _, line in read_lines(_existing(path))]


def read_pair_records(jsonl: str | None, source_file: str | None, target_file: str | None,
                      prompt_field: str, response_field: str, what: str) -> list[PairRecord]:
    """Records from JSONL, or from line-aligned source/target files (fields prompt_field/response_field)."""
    if jsonl:
        records = _read_jsonl(jsonl, response_field)
    elif source_file and target_file:
        sources, targets = read_text_lines(source_file), read_text_lines(target_file)
        if len(sources) != len(targets):
            raise AigcError(f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}",
                            "the two files must be line-aligned (line i of one translates line i of the other)")
        records = [PairRecord({prompt_field: s, response_field: t}, f"{source_file}:{i}")
                   for i, (s, t) in enumerate(zip(sources, targets), start=1) if s.strip() or t.strip()]
    else:
        raise AigcError(f"no {what} data", f"set {what}_file (JSONL) or {what.rsplit('.', 1)[0]}.source_file and target_file")
    if not records:
        raise AigcError(f"{jsonl or source_file} holds no examples", "put prompt/response pairs in it")
    return records


def _read_jsonl(path: str, response_field: str) -> list[PairRecord]:
    records = []
    for where, record in read_records(path, "fix that line; each line must be one JSON object"):
        if response_field not in record:
            raise AigcError(f"{where}: no field '{response_field}' (the response)", "set finetune.response_field to the field that holds the answer")
        records.append(PairRecord(text_fields(record, where), where))
    return records


def check_template(template: str, setting: str) -> list[str]:
    """The field names a template uses; a malformed template is a config error."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise AigcError(f"{setting} is not a valid template ({exc})", "write fields as {name}; double literal braces: {{ }}") from None
    # Plain {name} only: a format spec ({source:d}) fails on text, and attribute or index access
    # ({source.__class__}, {source[0]}) would reach into Python objects.
    odd = [f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
           for name, spec, conversion in fields if not name.isidentifier() or spec or conversion]
    if odd:
        raise AigcError(f"{setting} has a placeholder aigc cannot fill: {odd[0]}", "write fields as plain {name}, e.g. 'German: {source}\\nEnglish: '")
    return [name for name, _, _ in fields]


def fill_template(template: str, record: PairRecord, setting: str) -> str:
    for name in check_template(template, setting):
        if name not in record.fields:
            raise AigcError(f"{record.where}: {setting} names {{{name}}} but this record has no field '{name}'",
                            f"add '{name}' to the data or change {setting}")
    return template.format_map(record.fields)


class PairExamples:
    """Tokenized examples; `random_batch` pads a random draw into (inputs, targets) for the loop."""

    def __init__(self, records: list[PairRecord], tokenizer, template: str, response_field: str,
                 max_length: int, eos_id: int, packing: bool = False):
        from aigc_cli.data.packing import ExampleRows

        prompts = [fill_template(template, r, "finetune.template") for r in records]
        responses = [r.fields[response_field] for r in records]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
        examples = [(p + r + [eos_id], [IGNORE_INDEX] * len(p) + r + [eos_id]) for p, r in zip(prompt_ids, response_ids)]
        self.examples = ExampleRows(examples, eos_id, max_length, packing)
        self.rows, self.truncated, self.dropped = self.examples.rows, self.examples.truncated, self.examples.dropped
        if not self.rows:
            raise AigcError("no example has a response token left after truncation", "raise finetune.max_length or shorten the prompts")

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices):
        return self.examples.batch(indices)

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        return self.examples.random_batch(batch_size, block_size, generator, shard)

"""`aigc generate` for text: prompts in, one JSONL file of completions out, a manifest beside it.

Prompts are plain text (filled into generate.template) or conversations (`messages` rows),
which the checkpoint's chat template renders; a conversation's row keeps its messages and adds
the reply as `completion`. Decoding ends at the end-of-text token or the checkpoint's end-of-turn
tokens (see inference/loading.py end_token_ids).

Every completion has its own random generator, seeded from (seed, prompt, sample number), so
a completion does not change when other prompts or more samples are added to the batch.
Prompts are sampled generate.batch_size at a time by the inference layer's one decode loop
(aigc_cli/inference/text_decoding.py). A re-run whose completions are all in the manifest
loads no model and imports no torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from aigc_cli.runs.atomic_files import remove_stale_temporaries, write_json_atomic, write_text_atomic
from aigc_cli.backends import backend_of_checkpoint
from aigc_cli.runs.checkpoints import checkpoint_identity, resolve_checkpoint
from aigc_cli.config import ExperimentConfig, GenerateConfig
from aigc_cli.data.pairs import PairRecord, fill_template, read_pair_records
from aigc_cli.data.records import is_jsonl, read_jsonl, read_lines, text_fields
from aigc_cli.errors import AigcError
from aigc_cli.generation.manifest import OutputManifest, item_key
from aigc_cli.inference.chat_format import chat_formatter, prompt_messages
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.runs.provenance import software_versions


def read_prompts_file(path: str | Path) -> list[dict]:
    """Prompt records: one per line ({"source": line}, .gz allowed), or JSONL objects whose fields fill
    generate.template (a `prompt` field is used as it is when there is no template), or JSONL
    conversations ({"messages": [...]}, formatted by the checkpoint's chat template). A file holds
    plain prompts or conversations, not both: the two make rows of different shapes."""
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"prompts file not found: {path}", "pass an existing file to --prompts-file")
    if not is_jsonl(path):
        prompts = [{"source": line, "_where": f"{path}:{number}"} for number, line in read_lines(path)]
    else:
        prompts = []
        for where, record in read_jsonl(path, "each line must be a JSON object with a 'prompt' field", objects_only=False):
            if isinstance(record, str):
                record = {"prompt": record}
            if not isinstance(record, dict):
                raise AigcError(f"{where}: expected a JSON object", "each line must look like {\"prompt\": \"...\"}")
            if "messages" in record:
                prompts.append({"messages": prompt_messages(record["messages"], where), "_where": where})
            else:
                prompts.append({**text_fields(record, where), "_where": where})
    if not prompts:
        raise AigcError(f"{path} holds no prompts", "put one prompt per line")
    _one_kind(prompts)
    return prompts


def _one_kind(prompts: list[dict]) -> None:
    kind = lambda record: "'messages'" if "messages" in record else "plain prompt"
    other = next((p for p in prompts if kind(p) != kind(prompts[0])), None)
    if other is not None:
        raise AigcError(f"{other['_where']}: a {kind(other)} row in a file whose first row ({prompts[0]['_where']}) is a {kind(prompts[0])} row",
                        "a prompts file holds plain prompts or 'messages' conversations, not both; put them in separate files")


def chat_prompts(gc: GenerateConfig, checkpoint: Path, records: list[dict]) -> list[tuple[str, str]]:
    """(the last user turn, full prompt text) per conversation record: the checkpoint's chat
    template renders the messages, ready for the assistant's reply."""
    if gc.template or gc.few_shot.k:
        raise AigcError("generate.template and generate.few_shot do not apply to 'messages' rows",
                        "the checkpoint's chat template formats conversations; unset generate.template and generate.few_shot.k")
    format_messages = chat_formatter(checkpoint)
    return [(record["messages"][-1]["content"], format_messages(record["messages"], record["_where"])) for record in records]


def build_prompts(gc: GenerateConfig, records: list[dict]) -> list[tuple[str, str]]:
    """(input, full prompt text) per record: the template filled in, after k seeded few-shot examples."""
    fs = gc.few_shot
    examples: list[PairRecord] = []
    if fs.k:
        if not gc.template:
            raise AigcError("generate.few_shot.k > 0 needs generate.template", "set the template the examples and inputs are written in")
        examples = read_pair_records(fs.examples_file, fs.source_file, fs.target_file, "source", fs.response_field, "generate.few_shot.examples")
        if len(examples) < fs.k:
            raise AigcError(f"generate.few_shot.k={fs.k} but only {len(examples)} examples", "lower k or add examples")
    out = []
    for record in records:
        where = record.get("_where", "--prompt")
        fields = {k: v for k, v in record.items() if k != "_where"}
        if not gc.template and "prompt" not in fields and "source" not in fields:
            # Without a template only a `prompt` (or `source`) field is a prompt: anything else would be an empty one.
            raise AigcError(f"{where}: no 'prompt' field (fields: {', '.join(sorted(fields)) or 'none'})",
                            "give each JSONL line a 'prompt' field, or set generate.template to fill from the fields it has")
        shown = fields.get("prompt", fields.get("source", ""))
        if not gc.template:
            out.append((shown, shown))
            continue
        if "source" not in fields and "prompt" in fields:
            fields["source"] = fields["prompt"]
        text = fill_template(gc.template, PairRecord(fields, where), "generate.template")
        if fs.k:
            rng = random.Random(completion_seed(fs.seed, text, 0))
            shots = rng.sample(examples, fs.k)
            text = "".join(fill_template(gc.template, ex, "generate.template") + ex.fields[fs.response_field] + fs.separator
                           for ex in shots) + text
        out.append((shown, text.rstrip(" ") if gc.rstrip_prompt else text))
    return out


def completion_seed(seed: int, prompt: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# Settings that change no completion: they shape the prompt text (which is in the key itself),
# pick how many samples there are, or belong to images. Everything else is part of the key.
_NOT_IN_KEY = {"prompts", "out", "num_samples", "template", "few_shot", "rstrip_prompt", "seed", "images", "batch_size"}


@dataclass
class TextOutputs:
    path: Path  # the JSONL of completions
    count: int
    streamed: bool = False  # the completions were printed as they came

    def to_json(self) -> dict:
        return {"outputs": str(self.path), "count": self.count}

    def summary_lines(self, preview: int = 3) -> list[str]:
        lines = [f"generations: {self.path} ({self.count} completions)"]
        if not self.streamed:
            rows = itertools.islice(read_jsonl(self.path, "the file aigc just wrote"), preview)
            shown = lambda row: f"{row['input']} → {row['completion']}" if "messages" in row else row["prompt"] + row["completion"]
            lines += ["  " + shown(row).replace("\n", " ⏎ ")[:160] for _, row in rows]
        return lines


def generate_text(cfg: ExperimentConfig, checkpoint: str | Path | None, prompts: list[dict] | None = None,
                  stream: bool = False, stream_to=sys.stdout, log: Callable[[str], None] = lambda _: None,
                  force: bool = False) -> TextOutputs:
    """Completions for every prompt × sample (generate.prompts unless `prompts`, records of a
    prompts file, are given) into one JSONL file, generate.out, idempotently: completions
    already in `<out>.manifest.jsonl` (same checkpoint, prompt, parameters and seed) are reused,
    so a re-run after a kill generates only the rest; `force` regenerates everything."""
    gc = cfg.generate
    out = Path(gc.out or Path(cfg.train.out_dir) / "generations.jsonl")
    if out.is_dir():
        raise AigcError(f"--out {out} is a directory; text generation writes one JSONL file", "pass a file path, e.g. --out samples.jsonl")
    with exclusive_lock(out, "output file"):
        remove_stale_temporaries(out.parent, (out.name,))
        return _generate_text(cfg, checkpoint, prompts, out, stream, stream_to, log, force)


def _generate_text(cfg: ExperimentConfig, checkpoint, prompts, out: Path, stream: bool, stream_to, log, force: bool) -> TextOutputs:
    gc = cfg.generate
    checkpoint = resolve_checkpoint(checkpoint or cfg.train.out_dir)
    records = prompts if prompts else [{"source": p} for p in gc.prompts]
    conversations = [record["messages"] for record in records] if "messages" in records[0] else None
    prompts = chat_prompts(gc, checkpoint, records) if conversations else build_prompts(gc, records)
    params = gc.model_dump(mode="json", exclude={"prompts", "out"})
    identity = checkpoint_identity(checkpoint)
    decoding = gc.model_dump(mode="json", exclude=_NOT_IN_KEY)
    items = []
    for number, (shown, prompt) in enumerate(prompts):
        for sample in range(gc.num_samples):
            seed = completion_seed(gc.seed, prompt, sample)
            items.append(_Item(item_key(checkpoint=identity, prompt=prompt, params=decoding, seed=seed, sample=sample), shown, prompt, sample, seed,
                               conversations[number] if conversations else None))
    with OutputManifest(out.with_name(out.name + ".manifest.jsonl"), force) as manifest:
        pending = [item for item in items if item.key not in manifest.done]
        reused = f"; {len(items) - len(pending)} already done (in {manifest.path.name}), generating {len(pending)}" if len(pending) < len(items) else ""
        log(f"generating {len(prompts)} prompt(s) × {gc.num_samples} sample(s) with {checkpoint}{reused}")
        # The model loads only when something is missing: a finished re-run (cron) returns at once, without torch.
        loaded = _load(checkpoint) if pending else None
        if stream:
            _stream(loaded, gc, items, manifest, stream_to)
        elif pending:
            _sample_in_batches(loaded, gc, pending, manifest)
        rows = [{**({"messages": item.messages} if item.messages is not None else {}),
                 "input": item.shown, "prompt": item.prompt, "completion": manifest.done[item.key]["completion"], "sample": item.sample,
                 "seed": item.seed, "new_tokens": manifest.done[item.key]["new_tokens"], "finish_reason": manifest.done[item.key]["finish_reason"],
                 "params": params, "checkpoint": str(checkpoint)} for item in items]
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_json_atomic(out.with_name(out.name + ".provenance.json"), {
            "outputs": str(out), "checkpoint": str(checkpoint), "backend": backend_of_checkpoint(checkpoint),
            "count": len(rows), "versions": software_versions(), "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
        })
        manifest.finish([item.key for item in items])
    return TextOutputs(out, len(rows), stream)


class _Item(NamedTuple):
    key: str  # the manifest's key: everything the completion depends on
    shown: str  # the input as the user wrote it
    prompt: str  # the full prompt text (template and few-shot examples filled in, or the chat template's rendering)
    sample: int
    seed: int
    messages: list | None = None  # the conversation, for 'messages' rows: written back unchanged beside the reply


def _load(checkpoint: Path):
    from aigc_cli.inference.loading import load_model

    return load_model(checkpoint, modality="text")


def _sample_in_batches(loaded, gc: GenerateConfig, pending: list[_Item], manifest: OutputManifest) -> None:
    from aigc_cli.inference.text_decoding import sample_texts

    for first in range(0, len(pending), gc.batch_size):
        chunk = pending[first:first + gc.batch_size]
        for item, completion in zip(chunk, sample_texts(loaded, [item.prompt for item in chunk], gc, [item.seed for item in chunk])):
            _record(manifest, item, completion)


def _stream(loaded, gc: GenerateConfig, items: list[_Item], manifest: OutputManifest, stream_to) -> None:
    """Every prompt and its completion as it grows; finished ones are written from the manifest."""

    def on_text(piece: str) -> None:
        stream_to.write(piece)
        stream_to.flush()

    for item in items:
        stream_to.write(f"\n--- prompt {item.shown!r} sample {item.sample}\n{item.prompt}")
        if item.key in manifest.done:
            stream_to.write(manifest.done[item.key]["completion"] + "\n")
            continue
        from aigc_cli.inference.text_decoding import sample_texts

        [completion] = sample_texts(loaded, [item.prompt], gc, [item.seed], on_text)
        stream_to.write("\n")
        stream_to.flush()
        _record(manifest, item, completion)


def _record(manifest: OutputManifest, item: _Item, completion) -> None:
    manifest.add({"key": item.key, "completion": completion.text, "new_tokens": completion.new_tokens,
                  "finish_reason": completion.finish_reason})

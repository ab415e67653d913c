"""`aigc generate` for text: one sampling loop over any backend, JSONL out.

Every completion has its own random generator, seeded from (seed, prompt, sample number), so
a completion does not change when other prompts or more samples are added to the batch.
Prompts are sampled generate.batch_size at a time: left-padded into one batch that shares one
forward pass per token and one key/value cache, each row still drawing from its own generator.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from aigc_cli.atomic_files import remove_stale_temporaries, write_json_atomic, write_text_atomic
from aigc_cli.backends import backend_of_checkpoint, get_backend, spec
from aigc_cli.checkpoints import checkpoint_identity, load_weights, resolve_checkpoint
from aigc_cli.config import ExperimentConfig, GenerateConfig
from aigc_cli.data.pairs import PairRecord, fill_template, read_pair_records
from aigc_cli.data.records import is_jsonl, read_jsonl, read_lines, text_fields
from aigc_cli.data.tokenization import eos_id, load_tokenizer
from aigc_cli.devices import pick_device
from aigc_cli.errors import AigcError
from aigc_cli.locks import exclusive_lock
from aigc_cli.manifest import OutputManifest, item_key
from aigc_cli.provenance import software_versions


@dataclass
class LoadedModel:
    checkpoint: Path
    backend_name: str
    backend: object
    model: torch.nn.Module
    tokenizer: object
    eos_id: int
    device: str


def load_checkpoint_for_inference(path: str | Path, device: str = "auto") -> LoadedModel:
    checkpoint = resolve_checkpoint(path)
    name = backend_of_checkpoint(checkpoint)
    backend = get_backend(name)
    device = pick_device(device, "device")
    tokenizer = load_tokenizer(checkpoint)
    model = load_weights(backend, checkpoint, device)
    model.eval()
    return LoadedModel(checkpoint, name, backend, model, tokenizer, checkpoint_eos_id(checkpoint, tokenizer), device)


def checkpoint_eos_id(checkpoint: Path, tokenizer) -> int:
    """The end-of-text id named in tokenizer_config.json, else the usual names."""
    try:
        token = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8")).get("eos_token")
    except (OSError, json.JSONDecodeError):
        token = None
    token = token.get("content") if isinstance(token, dict) else token
    token_id = tokenizer.token_to_id(token) if isinstance(token, str) else None
    return token_id if token_id is not None else eos_id(tokenizer)


def read_prompts_file(path: str | Path) -> list[dict]:
    """Prompt records: one per line ({"source": line}, .gz allowed), or JSONL objects whose fields fill
    generate.template (a `prompt` field is used as it is when there is no template)."""
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
            prompts.append({**text_fields(record, where), "_where": where})
    if not prompts:
        raise AigcError(f"{path} holds no prompts", "put one prompt per line")
    return prompts


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


def logits_processors(gc: GenerateConfig):
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    processors = LogitsProcessorList()
    if gc.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(gc.repetition_penalty))
    if gc.temperature > 0:
        if gc.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(gc.temperature))
        if gc.top_k:
            processors.append(TopKLogitsWarper(gc.top_k))
        if gc.top_p < 1.0:
            processors.append(TopPLogitsWarper(gc.top_p))
    return processors


def completion_uniforms(seeds: list[int], steps: int, device: str) -> torch.Tensor:
    """(rows, steps) uniforms in (0, 1], one seeded stream per completion, drawn up front: a whole
    batch then samples in one vectorised call per step and still gets each row's own draws."""
    return torch.stack([1.0 - torch.rand(steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                        for seed in seeds]).to(device)


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: the first id whose cumulative probability
    reaches u × total. A zero-probability id (cut by top-k/top-p) never is the first, since u > 0."""
    cumulative = probs.double().cumsum(dim=-1)
    targets = (uniforms.unsqueeze(1) * cumulative[:, -1:]).contiguous()
    return torch.searchsorted(cumulative, targets).clamp_(max=probs.size(-1) - 1)


@torch.no_grad()
def sample_completion(loaded: LoadedModel, prompt: str, gc: GenerateConfig, seed: int, processors,
                      on_text: Callable[[str], None] | None = None) -> tuple[str, int, str]:
    """(completion, new tokens, finish reason) for one prompt."""
    tok = loaded.tokenizer
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    ids = torch.tensor([[loaded.eos_id, *prompt_ids]] if not prompt_ids else [prompt_ids], device=loaded.device)
    uniforms = completion_uniforms([seed], gc.max_new_tokens, loaded.device)
    new: list[int] = []
    shown = ""
    state = None
    finish = "length"
    for step in range(gc.max_new_tokens):
        logits, state = loaded.backend.next_token_logits(loaded.model, ids, state)
        scores = processors(ids, logits)
        if gc.temperature == 0:
            next_id = scores.argmax(dim=-1, keepdim=True)
        else:
            next_id = draw_tokens(torch.softmax(scores, dim=-1), uniforms[:, step])
        if next_id.item() == loaded.eos_id:
            finish = "eos"
            break
        new.append(next_id.item())
        ids = torch.cat([ids, next_id], dim=1)
        text = tok.decode(new) if on_text is not None or gc.stop else ""
        cut = min((text.find(s) for s in gc.stop if s and s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        if on_text is not None and not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            on_text(text[len(shown):])
            shown = text
        if finish == "stop":
            return text, len(new), finish
    return tok.decode(new), len(new), finish


# Settings that change no completion: they shape the prompt text (which is in the key itself),
# pick how many samples there are, or belong to images. Everything else is part of the key.
_NOT_IN_KEY = {"prompts", "out", "num_samples", "template", "few_shot", "rstrip_prompt", "seed", "images", "batch_size"}


@torch.no_grad()
def sample_batch(loaded: LoadedModel, prompts: list[str], gc: GenerateConfig, seeds: list[int],
                 processors) -> list[tuple[str, int, str]]:
    """(completion, new tokens, finish reason) per prompt, as `sample_completion` gives them one at
    a time. Backends without a padded forward (rnn: padding would flow through its state) and
    prompts that would outgrow the context window (they need the sliding re-encode) go one at a time."""
    tok, backend = loaded.tokenizer, loaded.backend
    rows = [(tok.encode(p, add_special_tokens=False).ids if p else []) or [loaded.eos_id] for p in prompts]
    limit = backend.context_length(loaded.model)
    together = [i for i, row in enumerate(rows)
                if spec(loaded.backend_name).padded_decoding and (limit is None or len(row) + gc.max_new_tokens <= limit)]
    results: dict[int, tuple[str, int, str]] = {}
    if len(together) > 1:
        results.update(zip(together, _sample_padded(loaded, [rows[i] for i in together], gc, [seeds[i] for i in together], processors)))
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        if i not in results:
            results[i] = sample_completion(loaded, prompt, gc, seed, processors)
    return [results[i] for i in range(len(prompts))]


def _sample_padded(loaded: LoadedModel, rows: list[list[int]], gc: GenerateConfig, seeds: list[int],
                   processors) -> list[tuple[str, int, str]]:
    device, eos = loaded.device, loaded.eos_id
    width = max(map(len, rows))
    ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    # The repetition penalty looks at every id in a row; padding stands in for the row's first real
    # token, which the row holds anyway, so each row is penalised for its own tokens only.
    first_real = torch.tensor([[width - len(r)] for r in rows], device=device)
    seen = torch.where(mask.bool(), ids, ids.gather(1, first_real))
    uniforms = completion_uniforms(seeds, gc.max_new_tokens, device)
    new: list[list[int]] = [[] for _ in rows]
    finish, texts = ["length"] * len(rows), [None] * len(rows)
    live = list(range(len(rows)))  # the rows still in the batch tensors, in order
    state = None
    for step in range(gc.max_new_tokens):
        logits, state = loaded.backend.padded_next_token_logits(loaded.model, ids, mask, state)
        scores = processors(seen, logits)
        if gc.temperature == 0:
            next_ids = scores.argmax(dim=-1, keepdim=True)
        else:  # each row's own random numbers: the draw is the one that row gets alone
            next_ids = draw_tokens(torch.softmax(scores, dim=-1), uniforms[live, step])
        done = []
        for j, (i, token) in enumerate(zip(live, next_ids[:, 0].tolist())):
            if token == eos:
                finish[i] = "eos"
                done.append(j)
                continue
            new[i].append(token)
            if gc.stop:
                text = loaded.tokenizer.decode(new[i])
                cut = min((text.find(s) for s in gc.stop if s and s in text), default=-1)
                if cut >= 0:
                    texts[i], finish[i] = text[:cut], "stop"
                    done.append(j)
        if len(done) == len(live):
            break
        ids, seen = torch.cat([ids, next_ids], dim=1), torch.cat([seen, next_ids], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        if done:  # finished rows leave the batch (and the key/value cache): no more work spent on them
            keep = torch.tensor([j for j in range(len(live)) if j not in done], device=device)
            ids, seen, mask = ids[keep], seen[keep], mask[keep]
            state.batch_select_indices(keep)
            live = [live[j] for j in keep.tolist()]
    return [(texts[i] if texts[i] is not None else loaded.tokenizer.decode(new[i]), len(new[i]), finish[i]) for i in range(len(rows))]


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
            lines += ["  " + (row["prompt"] + row["completion"]).replace("\n", " ⏎ ")[:160] for _, row in rows]
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
    prompts = build_prompts(gc, prompts if prompts else [{"source": p} for p in gc.prompts])
    params = gc.model_dump(mode="json", exclude={"prompts", "out"})
    identity = checkpoint_identity(checkpoint)
    decoding = gc.model_dump(mode="json", exclude=_NOT_IN_KEY)
    items = []  # (key, input as shown, full prompt, sample number, seed)
    for shown, prompt in prompts:
        for sample in range(gc.num_samples):
            seed = completion_seed(gc.seed, prompt, sample)
            key = item_key(checkpoint=identity, prompt=prompt, params=decoding, seed=seed, sample=sample)
            items.append((key, shown, prompt, sample, seed))
    with OutputManifest(out.with_name(out.name + ".manifest.jsonl"), force) as manifest:
        pending = [item for item in items if item[0] not in manifest.done]
        reused = f"; {len(items) - len(pending)} already done (in {manifest.path.name}), generating {len(pending)}" if len(pending) < len(items) else ""
        log(f"generating {len(prompts)} prompt(s) × {gc.num_samples} sample(s) with {checkpoint}{reused}")
        # The model loads only when something is missing: a finished re-run (cron) returns at once.
        loaded = load_checkpoint_for_inference(checkpoint) if pending else None
        processors = logits_processors(gc) if pending else None
        if stream:
            for key, shown, prompt, sample, seed in items:
                stream_to.write(f"\n--- prompt {shown!r} sample {sample}\n{prompt}")
                if key in manifest.done:
                    stream_to.write(manifest.done[key]["completion"] + "\n")
                    continue
                on_text = lambda piece: (stream_to.write(piece), stream_to.flush())  # noqa: E731
                completion, n_tokens, finish = sample_completion(loaded, prompt, gc, seed, processors, on_text)
                stream_to.write("\n")
                stream_to.flush()
                manifest.add({"key": key, "completion": completion, "new_tokens": n_tokens, "finish_reason": finish})
        else:
            for first in range(0, len(pending), gc.batch_size):
                chunk = pending[first:first + gc.batch_size]
                results = sample_batch(loaded, [item[2] for item in chunk], gc, [item[4] for item in chunk], processors)
                for item, (completion, n_tokens, finish) in zip(chunk, results):
                    manifest.add({"key": item[0], "completion": completion, "new_tokens": n_tokens, "finish_reason": finish})
        rows = [{"input": shown, "prompt": prompt, "completion": manifest.done[key]["completion"], "sample": sample, "seed": seed,
                 "new_tokens": manifest.done[key]["new_tokens"], "finish_reason": manifest.done[key]["finish_reason"],
                 "params": params, "checkpoint": str(checkpoint)} for key, shown, prompt, sample, seed in items]
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_json_atomic(out.with_name(out.name + ".provenance.json"), {
            "outputs": str(out), "checkpoint": str(checkpoint), "backend": backend_of_checkpoint(checkpoint),
            "count": len(rows), "versions": software_versions(), "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
        })
        manifest.finish([item[0] for item in items])
    return TextOutputs(out, len(rows), stream)

"""`aigc generate` for text: one sampling loop over any backend, JSONL out.

Every completion has its own random generator, seeded from (seed, prompt, sample number), so
a completion does not change when other prompts or more samples are added to the batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from aigc_cli.atomic_files import write_json_atomic, write_text_atomic
from aigc_cli.backends import backend_of_checkpoint, get_backend
from aigc_cli.checkpoints import resolve_checkpoint
from aigc_cli.config import ExperimentConfig, GenerateConfig
from aigc_cli.data.tokenization import eos_id, load_tokenizer
from aigc_cli.errors import AigcError
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
    device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    tokenizer = load_tokenizer(checkpoint)
    model = backend.load(checkpoint, device)
    model.eval()
    return LoadedModel(checkpoint, name, backend, model, tokenizer, eos_id(tokenizer), device)


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line, or JSONL records with a `prompt` field (or bare JSON strings)."""
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"prompts file not found: {path}", "pass an existing file to --prompts-file")
    prompts = []
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not jsonl:
            prompts.append(line)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AigcError(f"{path}:{number}: malformed JSON ({exc.msg})", "each line must be a JSON object with a 'prompt' field") from None
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            prompts.append(record["prompt"])
        elif isinstance(record, str):
            prompts.append(record)
        else:
            raise AigcError(f"{path}:{number}: no string 'prompt' field", "each line must look like {\"prompt\": \"...\"}")
    if not prompts:
        raise AigcError(f"{path} holds no prompts", "put one prompt per line")
    return prompts


def completion_seed(seed: int, prompt: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _logits_processors(gc: GenerateConfig):
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


@torch.no_grad()
def sample_completion(loaded: LoadedModel, prompt: str, gc: GenerateConfig, seed: int, processors,
                      on_text: Callable[[str], None] | None = None) -> tuple[str, int, str]:
    """(completion, new tokens, finish reason) for one prompt."""
    tok = loaded.tokenizer
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    ids = torch.tensor([[loaded.eos_id, *prompt_ids]] if not prompt_ids else [prompt_ids], device=loaded.device)
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    new: list[int] = []
    shown = ""
    state = None
    finish = "length"
    for _ in range(gc.max_new_tokens):
        logits, state = loaded.backend.next_token_logits(loaded.model, ids, state)
        scores = processors(ids, logits)
        if gc.temperature == 0:
            next_id = scores.argmax(dim=-1, keepdim=True)
        else:
            next_id = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
        if next_id.item() == loaded.eos_id:
            finish = "eos"
            break
        new.append(next_id.item())
        ids = torch.cat([ids, next_id], dim=1)
        if on_text is not None:
            text = tok.decode(new)
            if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                on_text(text[len(shown):])
                shown = text
    return tok.decode(new), len(new), finish


def generate_text(cfg: ExperimentConfig, checkpoint: str | Path | None, prompts: list[str] | None = None,
                  out: str | Path | None = None, stream: bool = False, stream_to=sys.stdout,
                  log: Callable[[str], None] = lambda _: None) -> tuple[Path, int]:
    gc = cfg.generate
    loaded = load_checkpoint_for_inference(checkpoint or cfg.train.out_dir)
    prompts = prompts if prompts else gc.prompts
    out = Path(out or gc.out or Path(cfg.train.out_dir) / "generations.jsonl")
    log(f"generating {len(prompts)} prompt(s) × {gc.num_samples} sample(s) with {loaded.checkpoint}")
    processors = _logits_processors(gc)
    params = gc.model_dump(mode="json", exclude={"prompts", "out"})
    rows = []
    for prompt in prompts:
        for sample in range(gc.num_samples):
            seed = completion_seed(gc.seed, prompt, sample)
            on_text = None
            if stream:
                stream_to.write(f"\n--- prompt {prompt!r} sample {sample}\n{prompt}")
                on_text = lambda piece: (stream_to.write(piece), stream_to.flush())
            completion, n_tokens, finish = sample_completion(loaded, prompt, gc, seed, processors, on_text)
            if stream:
                stream_to.write("\n")
                stream_to.flush()
            rows.append({"prompt": prompt, "completion": completion, "sample": sample, "seed": seed,
                         "new_tokens": n_tokens, "finish_reason": finish, "params": params,
                         "checkpoint": str(loaded.checkpoint)})
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json_atomic(out.with_name(out.name + ".provenance.json"), {
        "outputs": str(out), "checkpoint": str(loaded.checkpoint), "backend": loaded.backend_name,
        "count": len(rows), "versions": software_versions(), "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
    })
    return out, len(rows)

"""`aigc finetune`: full or LoRA fine-tuning of a causal LM on prompt/response pairs or conversations.

A recipe, not a second loop: load the base model and its tokenizer, turn the records into
examples whose loss covers the responses only (pairs through finetune.template, conversations
through the chat template), optionally add LoRA adapters or freeze blocks, then hand everything
to `run_training` (loop.py), the loop `aigc train` runs. For conversations the tokenizer gains
the template's tokens (the model a mean-initialised, trainable embedding row for each), and the
checkpoint's tokenizer config and generation config carry the template and its end-of-turn token.
"""

from __future__ import annotations

import gc
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aigc_cli.runs.atomic_files import staging_dir
from aigc_cli.backends import get_backend
from aigc_cli.runs.checkpoints import resolve_base
from aigc_cli.config import PREFERENCE_METHODS, ExperimentConfig, FinetuneConfig
from aigc_cli.data.chat_examples import ChatExamples, PreferenceExamples, prepare_chat_template
from aigc_cli.data.chat_formats import read_conversations, read_preference_pairs, resolve_format
from aigc_cli.data.pairs import PairExamples, read_pair_records
from aigc_cli.data.tokenization import copy_tokenizer_files
from aigc_cli.devices import pick_device
from aigc_cli.errors import AigcError
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.training.loop import TrainingJob, run_training, stats_lines


@dataclass
class FinetuneResult:
    run_dir: Path
    checkpoint: Path
    val_loss: float
    trainable_params: int
    total_params: int
    truncated: int
    merged: Path | None = None
    method: str = "full"  # finetune.method
    stats: dict[str, float] = field(default_factory=dict)  # what the loss reported (a preference method's rewards)
    quantization: str = "none"  # finetune.quantization
    dropped: int = 0  # examples with no trained token left after truncation
    format: str = "pairs"  # finetune.format, as detected for auto

    def to_json(self) -> dict:
        out = {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "val_loss": self.val_loss,
               "trainable_params": self.trainable_params, "total_params": self.total_params, "truncated": self.truncated,
               "dropped": self.dropped, "format": self.format}
        out = {**out, "stats": self.stats} if self.stats else out
        return out if self.merged is None else {**out, "merged": str(self.merged)}

    def summary_lines(self) -> list[str]:
        share = self.trainable_params / max(1, self.total_params)
        lines = [f"run directory: {self.run_dir}", f"checkpoint ({self.method}{'' if self.quantization == 'none' else ', on a ' + self.quantization + ' base'}): {self.checkpoint}",
                 f"trainable parameters: {self.trainable_params:,} of {self.total_params:,} ({share:.2%})",
                 f"validation loss: {self.val_loss:.4f}"] + stats_lines(self.stats)
        if self.merged is None:
            return lines
        if self.quantization != "none":  # the adapter trained on the quantized base; merging goes into the original weights
            return lines + [f"merged model: {self.merged} (the adapter merged into the full-precision base, which trained {self.quantization}-quantized)"]
        return lines + [f"merged model: {self.merged}"]


def load_base_model(fc: FinetuneConfig, device: str, quantization: str = "none", compute_dtype: torch.dtype = torch.float32):
    """(resolved ref, model on `device`, tokenizer). quantization 4bit/8bit: the model is loaded
    quantized and frozen for QLoRA (training/quantization.py), its 4-bit matmuls in compute_dtype."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from aigc_cli.backends.gpt import _quiet_transformers, load_pretrained

    _quiet_transformers()
    ref = resolve_base(fc.base)
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=fc.trust_remote_code)
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not fc.trust_remote_code:
            raise AigcError(f"finetune.base {ref} is a '{config.model_type}' model, not a causal language model",
                            "fine-tune a decoder-only model (GPT-2, Llama, Qwen, ... or a checkpoint of `aigc train` with backend gpt)")
        if quantization == "none":
            model = load_pretrained(ref, fc.trust_remote_code, config)
        else:
            from aigc_cli.training.quantization import load_quantized

            model = load_quantized(ref, fc.trust_remote_code, config, quantization, device, compute_dtype)
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=fc.trust_remote_code)
    except AigcError:
        raise
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "check the directory" if Path(ref).exists() else "check the hub id and your connection, or pass a local model directory"
        raise AigcError(f"cannot load finetune.base {ref}: {first}", hint) from None
    if tokenizer.eos_token_id is None:
        raise AigcError(f"the tokenizer of {ref} has no end-of-text token", "use a base model whose tokenizer defines eos_token")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise AigcError(f"tokenizer/model mismatch in {ref}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings",
                        "use the tokenizer that was saved with this model")
    return ref, model.to(device) if quantization == "none" else model, tokenizer  # a quantized model is placed as it loads


def freeze_bottom_layers(model: torch.nn.Module, n: int) -> None:
    if n == 0:
        return
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == model.config.num_hidden_layers), None)
    if blocks is None:
        raise AigcError("finetune.freeze_layers: cannot find this model's stack of blocks", "set finetune.freeze_layers=0")
    if n >= len(blocks):
        raise AigcError(f"finetune.freeze_layers={n} but the model has {len(blocks)} blocks", f"use at most {len(blocks) - 1}")
    for block in blocks[:n]:
        block.requires_grad_(False)


@dataclass
class FinetuneData:
    format: str  # finetune.format, auto resolved
    train: object  # PairExamples or ChatExamples
    val: object
    template: object | None = None  # chat_examples.ChatTemplate for chat formats

    @property
    def truncated(self) -> int:
        return self.train.truncated + self.val.truncated

    @property
    def dropped(self) -> int:
        return self.train.dropped + self.val.dropped


def _held_out(train: list, fc: FinetuneConfig, what: str) -> tuple[list, list]:
    order = list(range(len(train)))
    random.Random(fc.seed).shuffle(order)
    n_val = max(1, int(len(train) * fc.val_fraction))
    if len(train) - n_val < 1:
        raise AigcError(f"only {len(train)} training {what}(s): nothing left after holding out validation", f"add {what}s or give finetune.val_file")
    return [train[i] for i in sorted(order[n_val:])], [train[i] for i in sorted(order[:n_val])]


def data_format(fc: FinetuneConfig, quiet: bool = True) -> str:
    """finetune.format, auto resolved from the first training record (and the detection stated)."""
    if not fc.train_file:
        if fc.format not in ("auto", "pairs"):
            raise AigcError(f"finetune.format {fc.format} reads records from finetune.train_file", "set finetune.train_file (source_file/target_file are pairs)")
        return "pairs"
    # A config that set up the pairs template keeps meaning pairs, as before formats were detected.
    pairs_configured = bool({"template", "prompt_field", "response_field"} & fc.model_fields_set)
    fmt, note = resolve_format(fc.train_file, fc.format, fc.columns, fc.prompt_field, fc.response_field, pairs_configured)
    if note and not quiet:
        print(note, file=sys.stderr, flush=True)
    return fmt


def method_fits_format(fc: FinetuneConfig, fmt: str) -> None:
    """Preference methods learn from preference records and only they do; checked before the base loads."""
    preference = fc.method in PREFERENCE_METHODS
    if preference != (fmt == "preference"):
        if preference:
            raise AigcError(f"finetune.method {fc.method} learns from preference pairs (prompt, chosen, rejected), but {fc.train_file or fc.source_file} holds {fmt} records",
                            "give preference records in finetune.train_file (finetune.format: preference), or use finetune.method lora or full")
        raise AigcError(f"{fc.train_file} holds preference pairs (chosen/rejected), which finetune.method {fc.method} cannot learn from",
                        "use a preference method (finetune.method dpo, orpo or simpo), or give conversations for supervised fine-tuning")


def _examples(fc: FinetuneConfig, fmt: str, tokenizer, max_length: int, packing: bool, shared_prompt: bool = False) -> FinetuneData:
    preference = fc.method in PREFERENCE_METHODS
    if fmt == "pairs":
        train = read_pair_records(fc.train_file, fc.source_file, fc.target_file, fc.prompt_field, fc.response_field, "finetune.train")
        if fc.val_file or (fc.val_source_file and fc.val_target_file):
            val = read_pair_records(fc.val_file, fc.val_source_file, fc.val_target_file, fc.prompt_field, fc.response_field, "finetune.val")
        else:
            train, val = _held_out(train, fc, "pair")
        make = lambda records: PairExamples(records, tokenizer, fc.template, fc.response_field, max_length, tokenizer.eos_token_id, packing)
        return FinetuneData(fmt, make(train), make(val))
    if fc.val_source_file or fc.val_target_file:
        raise AigcError(f"finetune.val_source_file/val_target_file hold pairs, not {fmt} records", "give finetune.val_file in the training data's format")
    read = (lambda path: read_preference_pairs(path, fc.columns)) if preference else (lambda path: read_conversations(path, fmt, fc.columns))
    train = read(fc.train_file)
    val = read(fc.val_file) if fc.val_file else None
    if val is None:
        train, val = _held_out(train, fc, "preference pair" if preference else "conversation")
    template = prepare_chat_template(tokenizer, fc.chat_template)
    if preference:  # one forward over chosen + rejected: a [prompt | chosen | rejected] row per pair, or both padded
        make = lambda pairs: PreferenceExamples(pairs, tokenizer, template, max_length, tokenizer.eos_token_id, shared_prompt)
        return FinetuneData(fmt, make(train), make(val), template)
    make = lambda conversations: ChatExamples(conversations, tokenizer, template, fc.train_on, max_length, tokenizer.eos_token_id, packing)
    return FinetuneData(fmt, make(train), make(val), template)


def prepare_for_chat(model: torch.nn.Module, tokenizer, template) -> None:
    """The model side of a chat template: embedding rows for its added tokens (the mean of the
    existing rows: a neutral start that a random row would not be), and the end-of-turn token
    among the ids generation stops at (generation_config.json's eos_token_id, a list)."""
    from aigc_cli.backends.gpt import make_room_for_tokens

    make_room_for_tokens(model, len(tokenizer), template.added_ids)
    stops = [template.end_of_turn_id] + [i for i in [tokenizer.eos_token_id] if i != template.end_of_turn_id]
    model.generation_config.eos_token_id = stops


def _packing(fc: FinetuneConfig, model: torch.nn.Module, quiet: bool) -> bool:
    from aigc_cli.backends.gpt import separates_packed_examples

    if not fc.packing or separates_packed_examples(model):
        return fc.packing
    if not quiet:
        print(f"finetune.packing: a {model.config.model_type} model here does not keep packed examples apart by their position ids "
              "(its attention would cross from one example into the next), so examples are padded, not packed", file=sys.stderr, flush=True)
    return False


def _shared_prompt(model: torch.nn.Module, quiet: bool) -> bool:
    """Preference pairs go as one [prompt | chosen | rejected] row each where the model scores such
    rows as it scores the two sequences (training/preference.shares_prompts), else as [2B, T]."""
    from aigc_cli.training.preference import shares_prompts

    if shares_prompts(model):
        return True
    if not quiet:
        print(f"preference pairs: this {model.config.model_type} model does not take a 4D attention mask with position ids "
              "as given, so chosen and rejected are two padded rows each (their prompt computed twice), not one shared-prompt row",
              file=sys.stderr, flush=True)
    return False


def _save_tokenizer(tokenizer, tokenizer_dir: Path) -> None:
    # save_jinja_files=False: the chat template goes into tokenizer_config.json, where every
    # transformers version (and serving stacks reading the config) look for it.
    with staging_dir(tokenizer_dir, replace=True) as tmp:
        tokenizer.save_pretrained(tmp, save_jinja_files=False)


def finetune_model(cfg: ExperimentConfig, resume: bool = False, merge: bool = False, quiet: bool = False) -> FinetuneResult:
    # Locked before the (slow) base model loads, so a second run on the directory fails at once.
    with exclusive_lock(cfg.train.out_dir, "run directory"):
        return _finetune(cfg, resume, merge, quiet)


def _finetune(cfg: ExperimentConfig, resume: bool, merge: bool, quiet: bool) -> FinetuneResult:
    fc, tc = cfg.finetune, cfg.train
    from aigc_cli.backends.text_to_image import is_pipeline_dir

    if fc.base and is_pipeline_dir(fc.base):  # a Stable-Diffusion-style pipeline: text-to-image on captioned images
        from aigc_cli.training.text_to_image import finetune_pipeline

        return finetune_pipeline(cfg, resume, merge, quiet)
    if fc.text_to_image.model_fields_set:
        raise AigcError("finetune.text_to_image applies to Stable-Diffusion-style pipelines, but finetune.base is not one",
                        "point finetune.base at a diffusers pipeline directory (model_index.json, unet/, text_encoder/), or remove finetune.text_to_image")
    device = pick_device(tc.device)
    quantized = fc.quantization != "none"
    if quantized:
        from aigc_cli.training.quantization import check_quantized_run, compute_dtype

        check_quantized_run(tc, device)
    fmt = data_format(fc, quiet)
    method_fits_format(fc, fmt)
    base_ref, base_model, tokenizer = load_base_model(fc, device, fc.quantization, compute_dtype(tc, device) if quantized else torch.float32)
    context = getattr(base_model.config, "n_positions", None) or getattr(base_model.config, "max_position_embeddings", None) or 1024
    max_length = min(fc.max_length or context, context)
    packing = fc.method not in PREFERENCE_METHODS and _packing(fc, base_model, quiet)  # preference pairs: one padded forward over chosen + rejected
    shared_prompt = fc.method in PREFERENCE_METHODS and _shared_prompt(base_model, quiet)
    data = _examples(fc, fmt, tokenizer, max_length, packing, shared_prompt)
    if data.template is not None:
        prepare_for_chat(base_model, tokenizer, data.template)
    if not quiet:
        chat = f"; chat template: {data.template.name}, loss on {fc.train_on.replace('_', ' ')} tokens" if data.template else ""
        rows = "packed rows" if packing else ("pairs" if fc.method in PREFERENCE_METHODS else "examples")
        print(f"fine-tuning {base_ref} ({fc.method}) on {len(data.train):,} {rows}, "
              f"{len(data.val):,} for validation; {data.truncated} truncated to {max_length} tokens, "
              f"{data.dropped} dropped with no trained token left{chat}", flush=True, file=sys.stderr)

    run_dir = Path(tc.out_dir)
    tokenizer_dir = run_dir / "tokenizer"  # the base tokenizer (+ chat template), saved once, copied into every checkpoint
    if not (tokenizer_dir / "tokenizer.json").is_file():
        _save_tokenizer(tokenizer, tokenizer_dir)
    new_tokens = data.template.added_ids if data.template else []
    if fc.method in PREFERENCE_METHODS:
        from aigc_cli.training.preference import preference_backend

        backend_name, backend = preference_backend(fc, base_model)  # the loss is the method's; the rest gpt's or lora's
    else:
        backend_name = "lora" if fc.method == "lora" else "gpt"
        backend = get_backend(backend_name)

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        if backend_name == "lora":
            if previous is None:
                model = backend.add_adapters(base_model, fc.lora, new_tokens)
            elif quantized:  # onto the quantized base in memory (backend.load brings the full-precision one)
                model = backend.load_adapter(base_model, previous, trainable=True)
            else:
                model = backend.load(previous, device, trainable=True)
            backend.set_loraplus_ratio(model, fc.lora.loraplus_lr_ratio)
            return model
        model = backend.load(previous, device) if previous else base_model
        freeze_bottom_layers(model, fc.freeze_layers)
        return model

    job = TrainingJob(backend_name, backend, make_model, data.train, data.val, max_length, tokenizer_dir,
                      provenance={"base_model": base_ref, "method": fc.method, "quantization": fc.quantization, "format": data.format},
                      verb="finetune")
    result = run_training(cfg, job, resume=resume, quiet=quiet)

    if quantized:
        from aigc_cli.training.quantization import parameter_counts

        trainable, total = parameter_counts(base_model)  # it holds the trained adapters (peft injects them in place)
        # Let the quantized model go before --merge loads the full-precision base: never both in memory.
        base_model = job = make_model = None
        gc.collect()
        final = backend.load(result.checkpoint, "cpu", trainable=True) if merge else None
    else:
        final = backend.load(result.checkpoint, "cpu", trainable=True) if backend_name == "lora" else backend.load(result.checkpoint, "cpu")
        if backend_name == "gpt":
            freeze_bottom_layers(final, fc.freeze_layers)
        trainable = sum(p.numel() for p in final.parameters() if p.requires_grad)
        total = sum(p.numel() for p in final.parameters())
    merged = None
    if merge:
        if backend_name != "lora":
            raise AigcError("--merge applies to LoRA adapters; a full fine-tune is already a standalone model", f"use {result.checkpoint}")
        merged = run_dir / "merged"
        with staging_dir(merged, replace=True) as tmp:
            backend.merge(final.eval()).save_pretrained(tmp)
            copy_tokenizer_files(tokenizer_dir, tmp, max_length)
    return FinetuneResult(result.run_dir, result.checkpoint, result.val_loss, trainable, total,
                          data.truncated, merged, fc.method, result.stats, fc.quantization, data.dropped, data.format)

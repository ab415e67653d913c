"""The experiment schema: one YAML file, dotted overrides merged in, validated before anything heavy.

Every default lives here, in one place; the README's config reference is generated from these
classes. This module must never import torch, transformers or diffusers: config errors and
`--help` have to be instant.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aigc_cli.errors import AigcError


class Section(BaseModel):
    # Unknown keys are errors (with a did-you-mean), never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data
class CleaningConfig(Section):
    unicode: Literal["none", "NFC", "NFKC"] = Field("NFC", description="Unicode normalisation form applied to every line.")
    whitespace: bool = Field(False, description="Collapse runs of spaces/tabs to one space and strip line ends.")
    strip_html: bool = Field(False, description="Remove HTML tags and unescape entities (&amp; → &).")
    dedupe_lines: bool = Field(False, description="Drop exact-duplicate lines (keeps 8 bytes per distinct line in memory).")


class TokenizerConfig(Section):
    kind: Literal["char", "bpe", "pretrained"] = Field("char", description="char: one token per character (byte fallback for unseen ones); bpe: byte-level BPE trained on the corpus; pretrained: the tokenizer of an existing directory.")
    vocab_size: int = Field(8000, ge=1, description="Vocabulary size for `bpe` (at least 257: 256 bytes + end-of-text).")
    path: Optional[str] = Field(None, description="For `pretrained`: a directory holding tokenizer.json (a checkpoint or prepared-data directory).")
    max_train_bytes: int = Field(16_000_000, ge=1, description="Train the BPE merges on at most this many bytes of the corpus (the whole corpus is still encoded). BPE training holds about 10-12x this in memory (16 MB: ~320 MB peak).")


class DataConfig(Section):
    source: str = Field(..., description="A .txt file, a directory of .txt files, a .jsonl file, or `builtin:python-docs` (text shipped with Python itself).")
    format: Literal["auto", "text", "jsonl"] = Field("auto", description="auto: by file extension (.jsonl/.json → jsonl).")
    jsonl_field: str = Field("text", description="For JSONL sources: the field that holds the text.")
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of the text held out for validation.")
    split: Literal["random", "tail"] = Field("random", description="random: documents (or 64-line chunks) go to val at random with `seed`; tail: the last `val_fraction` of the text (nanoGPT's split).")
    seed: int = Field(1337, description="Seed of the train/val split.")
    prepared_dir: str = Field("prepared/default", description="Where `aigc prep` writes the tokenizer and token arrays, and where `train`/`eval` read them.")


# ----------------------------------------------------------------------------- model
class GPTModelConfig(Section):
    backend: Literal["gpt"] = Field("gpt", description="Model family (the default when the key is left out).")
    architecture: Literal["gpt2", "llama"] = Field("gpt2", description="Transformers architecture to instantiate with random weights.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention heads (n_embd must divide by it).")
    n_kv_head: Optional[int] = Field(None, ge=1, description="llama only: key/value heads for grouped-query attention (default n_head).")
    n_embd: int = Field(128, ge=1, description="Hidden size.")
    intermediate_size: Optional[int] = Field(None, ge=1, description="MLP width (default 4×n_embd for gpt2, 8/3×n_embd rounded for llama).")
    block_size: int = Field(64, ge=2, description="Context length in tokens.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals.")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        return self


class RNNModelConfig(Section):
    backend: Literal["rnn"] = Field("rnn", description="Model family.")
    cell: Literal["lstm", "gru", "rnn"] = Field("lstm", description="Recurrent cell.")
    n_layer: int = Field(2, ge=1, description="Stacked recurrent layers.")
    n_embd: int = Field(128, ge=1, description="Embedding size.")
    hidden_size: int = Field(256, ge=1, description="Recurrent state size.")
    block_size: int = Field(64, ge=2, description="Training sequence length (truncated backpropagation through time).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, between layers and before the output.")


ModelConfig = Annotated[Union[GPTModelConfig, RNNModelConfig], Field(discriminator="backend")]


# ----------------------------------------------------------------------------- train
class TrainConfig(Section):
    out_dir: str = Field("runs/default", description="Run directory: resolved config, metrics.jsonl, checkpoints/.")
    seed: int = Field(1337, description="Seeds initialisation, batch order and dropout.")
    max_steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(12, ge=1, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-3, gt=0.0, description="Peak AdamW learning rate.")
    min_lr: float = Field(1e-4, ge=0.0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up from 0 to learning_rate.")
    lr_decay_steps: Optional[int] = Field(None, ge=1, description="Step at which the cosine decay reaches min_lr (default max_steps).")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay, on weight matrices only.")
    beta1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.99, gt=0.0, lt=1.0, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0.0, description="Max gradient norm; 0 disables clipping.")
    eval_every: int = Field(250, ge=1, description="Steps between validation-loss estimates.")
    eval_batches: int = Field(200, ge=1, description="Random validation batches per estimate.")
    save_every: int = Field(1000, ge=0, description="Steps between checkpoints (0: only the final one).")
    keep_checkpoints: int = Field(3, ge=0, description="Keep only the newest N checkpoints (0: keep all).")
    log_every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast or fp32; auto: bf16 on CUDA GPUs that support it, fp32 on CPU.")


# ----------------------------------------------------------------------------- finetune
class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0.0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Optional[list[str]] = Field(None, description="Module names to adapt (null: every attention and MLP projection of the architecture, e.g. c_attn/c_proj/c_fc for GPT-2, q/k/v/o/gate/up/down_proj for Llama).")


class FinetuneConfig(Section):
    base: Optional[str] = Field(None, description="Base model: a local Hugging Face causal-LM directory (e.g. a checkpoint of `aigc train`) or a hub id when online. Required by `aigc finetune`.")
    method: Literal["full", "lora"] = Field("lora", description="full: update every weight (minus frozen layers); lora: train low-rank adapters with peft.")
    trust_remote_code: bool = Field(False, description="Allow a hub model's own Python code to run. Off unless you trust the source.")
    freeze_layers: int = Field(0, ge=0, description="full only: freeze the bottom N transformer blocks.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train_file: Optional[str] = Field(None, description="Training pairs as JSONL (fields named by prompt_field/response_field and the template).")
    source_file: Optional[str] = Field(None, description="Or: a text file of sources, one per line (.gz allowed)...")
    target_file: Optional[str] = Field(None, description="...with the line-aligned responses (.gz allowed).")
    val_file: Optional[str] = Field(None, description="Validation pairs as JSONL (default: val_fraction of the training pairs).")
    val_source_file: Optional[str] = Field(None, description="Or validation sources, one per line.")
    val_target_file: Optional[str] = Field(None, description="...and their line-aligned responses.")
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of training pairs held out when no validation files are given.")
    prompt_field: str = Field("source", description="JSONL field with the input ({source} in the template for line files).")
    response_field: str = Field("target", description="JSONL field with the response; the loss is computed on it (and end-of-text) only.")
    template: str = Field("{source}\n", description="Prompt template filled with the record's fields, e.g. 'German: {source}\\nEnglish: '.")
    max_length: Optional[int] = Field(None, ge=8, description="Truncate prompt+response to this many tokens (default: the base model's context).")
    packing: bool = Field(False, description="Concatenate examples into full max_length rows (faster; examples may attend to the previous one).")
    seed: int = Field(1337, description="Seed of the validation hold-out.")


# ----------------------------------------------------------------------------- generate / eval
class FewShotConfig(Section):
    k: int = Field(0, ge=0, description="Examples put before each input (0: off).")
    examples_file: Optional[str] = Field(None, description="JSONL examples (fields as in the template plus response_field).")
    source_file: Optional[str] = Field(None, description="Or line-aligned source/target text files (.gz allowed).")
    target_file: Optional[str] = None
    response_field: str = Field("target", description="Field holding an example's answer.")
    separator: str = Field("\n", description="Text between examples.")
    seed: int = Field(1337, description="Seed for drawing the examples (per input).")


class GenerateConfig(Section):
    prompts: list[str] = Field(default_factory=lambda: [""], description="Prompts used when none are given on the command line ('' starts from end-of-text).")
    max_new_tokens: int = Field(200, ge=1, description="Stop after this many new tokens (or at end-of-text).")
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy decoding.")
    top_k: Optional[int] = Field(200, ge=1, description="Keep the k most likely tokens (null: off).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1.0: off).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="CTRL-style penalty on tokens already present (1.0: off).")
    num_samples: int = Field(1, ge=1, description="Completions per prompt.")
    seed: int = Field(1337, description="Same seed, same text.")
    template: Optional[str] = Field(None, description="Fill each prompt into this template ({source} is the prompt line; JSONL prompts fill fields by name), e.g. the fine-tuning template.")
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    stop: list[str] = Field(default_factory=list, description="Cut the completion at the first of these strings and stop.")
    rstrip_prompt: bool = Field(False, description="Strip trailing spaces from the final prompt: a base model rarely saw a word-less space token, so 'English: ' invites a newline (the completion then starts with the space). Leave off for models fine-tuned on the template.")
    out: Optional[str] = Field(None, description="JSONL output file (default <train.out_dir>/generations.jsonl).")


class EvalConfig(Section):
    split: Literal["val", "train"] = Field("val", description="Prepared split to score.")
    batch_size: int = Field(16, ge=1, description="Windows scored per forward pass.")
    max_batches: Optional[int] = Field(None, ge=1, description="Score at most this many batches of block_size windows (null: the whole split).")
    metrics: list[Literal["loss", "bleu", "chrf", "rougeL"]] = Field(default_factory=lambda: ["loss"], description="loss: loss and perplexity of a checkpoint on a prepared split; bleu/chrf (sacrebleu) and rougeL (rouge-score): generated text against references.")
    generations: Optional[str] = Field(None, description="For text metrics: the JSONL written by `aigc generate` (its `completion` field).")
    references: Optional[str] = Field(None, description="For text metrics: line-aligned reference texts (.gz allowed) or JSONL with a `reference` field.")
    out: Optional[str] = Field(None, description="JSON report path (default <train.out_dir>/eval/report.json).")


class ExperimentConfig(Section):
    data: Optional[DataConfig] = Field(None, description="Needed by prep, train and eval's loss; a fine-tuning experiment may leave it out.")
    model: ModelConfig = Field(default_factory=GPTModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading
def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read YAML, merge `section.key=value` overrides into it, validate. Raises AigcError."""
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"config file not found: {path}", "pass the path of a YAML experiment file, e.g. configs/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise AigcError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}", "fix the YAML syntax") from None
    except UnicodeDecodeError:
        raise AigcError(f"{path} is not UTF-8 text", "save the config as UTF-8 YAML") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AigcError(f"{path} must hold a mapping of sections (data, model, train, ...), not {type(raw).__name__}", "see configs/ for examples")
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise AigcError(f"bad override {item!r}", "write overrides as section.key=value, e.g. train.max_steps=200")
    try:
        parsed = yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        parsed = value  # not YAML: keep the literal string
    if isinstance(parsed, dict) and not value.lstrip().startswith("{"):
        parsed = value  # "German: {source}" is a template string, not a YAML mapping
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise AigcError(f"override {item!r}: {part} is a value, not a section", "check the key path")
        node = child
    node[parts[-1]] = parsed


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    if isinstance(raw.get("model"), dict) and "backend" not in raw["model"]:
        raw = {**raw, "model": {"backend": "gpt", **raw["model"]}}  # the documented default backend
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(err) for err in exc.errors()]
        message = f"{source}: " + ("; ".join(lines) if len(lines) <= 3 else "; ".join(lines[:3]) + f"; and {len(lines) - 3} more")
        raise AigcError(message, "fix the config or override (see README 'Config reference')") from None


def _describe_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    # For discriminated unions pydantic puts the tag (e.g. "gpt") into the path; users never write it.
    key_path, model_cls = _user_path(loc)
    if err["type"] == "extra_forbidden":
        known = list(model_cls.model_fields) if model_cls else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f" — did you mean '{close[0]}'?" if close else (f" (known keys: {', '.join(known)})" if known else "")
        return f"unknown key '{key_path}'{hint}"
    if err["type"] == "missing":
        return f"missing required key '{key_path}'"
    if err["type"] == "union_tag_invalid":
        return f"'{key_path}.backend' must be one of {err['ctx']['expected_tags']} (got {err['input'].get('backend')!r})" if isinstance(err.get("input"), dict) else f"{key_path}: {err['msg']}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    where = f"'{key_path}'" if key_path else "config"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}{shown}"


def _user_path(loc: list[str]) -> tuple[str, type[BaseModel] | None]:
    """Map pydantic's error location to the dotted key a user wrote, and the model owning its last key."""
    owner: type[BaseModel] | None = ExperimentConfig
    out: list[str] = []
    i = 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        i += 1
        if i == len(loc) or owner is None:
            break
        field = owner.model_fields.get(part)
        models = [a for a in _flatten(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)] if field else []
        if len(models) > 1:  # discriminated union: pydantic puts the tag (e.g. "gpt") next in the path
            owner = next((m for m in models if m.model_fields["backend"].default == loc[i]), None)
            i += owner is not None
        else:
            owner = models[0] if models else None
    return ".".join(out), owner


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [x for a in args for x in _flatten(a)]


def require_data(cfg: ExperimentConfig) -> DataConfig:
    if cfg.data is None:
        raise AigcError("missing required key 'data.source'", "add a data section naming the corpus (see configs/quickstart.yaml)")
    return cfg.data


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML, the form written into every output directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

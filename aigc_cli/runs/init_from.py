"""Continued pretraining (`model.init_from`), the half that needs no torch: which model a run
starts from, what its config.json says about the sizes, whether the prepared data's vocabulary
fits it, and what the run's provenance records about it. preflight.py runs these checks before
anything heavy loads; the weights themselves are loaded by the backend (`start_from`).

The rule for the `model:` keys: the pretrained model's config.json sets architecture, n_layer,
n_head, n_kv_head, n_embd and intermediate_size. Left out, they are filled in from it (so the
run's config.yaml states the real model); given, they must equal the model's values, else exit 2
naming the key. block_size is the training window, not a size of the model: it stays as
configured and must fit the model's context. dropout, given, replaces the model's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aigc_cli.config import ExperimentConfig
from aigc_cli.data.records import sha256_file
from aigc_cli.errors import AigcError
from aigc_cli.runs.checkpoints import CHECKSUMS, latest_good_checkpoint, resolve_base

KEY = "model.init_from"

# model.<key> → the config.json keys that state it: GPT-2's names, then the Llama family's
# (which Qwen, Mistral, Gemma... share).
SIZE_KEYS = {
    "n_layer": ("n_layer", "num_hidden_layers"),
    "n_head": ("n_head", "num_attention_heads"),
    "n_kv_head": ("num_key_value_heads",),
    "n_embd": ("n_embd", "hidden_size"),
    "intermediate_size": ("n_inner", "intermediate_size"),
}
DROPOUT_KEYS = ("resid_pdrop", "attention_dropout")
CONTEXT_KEYS = ("n_positions", "max_position_embeddings")
ARCHITECTURES = ("gpt2", "llama")  # the values model.architecture can name


@dataclass
class PretrainedStart:
    """Where a continued-pretraining run's weights come from."""

    ref: str | None  # an absolute model directory or a hub id; None when resuming (the checkpoint holds the model)
    config: dict  # that model's config.json (when resuming, the checkpoint's)
    resumed_from: Path | None = None  # the checkpoint a resumed run continues from
    dropout: float | None = None  # model.dropout when the config gives it: it replaces the model's own


def pretrained_start(cfg: ExperimentConfig, data_dir: Path, resume: bool = False) -> tuple[ExperimentConfig, PretrainedStart | None]:
    """The config with the pretrained model's sizes filled in, and where the weights come from
    (None: model.init_from is not set). Refuses sizes, a block_size or a prepared vocabulary that
    do not fit the model. A resumed run reads its checkpoint instead: init_from may be gone by
    then (or a hub id, now offline), and the checkpoint is what is loaded."""
    mc = cfg.model
    if getattr(mc, "init_from", None) is None:
        return cfg, None
    checkpoint = latest_good_checkpoint(Path(cfg.train.out_dir), report=lambda _: None) if resume else None
    if checkpoint is not None:
        config = _read_json(checkpoint / "config.json", f"the checkpoint {checkpoint}")
        return with_pretrained_sizes(cfg, config, str(checkpoint)), PretrainedStart(None, config, checkpoint)
    ref = resolve_base(mc.init_from, KEY)
    config = model_config(ref)
    check_vocabulary(ref, config, data_dir)
    own = _stated_dropout(config)
    # Given, and other than the model's own: the run's config.yaml states the model's, so a rerun changes nothing.
    dropout = mc.dropout if "dropout" in mc.model_fields_set and mc.dropout != own else None
    return with_pretrained_sizes(cfg, config, ref), PretrainedStart(ref, config, None, dropout)


def model_config(ref: str) -> dict:
    """The config.json of a resolved model directory or hub id (downloading only that file)."""
    if Path(ref).is_dir():
        return _read_json(Path(ref) / "config.json", f"{KEY} {ref}")
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(ref, "config.json")
    except Exception as exc:  # noqa: BLE001 — the hub client raises many types (not found, gated, network)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot read config.json of {KEY} '{ref}': {first}",
                        "check the hub id and your connection, or pass a local model directory") from None
    return _read_json(Path(path), f"{KEY} '{ref}'")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AigcError(f"cannot read {path.name} of {what}: {exc}", "point model.init_from at a Hugging Face model directory") from None
    if not isinstance(data, dict):
        raise AigcError(f"{path} of {what} does not hold a JSON object", "point model.init_from at a Hugging Face model directory")
    return data


# ----------------------------------------------------------------------------- sizes
def stated_sizes(config: dict) -> dict:
    """What config.json states for each model.<key>, in aigc's names (a key it does not state is absent)."""
    sizes = {}
    if config.get("model_type") in ARCHITECTURES:
        sizes["architecture"] = config["model_type"]
    for key, names in SIZE_KEYS.items():
        found = [config[name] for name in names if name in config]
        if found:
            sizes[key] = found[0]
    return sizes


def _equivalent(key: str, config: dict, sizes: dict) -> set:
    """The values of model.<key> that mean the model's own: GPT-2 writes n_inner=null for 4×n_embd,
    and a model without key/value heads of its own has as many as attention heads."""
    values = {sizes[key]} if key in sizes else set()
    if key == "intermediate_size" and sizes.get(key) is None and config.get("model_type") == "gpt2" and "n_embd" in sizes:
        values |= {4 * sizes["n_embd"], None}
    if key == "n_kv_head" and key not in sizes and "n_head" in sizes:
        values |= {sizes["n_head"], None}
    return values


def with_pretrained_sizes(cfg: ExperimentConfig, config: dict, where: str) -> ExperimentConfig:
    """`cfg` with model.* taken from a pretrained model's config.json (see the module's docstring)."""
    mc = cfg.model
    sizes = stated_sizes(config)
    given = {key for key in mc.model_fields_set if getattr(mc, key) is not None}  # null means "the default": the model's
    if "architecture" in given and "architecture" in sizes and mc.architecture != sizes["architecture"]:
        raise AigcError(f"model.architecture={mc.architecture}, but {KEY} {where} is a '{config.get('model_type')}' model",
                        f"leave model.architecture out when {KEY} is set (the pretrained model's config.json decides)")
    for key in SIZE_KEYS:
        if key in given and getattr(mc, key) not in _equivalent(key, config, sizes):
            has = f"has {sizes[key]}" if key in sizes else "does not state it"
            raise AigcError(f"model.{key}={getattr(mc, key)}, but {KEY} {where} {has}",
                            f"leave model.{key} out when {KEY} is set: the sizes come from the pretrained model")
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    if context is not None and mc.block_size > context:
        raise AigcError(f"model.block_size={mc.block_size} is longer than the context of {KEY} {where} ({context} tokens)",
                        f"set model.block_size to at most {context}")
    filled = {k: v for k, v in sizes.items() if k not in given}
    if "dropout" not in given and _stated_dropout(config) is not None:
        filled["dropout"] = _stated_dropout(config)
    return cfg.model_copy(update={"model": mc.model_copy(update=filled)})


def _stated_dropout(config: dict) -> float | None:
    found = [config[k] for k in DROPOUT_KEYS if isinstance(config.get(k), (int, float)) and not isinstance(config.get(k), bool)]
    return float(found[0]) if found else None


# ----------------------------------------------------------------------------- vocabulary
def check_vocabulary(ref: str, config: dict, data_dir: Path) -> None:
    """The prepared data was tokenized with the model's tokenizer, fits its embeddings and ends
    documents with its end-of-text token: else training would start from weights that read
    other tokens (or index past the embeddings)."""
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # TokenArray reports a missing or damaged meta.json, with its own hint
    hint = (f"prepare the data with the model's tokenizer: data.tokenizer.kind=pretrained (it defaults to {KEY}) "
            "into a new data.prepared_dir, then train again")
    ours, theirs = data_dir / "tokenizer.json", Path(ref) / "tokenizer.json"
    if ours.is_file() and Path(ref).is_dir() and theirs.is_file() and not _same_vocabulary(ours, theirs):
        used = f"the tokenizer of {meta['tokenizer_source']}" if meta.get("tokenizer_source") else f"a {meta.get('tokenizer')} tokenizer built by `aigc prep`"
        raise AigcError(f"the prepared data in {data_dir} was tokenized with {used}, not with the tokenizer of {KEY} {ref}", hint)
    rows, vocab = config.get("vocab_size"), meta.get("vocab_size")
    if isinstance(rows, int) and isinstance(vocab, int) and vocab > rows:
        raise AigcError(f"the prepared data in {data_dir} has a {vocab:,}-token vocabulary, but {KEY} {ref} has only {rows:,} embeddings", hint)
    eos = config.get("eos_token_id")
    model_eos = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    if model_eos and isinstance(meta.get("eos_id"), int) and meta["eos_id"] not in model_eos:
        raise AigcError(f"the prepared data in {data_dir} ends documents with token {meta['eos_id']}, "
                        f"but {KEY} {ref}'s end-of-text is {model_eos[0] if len(model_eos) == 1 else model_eos}", hint)


def _same_vocabulary(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(a)).get_vocab(with_added_tokens=True) == Tokenizer.from_file(str(b)).get_vocab(with_added_tokens=True)
    except Exception:  # noqa: BLE001 — a file tokenizers cannot read is not the same tokenizer
        return False


# ----------------------------------------------------------------------------- provenance
WEIGHT_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json")


def provenance_record(start: PretrainedStart, init_from: str) -> dict:
    """What provenance.json says the run started from: the directory and the SHA-256 of its
    config and weight files, or the hub id. A resumed run keeps the record of its first start."""
    if start.resumed_from is not None:
        try:
            recorded = json.loads((start.resumed_from / "provenance.json").read_text(encoding="utf-8")).get("init_from")
        except (OSError, ValueError, AttributeError):
            recorded = None
        return recorded if isinstance(recorded, dict) else {"ref": init_from}
    if not Path(start.ref).is_dir():
        return {"ref": start.ref, "hub_id": start.ref}
    directory = Path(start.ref)
    # A checkpoint of `aigc train` lists its files' digests already (verified when it was resolved).
    try:
        listed = json.loads((directory / CHECKSUMS).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        listed = {}
    files = sorted({p.name for pattern in WEIGHT_FILES for p in directory.glob(pattern) if p.is_file()})
    return {"ref": str(directory), "sha256": {name: listed.get(name) or sha256_file(directory / name) for name in files}}

"""`lora`: low-rank adapters (peft) on a Hugging Face causal LM, made by `aigc finetune`.

A checkpoint is peft's adapter directory (adapter_config.json + adapter_model.safetensors);
adapter_config.json names the base model, so the directory alone rebuilds base + adapter. An
adapter trained on a quantized base (QLoRA) is the same directory plus aigc_quantization.json.
Everything but building and saving is the `gpt` backend's, since a PeftModel is called the same way.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from aigc_cli.backends import gpt
from aigc_cli.runs.checkpoints import ADAPTER_BASE, adapter_base
from aigc_cli.errors import AigcError

QUANTIZATION_FILE = "aigc_quantization.json"  # beside adapter_config.json: the base was quantized in training (QLoRA)

# peft 0.21 still asks transformers 5 for a renamed attribute; the warning is theirs, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

loss = gpt.loss
next_token_logits = gpt.next_token_logits
padded_next_token_logits = gpt.padded_next_token_logits

# Every attention and MLP projection: adapting all of them is what makes LoRA match full
# fine-tuning (QLoRA paper, §4); peft's own defaults adapt attention only.
DEFAULT_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def build(model_cfg: Any, data_meta: dict):
    raise AigcError("lora adapts an existing model and cannot be trained from scratch", "use `aigc finetune` with finetune.method=lora")


def add_adapters(model: torch.nn.Module, lora_cfg, new_token_ids: list[int] = ()) -> torch.nn.Module:
    """LoRA adapters on `model`; the embedding rows of `new_token_ids` (tokens a chat template
    added) are trained in full beside them (peft's trainable_token_indices, on the output head
    too), or the tuned model could never learn to emit its end-of-turn token."""
    from peft import LoraConfig, get_peft_model

    targets = lora_cfg.target_modules or DEFAULT_TARGETS.get(model.config.model_type)  # None: peft's default for the architecture
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=targets,
                        modules_to_save=lora_cfg.modules_to_save, use_rslora=lora_cfg.rslora, use_dora=lora_cfg.dora,
                        task_type="CAUSAL_LM", fan_in_fan_out=model.config.model_type == "gpt2",
                        trainable_token_indices=_token_indices(model, list(new_token_ids)) if new_token_ids else None)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise AigcError(f"cannot add LoRA adapters: {exc}", "set finetune.lora.target_modules to module names of this model") from None


def _token_indices(model: torch.nn.Module, ids: list[int]):
    """peft's trainable_token_indices: a list means the input embeddings, and peft follows a tied
    output head by itself; an untied head is named beside them."""
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is embeddings.weight:
        return ids
    names = {module: name for name, module in model.named_modules()}
    return {names[embeddings]: ids, names[head]: ids}


def set_loraplus_ratio(model: torch.nn.Module, ratio: float | None) -> None:
    """LoRA+: the B matrices (which start at zero) get `ratio` × the learning rate; make_optimizer
    reads the mark. None leaves every rate alone."""
    if ratio is None:
        return
    for name, param in model.named_parameters():
        if param.requires_grad and (".lora_B." in name or ".lora_embedding_B." in name):
            param.lr_scale = ratio


def parameters(model: torch.nn.Module, part: str):
    return [p for p in model.parameters() if p.requires_grad]


def save(model: torch.nn.Module, directory: Path) -> None:
    # save_embedding_layers=False: rows of added tokens are in the trainable-token weights; the
    # rest of a grown embedding matrix is the base's, so the adapter stays small.
    model.save_pretrained(directory, save_embedding_layers=False)
    model.get_base_model().generation_config.save_pretrained(directory)  # the ids generation stops at (chat: end-of-turn too)
    record = quantization_record(model)
    if record is not None:  # QLoRA: say so beside the adapter (which itself is the same as plain LoRA's)
        (Path(directory) / QUANTIZATION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    base = model.peft_config["default"].base_model_name_or_path
    if base and Path(base).exists():  # a local base: also recorded relative to the adapter (see checkpoints.adapter_base)
        relative = os.path.relpath(Path(base).resolve(), Path(directory).resolve())
        (Path(directory) / ADAPTER_BASE).write_text(json.dumps({"relative_path": relative}, indent=2) + "\n", encoding="utf-8")


def base_of(directory: Path) -> str:
    base = adapter_base(Path(directory))
    if base is None:
        raise AigcError(f"{directory} is not a LoRA adapter directory (adapter_config.json names no base model)",
                        "pass a checkpoint written by `aigc finetune`")
    return base


def load(directory: Path, device: str, trainable: bool = False) -> torch.nn.Module:
    """The adapter on its base in full precision, also when the adapter was trained on a quantized
    base (QUANTIZATION_FILE): the base as it was made, and the model --merge writes."""
    gpt._quiet_transformers()
    base_ref = base_of(directory)
    if not Path(base_ref).exists():
        raise AigcError(f"the adapter in {directory} needs its base model {base_ref}, which is not there",
                        "restore the base model directory (adapter_config.json: base_model_name_or_path)")
    base = gpt.load_pretrained(base_ref)
    _match_tokenizer(base, Path(directory))
    return load_adapter(base, directory, trainable).to(device)


def load_adapter(base: torch.nn.Module, directory: Path, trainable: bool = False) -> torch.nn.Module:
    """The adapter in `directory` put onto a base already in memory (a quantized one, to resume QLoRA)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, directory, is_trainable=trainable)


def quantization_of(model: torch.nn.Module) -> str:
    """"4bit", "8bit" or "none": how the base of the model in memory holds its weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False):
        return "4bit"
    return "8bit" if getattr(base, "is_loaded_in_8bit", False) else "none"


def quantization_record(model: torch.nn.Module) -> dict | None:
    """What an adapter directory records about the quantized base it was trained on (None: not quantized)."""
    quantization = quantization_of(model)
    if quantization == "none":
        return None
    settings = getattr(model.get_base_model().config, "quantization_config", None)
    settings = settings.to_dict() if hasattr(settings, "to_dict") else settings or {}
    return {"quantization": quantization, "bitsandbytes": json.loads(json.dumps(settings, default=str)),
            "loaded_by_aigc": "generate, eval and --merge put the adapter on the full-precision base"}


def _match_tokenizer(base: torch.nn.Module, directory: Path) -> None:
    """The base as the adapter was trained on it: an embedding matrix grown to the adapter's
    tokenizer (a chat template's tokens; their rows are the adapter's own) and its generation config."""
    from transformers import GenerationConfig

    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
        if size > base.get_input_embeddings().num_embeddings:
            gpt.make_room_for_tokens(base, size, [])
    if (directory / "generation_config.json").is_file():
        base.generation_config = GenerationConfig.from_pretrained(directory)


def context_length(model: torch.nn.Module) -> int | None:
    return gpt.context_length(model)


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters folded into its weights."""
    base = model.get_base_model()
    embeddings, head = base.get_input_embeddings(), base.get_output_embeddings()
    shared = getattr(embeddings, "base_layer", embeddings).weight
    if hasattr(embeddings, "lora_embedding_A") and head is not None and head.weight is shared:
        # The adapter changed only the input side of a tied matrix: merging it into the shared
        # matrix would change the output head too, so the head keeps its own copy.
        head.weight = torch.nn.Parameter(shared.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    return model.merge_and_unload()

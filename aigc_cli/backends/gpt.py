"""`gpt`: a Hugging Face transformers causal LM (GPT-2 or Llama architecture), random init, or
any pretrained causal LM to continue training (`start_from`, for model.init_from).

The checkpoint is the model's own `save_pretrained` directory, so `AutoModelForCausalLM`
loads it unchanged.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _quiet_transformers() -> None:
    # Its per-shard progress bars and info logs would interleave with ours.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# GPT-2's "gelu_new" is tanh-GELU written as five Python-level tensor ops; "gelu_pytorch_tanh" is
# the same function (within 5e-7 in fp32) as one fused kernel. Measured on the nanoGPT-sized
# model on CPU: 1.16x the training tokens/s in fp32 (1.03x in bf16).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def use_fused_activation(config: Any) -> Any:
    """Point a transformers config at the fused kernel of its activation, where one exists. Only
    for transformers' own model classes (they look the name up in ACT2FN); remote code may read
    the name its own way."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "auto_map", None):
        return config
    for key in ("activation_function", "hidden_act"):
        name = getattr(config, key, None)
        if isinstance(name, str) and name in FUSED_ACTIVATIONS:
            setattr(config, key, FUSED_ACTIVATIONS[name])
    return config


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    vocab_size, eos_id = data_meta["vocab_size"], data_meta["eos_id"]
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    _quiet_transformers()
    if model_cfg.architecture == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=model_cfg.block_size, n_embd=model_cfg.n_embd,
            n_layer=model_cfg.n_layer, n_head=model_cfg.n_head, n_inner=model_cfg.intermediate_size,
            resid_pdrop=model_cfg.dropout, embd_pdrop=model_cfg.dropout, attn_pdrop=model_cfg.dropout,
            bos_token_id=eos_id, eos_token_id=eos_id, activation_function=FUSED_ACTIVATIONS["gelu_new"],
        )
    else:
        # SwiGLU's usual width: 8/3 × hidden, rounded up to a multiple of 64 (Llama's convention).
        inner = model_cfg.intermediate_size or -(-int(8 * model_cfg.n_embd / 3) // 64) * 64
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=model_cfg.n_embd, intermediate_size=inner,
            num_hidden_layers=model_cfg.n_layer, num_attention_heads=model_cfg.n_head,
            num_key_value_heads=model_cfg.n_kv_head or model_cfg.n_head,
            max_position_embeddings=model_cfg.block_size, attention_dropout=model_cfg.dropout,
            tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
        )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


# What model.dropout sets in a pretrained config: GPT-2's three rates, the Llama family's one.
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout")


def start_from(ref: str, device: str, trust_remote_code: bool = False, dropout: float | None = None) -> torch.nn.Module:
    """A pretrained causal LM (a directory or hub id) to continue training: model.init_from."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from aigc_cli.errors import AigcError

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
            raise AigcError(f"model.init_from {ref} is a '{config.model_type}' model, not a causal language model",
                            "continue pretraining a decoder-only model (GPT-2, Llama, Qwen, ... or a checkpoint of `aigc train`)")
        if dropout is not None:
            keys = [key for key in DROPOUT_KEYS if type(getattr(config, key, None)) in (int, float)]
            if not keys:
                raise AigcError(f"model.dropout: the '{config.model_type}' model of model.init_from {ref} has no dropout rate aigc can set",
                                "leave model.dropout out (the model keeps its own)")
            for key in keys:
                setattr(config, key, dropout)
        return load_pretrained(ref, trust_remote_code, config).to(device)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot load model.init_from {ref}: {first}", "check the directory, or the hub id and your connection") from None


def parameters(model: torch.nn.Module, part: str):
    return [p for p in model.parameters() if p.requires_grad]


def loss(model: torch.nn.Module, batch, part: str) -> torch.Tensor:
    """Next-token cross-entropy. `inputs` are token ids, or (ids, position_ids) for packed rows:
    positions restarting at 0 mark where an example begins, and with no attention mask given
    transformers keeps the examples from attending to one another (data/packing.py)."""
    inputs, targets = batch
    ids, positions = inputs if isinstance(inputs, tuple) else (inputs, None)
    extra = {} if positions is None else {"position_ids": positions}
    logits = model(input_ids=ids, use_cache=False, **extra).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def save(model: torch.nn.Module, directory: Path) -> None:
    model.save_pretrained(directory)


def make_room_for_tokens(model: torch.nn.Module, vocab_size: int, new_ids: list[int]) -> None:
    """Embedding rows for a tokenizer grown to `vocab_size` tokens: the matrix (and an untied
    output head) grows when it must, and the rows of `new_ids` start as the mean of the rows
    before them, so a new token begins as an average token, not as noise (or an untrained
    padding row) that would skew the first steps."""
    embeddings = model.get_input_embeddings()
    if vocab_size > embeddings.num_embeddings:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)  # its mean_resizing samples; ours is exact
    if not new_ids:
        return
    first = min(new_ids)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            layer.weight[new_ids] = layer.weight[:first].mean(dim=0)
            if getattr(layer, "bias", None) is not None:
                layer.bias[new_ids] = layer.bias[:first].mean()


def separates_packed_examples(model: torch.nn.Module) -> bool:
    """Whether this model keeps examples packed into one row apart by their position ids alone
    (transformers' masking_utils does so for its own models when no attention mask is given): two
    short examples, packed and run alone, must give the same logits."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    ids = (torch.arange(6, device=device) * 7 + 1) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=ids[None], position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]], device=device), use_cache=False).logits
            alone = torch.cat([model(input_ids=part[None], use_cache=False).logits for part in (ids[:3], ids[3:])], dim=1)
    except (TypeError, ValueError, RuntimeError):  # a forward without position_ids, or that refuses them
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(packed.float(), alone.float(), atol=1e-4, rtol=1e-4))


def load(directory: Path, device: str) -> torch.nn.Module:
    _quiet_transformers()
    return load_pretrained(directory).to(device)


def load_pretrained(ref: str | Path, trust_remote_code: bool = False, config: Any = None, **loading: Any) -> torch.nn.Module:
    """A causal LM in fp32, on the fused activation (also checkpoints saved before the switch).
    `loading`: more from_pretrained arguments (a quantization_config and its device_map)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = use_fused_activation(config or AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code))
    # use_safetensors: never unpickle weights (a hub repo may hold only pytorch_model.bin).
    return AutoModelForCausalLM.from_pretrained(ref, config=config, dtype=torch.float32,
                                                trust_remote_code=trust_remote_code, use_safetensors=True, **loading)


def context_length(model: torch.nn.Module) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


@functools.cache
def _cache_keyword(model_class: type) -> str:
    # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns on
    # every call from 5.2x on); models not yet migrated, and older 5.x, only know the old name.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _with_cache(model: torch.nn.Module, state: Any) -> dict:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper
    return {_cache_keyword(type(base)): state}


def _returned_cache(out: Any) -> Any:
    return out["cache"] if "cache" in out else out.past_key_values


def next_token_logits(model: torch.nn.Module, ids: torch.Tensor, state: Any):
    """Incremental decoding with the key/value cache; past the context window, re-encode its tail."""
    limit = context_length(model)
    if state is not None and (limit is None or ids.size(1) <= limit):
        out = model(input_ids=ids[:, -1:], use_cache=True, **_with_cache(model, state))
    else:
        window = ids if limit is None else ids[:, -limit:]
        out = model(input_ids=window, use_cache=True)
    return out.logits[:, -1, :].float(), _returned_cache(out)


def padded_next_token_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, state: Any):
    """next_token_logits for a left-padded batch (`mask` is 0 on padding). Positions count real
    tokens only, so every row is encoded as it would be alone; the caller keeps within the context."""
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    if state is None:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    else:
        out = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], use_cache=True, **_with_cache(model, state))
    return out.logits[:, -1, :].float(), _returned_cache(out)

"""Taggers: transformers' AutoModelForTokenClassification, a tag per word (BIO/IOB2 named entities).

The encoder is the classifier's (BERT from sizes over aigc's tokenizer, or model.init_from's);
the head scores every token. A batch is ((ids, attention mask), tags): a tag id on each word's
first sub-word token and -100 on the rest (and on special tokens and padding), which the loss
ignores. A checkpoint is a plain transformers directory with id2label:
pipeline("token-classification", model=checkpoint) loads it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from aigc_cli.backends.classifier import ADAPTER_DIR, _config, context_length, load_adapter, save  # noqa: F401 — same checkpoint shape
from aigc_cli.backends.gpt import _quiet_transformers
from aigc_cli.errors import AigcError

IGNORE_INDEX = -100


def describe(config, mc: Any, data_meta: dict) -> None:
    labels = data_meta["labels"]
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.aigc_max_length = mc.max_length


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    from transformers import BertConfig, BertForTokenClassification

    _quiet_transformers()
    mc = model_cfg
    config = BertConfig(vocab_size=data_meta["vocab_size"], hidden_size=mc.n_embd, num_hidden_layers=mc.n_layer,
                        num_attention_heads=mc.n_head, intermediate_size=mc.intermediate_size or 4 * mc.n_embd,
                        max_position_embeddings=mc.max_length, hidden_dropout_prob=mc.dropout,
                        attention_probs_dropout_prob=mc.dropout, pad_token_id=data_meta["pad_id"], type_vocab_size=1)
    describe(config, mc, data_meta)
    return BertForTokenClassification(config)


def pretrained_tagger(ref: str, mc: Any, data_meta: dict, device: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForTokenClassification

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(ref)
        describe(config, mc, data_meta)
        model = AutoModelForTokenClassification.from_pretrained(ref, config=config, use_safetensors=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "check the directory" if Path(ref).exists() else "offline (HF_HUB_OFFLINE) or unknown hub id: pass a local model directory"
        raise AigcError(f"cannot load model.init_from {ref} as a token classifier: {first}", hint) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = data_meta["pad_id"]
    return model.to(device)


def add_adapters(model: torch.nn.Module, lora_cfg) -> torch.nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.TOKEN_CLS, r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, use_rslora=lora_cfg.rslora, use_dora=lora_cfg.dora,
                        modules_to_save=lora_cfg.modules_to_save or ["classifier", "score"])
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise AigcError(f"cannot add LoRA adapters: {exc}", "set finetune.lora.target_modules to module names of this model") from None


def parameters(model: torch.nn.Module, part: str) -> Iterable[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def loss(model: torch.nn.Module, batch: tuple[Any, torch.Tensor], part: str) -> torch.Tensor:
    from aigc_cli.training.loss_stats import report

    (ids, mask), targets = batch
    out = model(input_ids=ids, attention_mask=mask).logits.float()
    scored = targets != IGNORE_INDEX
    report({"accuracy": ((out.argmax(-1) == targets) & scored).sum() / scored.sum().clamp(min=1)})
    return F.cross_entropy(out.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def scores(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per token: the tag probabilities (batch × tokens × tags)."""
    return model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)


def load(directory: Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForTokenClassification

    _quiet_transformers()
    return AutoModelForTokenClassification.from_pretrained(directory, use_safetensors=True).to(device)

"""Taggers: transformers' AutoModelForTokenClassification, a tag per word (BIO/IOB2 named entities).

The encoder is the classifier's (BERT from sizes over aigc's tokenizer, or model.init_from's);
the head scores every token. A batch is ((ids, attention mask), tags): a tag id on each word's
first sub-word token and -100 on the rest (and on special tokens and padding), which the loss
ignores. A checkpoint is a plain transformers directory with id2label:
pipeline("token-classification", model=checkpoint) loads it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aigc_cli.backends.classifier import (  # noqa: F401 — same checkpoint shape
    ADAPTER_DIR, _config, bert_config, context_length, load_adapter, parameters, lora_model, pretrained_model, save,
)
from aigc_cli.backends.gpt import _quiet_transformers

IGNORE_INDEX = -100


def describe(config, mc: Any, data_meta: dict) -> None:
    labels = data_meta["labels"]
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.aigc_max_length = mc.max_length
    config.aigc_class_weights = data_meta.get("class_weights")


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    from transformers import BertForTokenClassification

    _quiet_transformers()
    config = bert_config(model_cfg, data_meta)
    describe(config, model_cfg, data_meta)
    return BertForTokenClassification(config)


def pretrained(ref: str, mc: Any, data_meta: dict, device: str) -> torch.nn.Module:
    return pretrained_model("AutoModelForTokenClassification", ref, lambda config: describe(config, mc, data_meta),
                            "a token classifier", data_meta, device)


def add_adapters(model: torch.nn.Module, lora_cfg) -> torch.nn.Module:
    return lora_model(model, lora_cfg, "TOKEN_CLS", lora_cfg.modules_to_save or ["classifier", "score"])


def loss(model: torch.nn.Module, batch: tuple[Any, torch.Tensor], part: str) -> torch.Tensor:
    from aigc_cli.training.loss_stats import report

    (ids, mask), targets = batch
    out = model(input_ids=ids, attention_mask=mask).logits.float()
    scored = targets != IGNORE_INDEX
    report({"accuracy": ((out.argmax(-1) == targets) & scored).sum() / scored.sum().clamp(min=1)})
    weights = getattr(_config(model), "aigc_class_weights", None)  # model.class_weights balanced
    weights = torch.tensor(weights, dtype=torch.float32, device=out.device) if weights else None
    return F.cross_entropy(out.flatten(0, 1), targets.flatten(), weight=weights, ignore_index=IGNORE_INDEX)


def scores(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per token: the tag probabilities (batch × tokens × tags)."""
    return model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)


def load(directory: Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForTokenClassification

    _quiet_transformers()
    return AutoModelForTokenClassification.from_pretrained(directory, use_safetensors=True).to(device)

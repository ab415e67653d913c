"""Reward models: a sequence classifier with one output, trained on preference pairs.

A batch is ((ids, mask), unused targets) of 2B rows: rows 0..B-1 the chosen texts, B..2B-1 the
rejected ones (data/preference_texts.py). The loss is the Bradley–Terry one TRL's RewardTrainer
computes: -log σ(r_chosen - r_rejected), the mean over the pairs; it reports the reward accuracy
(chosen > rejected) and margin. The checkpoint is a transformers directory with num_labels=1
(problem_type regression), like TRL's reward models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from aigc_cli.backends.classifier import (  # noqa: F401 — same checkpoint shape
    ADAPTER_DIR, add_adapters, bert_config, context_length, load, load_adapter, parameters, pretrained_model, save,
)
from aigc_cli.backends.gpt import _quiet_transformers


def describe(config, mc: Any) -> None:
    config.num_labels = 1
    config.problem_type = "regression"
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.aigc_max_length = mc.max_length


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    from transformers import BertForSequenceClassification

    _quiet_transformers()
    config = bert_config(model_cfg, data_meta)
    describe(config, model_cfg)
    return BertForSequenceClassification(config)


def pretrained(ref: str, mc: Any, data_meta: dict, device: str) -> torch.nn.Module:
    def describe_config(config):
        describe(config, mc)
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = data_meta["pad_id"]  # a causal LM's head reads the last non-pad token

    return pretrained_model("AutoModelForSequenceClassification", ref, describe_config, "a reward model", data_meta, device)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(chosen - rejected).mean()


def loss(model: torch.nn.Module, batch: tuple[Any, torch.Tensor], part: str) -> torch.Tensor:
    from aigc_cli.training.loss_stats import report

    (ids, mask), _ = batch
    rewards = scores(model, ids, mask)
    chosen, rejected = rewards.chunk(2)
    report({"reward_accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).detach().mean()})
    return bradley_terry_loss(chosen, rejected)


def scores(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per text: its scalar reward."""
    return model(input_ids=ids, attention_mask=mask).logits.float().squeeze(-1)

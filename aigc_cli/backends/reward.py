"""Reward models: a sequence classifier with one output, trained on preference pairs.

A batch is ((ids, mask), unused targets) of 2B rows: rows 0..B-1 the chosen texts, B..2B-1 the
rejected ones (data/preference_texts.py). The loss is the Bradley–Terry one TRL's RewardTrainer
computes: -log σ(r_chosen - r_rejected), the mean over the pairs; it reports the reward accuracy
(chosen > rejected) and margin. The checkpoint is a transformers directory with num_labels=1
(problem_type regression), like TRL's reward models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from aigc_cli.backends.classifier import ADAPTER_DIR, add_adapters, context_length, load, load_adapter, save  # noqa: F401 — same checkpoint shape
from aigc_cli.backends.gpt import _quiet_transformers
from aigc_cli.errors import AigcError


def describe(config, mc: Any) -> None:
    config.num_labels = 1
    config.problem_type = "regression"
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.aigc_max_length = mc.max_length


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    _quiet_transformers()
    mc = model_cfg
    config = BertConfig(vocab_size=data_meta["vocab_size"], hidden_size=mc.n_embd, num_hidden_layers=mc.n_layer,
                        num_attention_heads=mc.n_head, intermediate_size=mc.intermediate_size or 4 * mc.n_embd,
                        max_position_embeddings=mc.max_length, hidden_dropout_prob=mc.dropout,
                        attention_probs_dropout_prob=mc.dropout, pad_token_id=data_meta["pad_id"], type_vocab_size=1)
    describe(config, mc)
    return BertForSequenceClassification(config)


def pretrained_reward_model(ref: str, mc: Any, data_meta: dict, device: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(ref)
        describe(config, mc)
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = data_meta["pad_id"]  # a causal LM's head reads the last non-pad token
        model = AutoModelForSequenceClassification.from_pretrained(ref, config=config, use_safetensors=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "check the directory" if Path(ref).exists() else "offline (HF_HUB_OFFLINE) or unknown hub id: pass a local model directory"
        raise AigcError(f"cannot load model.init_from {ref} as a reward model: {first}", hint) from None
    return model.to(device)


def parameters(model: torch.nn.Module, part: str) -> Iterable[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


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

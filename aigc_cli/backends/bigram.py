"""`bigram`: nanoGPT's bigram language model, the baseline a real model has to beat.

One vocab × vocab table: row t holds the logits of the token after t. No context beyond the last
token, so decoding carries no state. Saved as config.json + model.safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.backends import BigramModelConfig
from aigc_cli.backends.plain_io import load_plain, save_plain


class BigramLanguageModel(nn.Module):
    def __init__(self, config: BigramModelConfig, data: dict):
        """`data`: the prepared text's vocab_size."""
        super().__init__()
        self.config, self.data = config, data
        self.table = nn.Embedding(data["vocab_size"], data["vocab_size"])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


def build(model_cfg: BigramModelConfig, data_meta: dict) -> BigramLanguageModel:
    return BigramLanguageModel(model_cfg, {"vocab_size": data_meta["vocab_size"]})


def parameters(model: BigramLanguageModel, part: str):
    return list(model.parameters())


def loss(model: BigramLanguageModel, batch, part: str) -> torch.Tensor:
    inputs, targets = batch
    logits = model(inputs).float()
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def save(model: BigramLanguageModel, directory: Path) -> None:
    save_plain(model, directory, "aigc-bigram")


def load(directory: Path, device: str) -> BigramLanguageModel:
    return load_plain(BigramLanguageModel, BigramModelConfig, directory, device)


def context_length(model: BigramLanguageModel) -> int | None:
    return None


def next_token_logits(model: BigramLanguageModel, ids: torch.Tensor, state: Any):
    return model(ids[:, -1]).float(), None

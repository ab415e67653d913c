"""`rnn`: an LSTM / GRU / vanilla-RNN language model, small enough to read in one sitting.

Saved as config.json + model.safetensors, the same two files a transformers model uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.backends import RNNModelConfig
from aigc_cli.backends.plain_io import load_plain, save_plain
from aigc_cli.errors import AigcError

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RNNLanguageModel(nn.Module):
    def __init__(self, config: RNNModelConfig, data: dict):
        """`data`: the prepared text's vocab_size."""
        super().__init__()
        self.config, self.data = config, data
        self.embed = nn.Embedding(data["vocab_size"], config.n_embd)
        self.rnn = _CELLS[config.cell](config.n_embd, config.hidden_size, num_layers=config.n_layer, batch_first=True,
                                       dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, data["vocab_size"])

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        hidden, state = self.rnn(self.drop(self.embed(ids)), state)
        return self.head(self.drop(hidden)), state


def build(model_cfg: RNNModelConfig, data_meta: dict) -> torch.nn.Module:
    return RNNLanguageModel(model_cfg, {"vocab_size": data_meta["vocab_size"]})


def parameters(model: torch.nn.Module, part: str):
    return [p for p in model.parameters() if p.requires_grad]


def loss(model: torch.nn.Module, batch, part: str) -> torch.Tensor:
    inputs, targets = batch
    logits, _ = model(inputs)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def save(model: torch.nn.Module, directory: Path) -> None:
    save_plain(model, directory, "aigc-rnn")


def load(directory: Path, device: str) -> torch.nn.Module:
    try:
        return load_plain(RNNLanguageModel, RNNModelConfig, directory, device)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:  # ValueError: bad JSON or a field out of range
        raise AigcError(f"cannot load the rnn checkpoint in {directory}: {exc}", "the directory is damaged; use another checkpoint") from None


def context_length(model: torch.nn.Module) -> int | None:
    return None


def next_token_logits(model: torch.nn.Module, ids: torch.Tensor, state: Any):
    logits, state = model(ids if state is None else ids[:, -1:], state)
    return logits[:, -1, :].float(), state

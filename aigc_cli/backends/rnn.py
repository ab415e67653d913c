"""`rnn`: an LSTM / GRU / vanilla-RNN language model, small enough to read in one sitting.

Saved as config.json + model.safetensors, the same two files a transformers model uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from aigc_cli.errors import AigcError

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RNNLanguageModel(nn.Module):
    def __init__(self, cell: str, vocab_size: int, n_embd: int, hidden_size: int, n_layer: int, dropout: float, block_size: int):
        super().__init__()
        self.config = dict(cell=cell, vocab_size=vocab_size, n_embd=n_embd, hidden_size=hidden_size,
                           n_layer=n_layer, dropout=dropout, block_size=block_size)
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.rnn = _CELLS[cell](n_embd, hidden_size, num_layers=n_layer, batch_first=True,
                                dropout=dropout if n_layer > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        hidden, state = self.rnn(self.drop(self.embed(ids)), state)
        return self.head(self.drop(hidden)), state


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    return RNNLanguageModel(model_cfg.cell, data_meta["vocab_size"], model_cfg.n_embd, model_cfg.hidden_size,
                            model_cfg.n_layer, model_cfg.dropout, model_cfg.block_size)


def parameters(model: torch.nn.Module, part: str):
    return [p for p in model.parameters() if p.requires_grad]


def loss(model: torch.nn.Module, batch, part: str) -> torch.Tensor:
    inputs, targets = batch
    logits, _ = model(inputs)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def save(model: torch.nn.Module, directory: Path) -> None:
    (directory / "config.json").write_text(json.dumps({"model_type": "aigc-rnn", **model.config}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))


def load(directory: Path, device: str) -> torch.nn.Module:
    try:
        config = json.loads((directory / "config.json").read_text())
        config.pop("model_type", None)
        model = RNNLanguageModel(**config)
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise AigcError(f"cannot load the rnn checkpoint in {directory}: {exc}", "the directory is damaged; use another checkpoint") from None
    return model.to(device)


def context_length(model: torch.nn.Module) -> int | None:
    return None


def next_token_logits(model: torch.nn.Module, ids: torch.Tensor, state: Any):
    logits, state = model(ids if state is None else ids[:, -1:], state)
    return logits[:, -1, :].float(), state

"""Checkpoint files for backends that are plain torch modules: model.safetensors + config.json.

The module keeps its constructor arguments in `model.config` (a dict), so the two files alone
rebuild it — the same pair a transformers model writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_plain(model: torch.nn.Module, directory: Path, model_type: str) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(directory) / "model.safetensors"))
    (Path(directory) / "config.json").write_text(json.dumps({"model_type": model_type, **model.config}, indent=2) + "\n", encoding="utf-8")


def load_plain(cls: type[torch.nn.Module], directory: Path, device: str) -> torch.nn.Module:
    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    config.pop("model_type", None)
    model = cls(**config)
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors"), device="cpu"))
    return model.to(device)

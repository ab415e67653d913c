"""Checkpoint files for backends that are plain torch modules: model.safetensors + config.json.

Such a module is built from its config section (`model.config`) and a few numbers of the prepared
data (`model.data`: vocab_size, or image size, channels and classes), so its constructor
arguments are the section's fields, written once. config.json holds both, flat, as it always
has — the same pair of files a transformers model writes — so the two files alone rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aigc_cli.config_section import Section


def save_plain(model: torch.nn.Module, directory: Path, model_type: str, renamed: dict[str, str] | None = None) -> None:
    """`renamed`: section field → its key in config.json, where the first files named it otherwise."""
    renamed = renamed or {}
    section = {renamed.get(key, key): value for key, value in model.config.model_dump(exclude={"backend"}).items()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(directory) / "model.safetensors"))
    config = {"model_type": model_type, **model.data, **section}
    (Path(directory) / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_plain(cls: type[torch.nn.Module], section_cls: type[Section], directory: Path, device: str,
               renamed: dict[str, str] | None = None) -> torch.nn.Module:
    renamed = renamed or {}
    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    config.pop("model_type", None)
    fields = [name for name in section_cls.model_fields if name != "backend" and renamed.get(name, name) in config]
    section = section_cls(**{name: config.pop(renamed.get(name, name)) for name in fields})
    model = cls(section, config)  # what is left is the data's
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors"), device="cpu"))
    return model.to(device)

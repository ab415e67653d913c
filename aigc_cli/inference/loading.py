"""One loader for every backend: a checkpoint directory → a LoadedModel in eval mode that knows
what it is (text or image), how it reads text (tokenizer, end-of-text id), where it runs and in
which precision, and at which tokens a reply ends. Training's samples describe the model they
hold in memory the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_cli.backends import backend_of_checkpoint, get_backend, spec
from aigc_cli.runs.checkpoints import load_weights, resolve_checkpoint
from aigc_cli.data.tokenization import configured_eos_id, eos_id, load_tokenizer
from aigc_cli.devices import pick_device
from aigc_cli.errors import AigcError


@dataclass
class LoadedModel:
    checkpoint: Path
    backend_name: str
    backend: object
    model: torch.nn.Module
    modality: str  # "text" or "image"
    tokenizer: object | None  # None for image models
    eos_id: int | None
    device: str
    dtype: torch.dtype
    stop_ids: tuple[int, ...] = ()  # decoding ends at any of these: end-of-text, and a chat model's end-of-turn

    @property
    def validation_part(self) -> str:
        """The part whose loss is the held-out loss (a GAN's discriminator)."""
        return spec(self.backend_name).validation_part

    @property
    def info(self) -> dict:
        """Image models: {size, channels, classes, class_conditional}."""
        return self.backend.image_info(self.model)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, part: str) -> torch.Tensor:
        return self.backend.loss(self.model, (inputs, targets), part)


def load_model(checkpoint: str | Path, device: str = "auto", modality: str | None = None) -> LoadedModel:
    """The model of `checkpoint` (a checkpoint or a run directory, standing for its latest good
    one) on `device`; `modality` is what the caller samples, a checkpoint of the other kind is an error."""
    checkpoint = resolve_checkpoint(checkpoint)
    name = backend_of_checkpoint(checkpoint)
    backend = get_backend(name)
    kind = spec(name).modality
    if modality == "image" and kind != "image":
        raise AigcError(f"{checkpoint} holds a {name} text model, not an image model", "pass a checkpoint of a ddpm, vae or gan run")
    if modality == "text" and kind != "text":
        raise AigcError(f"{checkpoint} holds a {name} image model, not a text model", "pass a checkpoint of a gpt, rnn or lora run")
    device = pick_device(device, "device")
    tokenizer = load_tokenizer(checkpoint) if kind == "text" else None
    model = load_weights(backend, checkpoint, device)
    model.eval()
    return in_memory_model(checkpoint, name, model, device, checkpoint if kind == "text" else None, tokenizer)


def in_memory_model(checkpoint: Path, backend_name: str, model: torch.nn.Module, device: str,
                    tokenizer_dir: Path | None = None, tokenizer=None) -> LoadedModel:
    """A model already in memory (the one training holds) as a LoadedModel; a text model's tokenizer
    is read from `tokenizer_dir` unless given."""
    backend = get_backend(backend_name)
    if tokenizer is None and tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    eos = checkpoint_eos_id(tokenizer_dir, tokenizer) if tokenizer is not None else None
    stops = end_token_ids(Path(checkpoint), model, eos) if eos is not None else ()
    first = next(model.parameters(), None)
    return LoadedModel(Path(checkpoint), backend_name, backend, model, spec(backend_name).modality, tokenizer, eos, device,
                       first.dtype if first is not None else torch.float32, stops)


def checkpoint_eos_id(directory: Path | None, tokenizer) -> int:
    """The end-of-text id the directory's tokenizer files declare, else the usual names."""
    return configured_eos_id(Path(directory), tokenizer) if directory is not None else eos_id(tokenizer)


def end_token_ids(directory: Path, model: torch.nn.Module, eos: int) -> tuple[int, ...]:
    """The ids decoding stops at: the end-of-text id and the `eos_token_id` (an id or a list) of
    the directory's generation_config.json, else of the model's generation config. A model tuned
    on chat data ends its turns with an end-of-turn token (chatml's <|im_end|>) listed there, as
    transformers' own generate reads it; a LoRA adapter's directory may carry the file its base lacks."""
    named = None
    path = directory / "generation_config.json"
    if path.is_file():
        try:
            named = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            named = None
    if named is None:
        named = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    named = [named] if isinstance(named, int) else named if isinstance(named, list) else []
    return tuple(dict.fromkeys([eos, *(i for i in named if isinstance(i, int) and not isinstance(i, bool))]))

"""The backend registry: name → module, imported only when a verb needs it.

A backend is one module with the functions of `Backend` below (a Protocol, never a base class).
The training loop, generation and evaluation talk to this interface only; they never ask which
backend they hold. Adding a backend is one file plus one line in BACKENDS.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from aigc_cli.errors import AigcError

if TYPE_CHECKING:
    import torch

BACKENDS: dict[str, str] = {
    "gpt": "aigc_cli.backends.gpt",
    "rnn": "aigc_cli.backends.rnn",
    "lora": "aigc_cli.backends.lora",  # made by `aigc finetune`, not by `aigc train`
    "ddpm": "aigc_cli.backends.ddpm",
    "vae": "aigc_cli.backends.vae",
    "gan": "aigc_cli.backends.gan",
}


class Backend(Protocol):
    PARTS: tuple[str, ...]
    """Names of the independently optimised parts; one AdamW each (a GAN has two), stepped in this order."""
    MODALITY: str
    """"text" (the default when absent) or "image"."""

    def build(self, model_cfg: Any, data_meta: dict) -> "torch.nn.Module":
        """A freshly initialised model for the config's sizes and the prepared data (vocab_size and eos_id, or image size, channels and classes)."""

    def parameters(self, model: "torch.nn.Module", part: str) -> Iterable["torch.nn.Parameter"]:
        """The trainable parameters optimised under `part`."""

    def loss(self, model: "torch.nn.Module", batch: tuple["torch.Tensor", "torch.Tensor"], part: str) -> "torch.Tensor":
        """Scalar training loss of `part` on one batch of (inputs, targets)."""

    def save(self, model: "torch.nn.Module", directory: Path) -> None:
        """Write the weights and the model's own config into `directory` (safetensors)."""

    def load(self, directory: Path, device: str) -> "torch.nn.Module":
        """Rebuild the model saved by `save` from the directory alone."""

    # Optional: called after every optimizer step (a diffusion model's EMA update).
    # def after_step(self, model) -> None

    # Text backends:
    def next_token_logits(self, model: "torch.nn.Module", ids: "torch.Tensor", state: Any) -> tuple["torch.Tensor", Any]:
        """Logits (batch × vocab) for the token after `ids` (batch × T); `state` carries caches between calls."""

    def context_length(self, model: "torch.nn.Module") -> int | None:
        """Longest sequence the model accepts at once (None: unbounded)."""

    # Image backends instead: image_info(model) → {size, channels, classes, class_conditional};
    # latent_shape(model) → the shape of one image's starting noise; sample(model, noise, labels,
    # gen_cfg, generators) → images in [-1, 1]; the vae also has reconstruct(model, images).


def modality(backend) -> str:
    return getattr(backend, "MODALITY", "text")


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise AigcError(f"unknown model.backend '{name}'", f"available: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])  # type: ignore[return-value]


def backend_of_checkpoint(directory: str | Path) -> str:
    """The backend that wrote a checkpoint; a plain Hugging Face model directory counts as `gpt`."""
    import json

    directory = Path(directory)
    record = directory / "aigc.json"
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))["backend"]
    if (directory / "adapter_config.json").is_file():
        return "lora"
    if (directory / "model_index.json").is_file():
        return "ddpm"  # a diffusers pipeline directory
    if (directory / "config.json").is_file():
        return "gpt"
    raise AigcError(f"{directory} is not a checkpoint directory (no aigc.json or config.json)",
                    "pass a directory from <run_dir>/checkpoints/ or a Hugging Face model directory")

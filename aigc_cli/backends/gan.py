"""`gan`: DCGAN (Radford et al.) — a generator and a discriminator, trained alternately.

The training loop knows nothing about GANs: this backend declares two parts, and the loop gives
each its own AdamW and, every step, calls `loss(model, batch, part)` and steps that part's
optimizer — the discriminator first, then the generator, on the same real batch.
Saved as config.json + model.safetensors (both networks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.backends import GANModelConfig
from aigc_cli.backends.plain_io import load_plain, save_plain
from aigc_cli.errors import AigcError


def _generator(latent_dim: int, channels: int, size: int, width: int) -> nn.Sequential:
    levels = int(math.log2(size)) - 2  # 4×4 → size×size, doubling each level
    top = width * 2 ** (levels - 1)
    layers: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, top, 4, 1, 0, bias=False),
                               nn.BatchNorm2d(top), nn.ReLU(True)]
    for level in range(levels - 1):
        c_in = top // 2 ** level
        layers += [nn.ConvTranspose2d(c_in, c_in // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c_in // 2), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers)


def _discriminator(channels: int, size: int, width: int) -> nn.Sequential:
    levels = int(math.log2(size)) - 2  # size×size → 4×4, halving each level
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for level in range(levels - 1):
        c_in = width * 2 ** level
        layers += [nn.Conv2d(c_in, c_in * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c_in * 2), nn.LeakyReLU(0.2, True)]
    layers += [nn.Conv2d(width * 2 ** (levels - 1), 1, 4, 1, 0), nn.Flatten()]
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    # DCGAN's initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class GAN(nn.Module):
    def __init__(self, config: GANModelConfig, data: dict):
        """`data`: the prepared images' size, channels and classes."""
        super().__init__()
        self.config, self.data = config, data
        self.generator = _generator(config.latent_dim, data["channels"], data["size"], config.generator_channels)
        self.discriminator = _discriminator(data["channels"], data["size"], config.discriminator_channels)
        self.apply(_init_weights)


def build(model_cfg: GANModelConfig, data_meta: dict) -> GAN:
    size = data_meta["size"]
    if size < 8 or size & (size - 1):
        raise AigcError(f"the gan backend needs a power-of-two image size of at least 8 (data.image.size={size})", "set data.image.size to 16, 32 or 64")
    return GAN(model_cfg, {"size": size, "channels": data_meta["channels"], "classes": data_meta.get("classes")})


def parameters(model: GAN, part: str):
    return list((model.discriminator if part == "discriminator" else model.generator).parameters())


def loss(model: GAN, batch, part: str) -> torch.Tensor:
    real, _ = batch
    latents = torch.randn(real.size(0), model.config.latent_dim, device=real.device)
    hinge = model.config.loss == "hinge"
    if part == "discriminator":
        fake = model.generator(latents).detach()
        real_logits, fake_logits = model.discriminator(real).float(), model.discriminator(fake).float()
        if hinge:
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        real_target = torch.full_like(real_logits, 1.0 - model.config.label_smoothing)
        return (F.binary_cross_entropy_with_logits(real_logits, real_target)
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    fake_logits = model.discriminator(model.generator(latents)).float()
    if hinge:
        return -fake_logits.mean()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))  # non-saturating


def save(model: GAN, directory: Path) -> None:
    save_plain(model, directory, "aigc-gan")


def load(directory: Path, device: str) -> GAN:
    return load_plain(GAN, GANModelConfig, directory, device)


def image_info(model: GAN) -> dict:
    return {**model.data, "class_conditional": False}


def latent_shape(model: GAN) -> tuple[int, ...]:
    return (model.config.latent_dim,)


@torch.inference_mode()
def sample(model: GAN, noise: torch.Tensor, labels, gen_cfg: Any, generators) -> torch.Tensor:
    return model.generator(noise)

"""`vae`: a small convolutional variational autoencoder (Kingma & Welling), readable top to bottom.

Encoder: stride-2 convolutions → mean and log-variance of a Gaussian latent. Decoder: the mirror
image with transposed convolutions → pixel logits. Loss per image: reconstruction (Bernoulli
cross-entropy or squared error, summed over pixels) + kl_weight × KL(q(z|x) ‖ N(0, I)).
Saved as config.json + model.safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.backends import VAEModelConfig
from aigc_cli.backends.plain_io import load_plain, save_plain
from aigc_cli.errors import AigcError

# config.json has always called the section's `channels` (the encoder widths) `widths`: its
# `channels` is the images' channel count.
_FILE_NAMES = {"channels": "widths"}


class VAE(nn.Module):
    def __init__(self, config: VAEModelConfig, data: dict):
        """`data`: the prepared images' size, channels and classes."""
        super().__init__()
        self.config, self.data = config, data
        size, channels, widths = data["size"], data["channels"], config.channels
        down, previous = [], channels
        for width in widths:
            down += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.SiLU()]
            previous = width
        self.encoder = nn.Sequential(*down, nn.Flatten())
        self.bottom = (widths[-1], size // 2 ** len(widths), size // 2 ** len(widths))
        flat = widths[-1] * self.bottom[1] * self.bottom[2]
        self.to_mean = nn.Linear(flat, config.latent_dim)
        self.to_logvar = nn.Linear(flat, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        up = []
        for width, following in zip(reversed(widths), list(reversed(widths))[1:] + [None]):
            if following is None:
                up += [nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1)]
            else:
                up += [nn.ConvTranspose2d(width, following, 4, stride=2, padding=1), nn.BatchNorm2d(following), nn.SiLU()]
        self.decoder = nn.Sequential(*up)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(images)
        return self.to_mean(hidden), self.to_logvar(hidden).clamp(-30, 20)

    def decode_logits(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(F.silu(self.from_latent(latents)).view(-1, *self.bottom))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]."""
        logits = self.decode_logits(latents)
        return (torch.sigmoid(logits) if self.config.reconstruction == "bce" else logits.clamp(0, 1)) * 2 - 1


def build(model_cfg: VAEModelConfig, data_meta: dict) -> VAE:
    size = data_meta["size"]
    if size % 2 ** len(model_cfg.channels):
        raise AigcError(f"data.image.size={size} cannot be halved {len(model_cfg.channels)} times (one per model.channels entry)",
                        "use a power-of-two image size or fewer levels")
    return VAE(model_cfg, {"size": size, "channels": data_meta["channels"], "classes": data_meta.get("classes")})


def parameters(model: VAE, part: str):
    return [p for p in model.parameters() if p.requires_grad]


def loss(model: VAE, batch, part: str) -> torch.Tensor:
    """Negative ELBO per image (in nats, with kl_weight on the KL term)."""
    images, _ = batch
    targets = (images + 1) / 2  # pixel intensities in [0, 1]
    mean, logvar = model.encode(images)
    latents = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)  # reparameterisation
    logits = model.decode_logits(latents).float()
    if model.config.reconstruction == "bce":
        reconstruction = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    else:
        reconstruction = F.mse_loss(logits, targets, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    return (reconstruction + model.config.kl_weight * kl) / images.size(0)


def save(model: VAE, directory: Path) -> None:
    save_plain(model, directory, "aigc-vae", _FILE_NAMES)


def load(directory: Path, device: str) -> VAE:
    return load_plain(VAE, VAEModelConfig, directory, device, _FILE_NAMES)


def image_info(model: VAE) -> dict:
    return {**model.data, "class_conditional": False}


@torch.inference_mode()
def sample(model: VAE, noise: torch.Tensor, labels, gen_cfg: Any, generators) -> torch.Tensor:
    """Decode latents drawn from the prior. `noise` is B×latent_dim (see latent_shape)."""
    return model.decode(noise)


def latent_shape(model: VAE) -> tuple[int, ...]:
    return (model.config.latent_dim,)


@torch.inference_mode()
def reconstruct(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """The decoder's image of each input's posterior mean, in [-1, 1]."""
    mean, _ = model.encode(images)
    return model.decode(mean)

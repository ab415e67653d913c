"""Images from an image model: seeded noise per image → backend.sample → uint8 pixels.

Image i starts from noise drawn by its own generator seeded from (seed, i) on the CPU, so an
image depends only on the seed and its number — not on the count, the batch or the device it is
denoised on. torch is imported inside the functions that sample: `aigc generate` reads seeds,
batches and labels from here for its manifest keys, and a finished re-run never needs torch.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from aigc_cli.config import ImageGenerateConfig
from aigc_cli.errors import AigcError

if TYPE_CHECKING:
    import torch

    from aigc_cli.inference.loading import LoadedModel


def image_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"image\0{seed}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def batch_ranges(count: int, batch_size: int) -> list[range]:
    return [range(start, min(count, start + batch_size)) for start in range(0, count, batch_size)]


def class_labels(info: dict, count: int, gc: ImageGenerateConfig) -> list[int] | None:
    """The class of each image when the model is class-conditional (generate.images.class_labels, cycled)."""
    if not info["class_conditional"]:
        return None
    wanted = gc.class_labels or list(range(len(info["classes"])))
    bad = [c for c in wanted if not 0 <= c < len(info["classes"])]
    if bad:
        raise AigcError(f"generate.images.class_labels {bad} outside 0..{len(info['classes']) - 1}", f"classes are {info['classes']}")
    return [wanted[i % len(wanted)] for i in range(count)]


def sample_images(loaded: LoadedModel, count: int, seed: int, gc: ImageGenerateConfig) -> tuple[np.ndarray, list[int] | None]:
    """`count` images as uint8 (N, C, H, W), and the class of each when the model is class-conditional."""
    labels = class_labels(loaded.info, count, gc)
    chunks = [sample_image_batch(loaded, indices, seed, gc, labels) for indices in batch_ranges(count, gc.batch_size)]
    return np.concatenate(chunks), labels


def sample_image_batch(loaded: LoadedModel, indices: range, seed: int, gc: ImageGenerateConfig,
                       labels: list[int] | None) -> np.ndarray:
    """Images number `indices` as uint8 (len(indices), C, H, W)."""
    import torch

    generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]
    shape = tuple(loaded.backend.latent_shape(loaded.model))
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(loaded.device)
    batch_labels = torch.tensor([labels[i] for i in indices], device=loaded.device) if labels else None
    return to_uint8(loaded.backend.sample(loaded.model, noise, batch_labels, gc, generators))


def reconstruct(loaded: LoadedModel, originals: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The vae's reconstructions (one encoder-decoder pass) of uint8 images, as uint8."""
    import torch

    chunks = []
    for start in range(0, len(originals), batch_size):
        batch = torch.from_numpy(originals[start:start + batch_size]).float().div(127.5).sub(1).to(loaded.device)
        chunks.append(to_uint8(loaded.backend.reconstruct(loaded.model, batch)))
    return np.concatenate(chunks)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats → 0..255 uint8 (rounded, so the mapping is exact for prepared images)."""
    import torch

    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()

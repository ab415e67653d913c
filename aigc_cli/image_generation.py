"""`aigc generate` for image backends: N images from a seed → PNG files, one grid, a manifest.

Image i starts from noise drawn by its own generator seeded from (seed, i) on the CPU, so an
image depends only on the seed and its number — not on the batch size, the count or the device
it is denoised on — and the same seed writes byte-identical PNGs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aigc_cli.atomic_files import staging_dir, write_json_atomic
from aigc_cli.backends import backend_of_checkpoint, get_backend, modality
from aigc_cli.checkpoints import resolve_checkpoint
from aigc_cli.config import ExperimentConfig, ImageGenerateConfig
from aigc_cli.errors import AigcError
from aigc_cli.provenance import software_versions, write_provenance


@dataclass
class LoadedImageModel:
    checkpoint: Path
    backend_name: str
    backend: object
    model: torch.nn.Module
    device: str

    @property
    def info(self) -> dict:
        return self.backend.image_info(self.model)


@dataclass
class ImageOutputs:
    out_dir: Path
    files: list[Path]
    grid: Path
    reconstructions: list[Path] = field(default_factory=list)
    reconstruction_grid: Path | None = None


def load_image_checkpoint(path: str | Path, device: str = "auto") -> LoadedImageModel:
    checkpoint = resolve_checkpoint(path)
    name = backend_of_checkpoint(checkpoint)
    backend = get_backend(name)
    if modality(backend) != "image":
        raise AigcError(f"{checkpoint} holds a {name} text model, not an image model", "pass a checkpoint of a ddpm, vae or gan run")
    device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    model = backend.load(checkpoint, device)
    model.eval()
    return LoadedImageModel(checkpoint, name, backend, model, device)


def image_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"image\0{seed}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_images(loaded: LoadedImageModel, count: int, seed: int, gc: ImageGenerateConfig) -> tuple[np.ndarray, list[int] | None]:
    """`count` images as uint8 (N, C, H, W), and the class of each when the model is class-conditional."""
    backend, info = loaded.backend, loaded.info
    labels = None
    if info["class_conditional"]:
        wanted = gc.class_labels or list(range(len(info["classes"])))
        bad = [c for c in wanted if not 0 <= c < len(info["classes"])]
        if bad:
            raise AigcError(f"generate.images.class_labels {bad} outside 0..{len(info['classes']) - 1}", f"classes are {info['classes']}")
        labels = [wanted[i % len(wanted)] for i in range(count)]
    shape = tuple(backend.latent_shape(loaded.model))
    chunks = []
    for start in range(0, count, gc.batch_size):
        indices = range(start, min(count, start + gc.batch_size))
        generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(loaded.device)
        batch_labels = torch.tensor([labels[i] for i in indices], device=loaded.device) if labels else None
        images = backend.sample(loaded.model, noise, batch_labels, gc, generators)
        chunks.append(to_uint8(images))
    return np.concatenate(chunks), labels


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats → 0..255 uint8 (rounded, so the mapping is exact for prepared images)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def save_png(pixels: np.ndarray, path: Path) -> None:
    """(C, H, W) uint8 → PNG. Pillow writes no timestamp, so equal pixels give equal bytes."""
    from PIL import Image

    image = Image.fromarray(pixels[0], mode="L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")
    image.save(path, format="PNG", optimize=False)


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) → one (C, H', W') tiled image with a black border between tiles."""
    n, c, h, w = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    grid = np.zeros((c, rows * (h + padding) + padding, columns * (w + padding) + padding), dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
        grid[:, top:top + h, left:left + w] = image
    return grid


def generate_images(cfg: ExperimentConfig, checkpoint: str | Path | None, num: int | None = None, seed: int | None = None,
                    out: str | Path | None = None, log: Callable[[str], None] = lambda _: None) -> ImageOutputs:
    gc = cfg.generate.images
    count = num or gc.num_images
    seed = cfg.generate.seed if seed is None else seed
    loaded = load_image_checkpoint(checkpoint or cfg.train.out_dir)
    out_dir = Path(out or cfg.generate.out or Path(cfg.train.out_dir) / "samples")
    if out_dir.exists() and not out_dir.is_dir():
        raise AigcError(f"--out {out_dir} is a file; image generation writes a folder", "pass a directory path to --out")
    log(f"sampling {count} image(s) from {loaded.checkpoint} with seed {seed}")
    images, labels = sample_images(loaded, count, seed, gc)
    recon_pairs = None
    if gc.reconstruct:
        recon_pairs = reconstruct_images(loaded, gc.reconstruct, cfg)

    # The whole folder appears at once (or the old one stays): a reader never sees half a batch.
    with staging_dir(out_dir, replace=True) as tmp:
        names = [f"{i:05d}.png" for i in range(count)]
        for name, pixels in zip(names, images):
            save_png(pixels, tmp / name)
        save_png(make_grid(images, gc.grid_columns), tmp / "grid.png")
        recon_names: list[str] = []
        if recon_pairs is not None:
            originals, reconstructed = recon_pairs
            (tmp / "reconstructions").mkdir()
            for i, pixels in enumerate(reconstructed):
                recon_names.append(f"reconstructions/{i:05d}.png")
                save_png(pixels, tmp / recon_names[-1])
            # Originals in the odd rows, reconstructions under them.
            columns = gc.grid_columns or max(1, math.ceil(math.sqrt(len(originals))))
            rows = [part for start in range(0, len(originals), columns)
                    for part in (originals[start:start + columns], reconstructed[start:start + columns])]
            paired = np.concatenate([np.concatenate([r, np.zeros((columns - len(r), *r.shape[1:]), np.uint8)]) for r in rows])
            save_png(make_grid(paired, columns), tmp / "reconstructions_grid.png")
        write_json_atomic(tmp / "samples.json", {
            "checkpoint": str(loaded.checkpoint), "backend": loaded.backend_name, "seed": seed, "count": count,
            "files": names, "labels": labels, "classes": loaded.info["classes"], "params": gc.model_dump(mode="json"),
            "reconstructions": recon_names, "versions": software_versions(),
        })
        write_provenance(tmp, cfg, checkpoint=str(loaded.checkpoint))
    result = ImageOutputs(out_dir, [out_dir / n for n in names], out_dir / "grid.png")
    if recon_pairs is not None:
        result.reconstructions = [out_dir / n for n in recon_names]
        result.reconstruction_grid = out_dir / "reconstructions_grid.png"
    return result


def reconstruct_images(loaded: LoadedImageModel, source: str, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions) as uint8 arrays, for the vae backend."""
    if not hasattr(loaded.backend, "reconstruct"):
        raise AigcError(f"generate.images.reconstruct: the {loaded.backend_name} backend has no encoder", "reconstructions need a vae checkpoint")
    originals = load_images_for(loaded.info, source, cfg)
    chunks = []
    for start in range(0, len(originals), 256):
        batch = torch.from_numpy(originals[start:start + 256]).float().div(127.5).sub(1).to(loaded.device)
        chunks.append(to_uint8(loaded.backend.reconstruct(loaded.model, batch)))
    return originals, np.concatenate(chunks)


def load_images_for(info: dict, source: str, cfg: ExperimentConfig) -> np.ndarray:
    """`val` (the prepared validation split), a folder, or one image file → uint8 (N, C, H, W) at the model's size."""
    from aigc_cli.data.images import IMAGE_SUFFIXES, ImageArray, open_image, to_array

    if source == "val":
        if cfg.data is None:
            raise AigcError("generate.images.reconstruct=val needs the data section", "add data.prepared_dir, or name an image folder")
        return np.array(ImageArray(cfg.data.prepared_dir, "val").images)  # a copy: the memory map is read-only
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise AigcError(f"generate.images.reconstruct: no images at {path}", "name an image file, a folder of images, or `val`")
    arrays = []
    for file in files:
        try:
            arrays.append(to_array(open_image(file), info["size"], info["channels"]))
        except Exception as exc:  # noqa: BLE001
            raise AigcError(f"cannot read image {file}: {exc}", "pass readable PNG/JPEG files") from None
    return np.stack(arrays)

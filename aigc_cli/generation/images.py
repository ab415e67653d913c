"""`aigc generate` for image backends: N images from a seed → PNG files, one grid, a manifest.

Image i starts from its own seeded noise (aigc_cli/inference/image_sampling.py), so the same
seed writes byte-identical PNGs whatever the count. Images are denoised in fixed batches
(generate.images.batch_size), each PNG is written atomically and recorded in the folder's
manifest.jsonl, so a re-run after a kill samples only the batches that are not finished, and a
re-run with nothing missing loads no model.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from aigc_cli.runs.atomic_files import remove_stale_temporaries, write_bytes_atomic, write_json_atomic
from aigc_cli.backends import backend_of_checkpoint, spec
from aigc_cli.runs.checkpoints import checkpoint_identity, resolve_checkpoint
from aigc_cli.config import ExperimentConfig, ImageGenerateConfig
from aigc_cli.data.records import sha256_file
from aigc_cli.errors import AigcError
from aigc_cli.generation.manifest import OutputManifest, item_key
from aigc_cli.inference.image_sampling import batch_ranges, class_labels, reconstruct, sample_image_batch
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.runs.provenance import software_versions, write_provenance

if TYPE_CHECKING:
    from aigc_cli.inference.loading import LoadedModel


@dataclass
class ImageOutputs:
    out_dir: Path
    files: list[Path]
    grid: Path
    reconstructions: list[Path] = field(default_factory=list)
    reconstruction_grid: Path | None = None

    def to_json(self) -> dict:
        out = {"outputs": [str(f) for f in self.files], "grid": str(self.grid), "count": len(self.files), "out_dir": str(self.out_dir)}
        if self.reconstruction_grid is not None:
            out.update(reconstructions=[str(f) for f in self.reconstructions], reconstruction_grid=str(self.reconstruction_grid))
        return out

    def summary_lines(self) -> list[str]:
        lines = [f"images: {self.out_dir} ({len(self.files)} PNG files)", f"grid: {self.grid}"]
        return lines if self.reconstruction_grid is None else lines + [f"reconstructions: {self.reconstruction_grid}"]


def png_bytes(pixels: np.ndarray) -> bytes:
    """(C, H, W) uint8 → PNG. Pillow writes no timestamp, so equal pixels give equal bytes."""
    import io

    from PIL import Image

    image = Image.fromarray(pixels[0], mode="L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def save_png(pixels: np.ndarray, path: Path) -> None:
    write_bytes_atomic(path, png_bytes(pixels))


def read_png(path: Path) -> np.ndarray:
    """A PNG written by save_png → (C, H, W) uint8, exactly the pixels saved."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


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


def generate_images(cfg: ExperimentConfig, checkpoint: str | Path | None, log: Callable[[str], None] = lambda _: None,
                    force: bool = False) -> ImageOutputs:
    """generate.images.num_images PNG files, grid.png and samples.json in generate.out, idempotently:
    batches whose images are all in manifest.jsonl (same checkpoint, seed, parameters) and intact on
    disk are reused."""
    gc = cfg.generate.images
    count, seed = gc.num_images, cfg.generate.seed
    out_dir = Path(cfg.generate.out or Path(cfg.train.out_dir) / "samples")
    if out_dir.exists() and not out_dir.is_dir():
        raise AigcError(f"--out {out_dir} is a file; image generation writes a folder", "pass a directory path to --out")
    with exclusive_lock(out_dir, "output folder"):
        loaded = _LazyImageModel(resolve_checkpoint(checkpoint or cfg.train.out_dir))
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        remove_stale_temporaries(out_dir / "reconstructions")
        with OutputManifest(out_dir / MANIFEST, force) as manifest:
            images, labels, names, keys = _sample_into(out_dir, loaded, count, seed, gc, manifest, log)
            result = ImageOutputs(out_dir, [out_dir / n for n in names], out_dir / "grid.png")
            save_png(make_grid(images, gc.grid_columns), result.grid)
            recon_names = _write_reconstructions(out_dir, loaded.model, gc, cfg) if gc.reconstruct else _remove_reconstructions(out_dir)
            if recon_names:
                result.reconstructions = [out_dir / n for n in recon_names]
                result.reconstruction_grid = out_dir / "reconstructions_grid.png"
            write_json_atomic(out_dir / "samples.json", {
                "checkpoint": str(loaded.checkpoint), "backend": loaded.backend_name, "seed": seed, "count": count,
                "files": names, "labels": labels, "classes": loaded.info["classes"], "params": gc.model_dump(mode="json"),
                "reconstructions": recon_names, "versions": software_versions(),
            })
            write_provenance(out_dir, cfg, checkpoint=str(loaded.checkpoint))
            manifest.finish(keys)
    return result


class _LazyImageModel:
    """A checkpoint whose model loads on first use: a re-run whose images are all in the manifest
    reads the image size and classes from the checkpoint's JSON files and never loads it."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint
        self.backend_name = backend_of_checkpoint(checkpoint)
        self._model: LoadedModel | None = None
        self.info = _image_info_from_files(checkpoint)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            from aigc_cli.inference.loading import load_model

            self._model = load_model(self.checkpoint, modality="image")
            self.info = self._model.info
        return self._model


def _image_info_from_files(checkpoint: Path) -> dict | None:
    """size, channels, classes and class_conditional as written by aigc's image backends, or None."""
    import json

    for name in ("aigc_image.json", "config.json"):
        try:
            record = json.loads((checkpoint / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and {"size", "channels"} <= record.keys():
            return {"size": record["size"], "channels": record["channels"], "classes": record.get("classes"),
                    "class_conditional": bool(record.get("class_conditional", False))}
    return None


MANIFEST = "manifest.jsonl"
_IMAGE_NAME = re.compile(r"\d{5,}\.png")


def _sample_into(out_dir: Path, loaded: _LazyImageModel, count: int, seed: int, gc: ImageGenerateConfig,
                 manifest: OutputManifest, log) -> tuple[np.ndarray, list[int] | None, list[str], list[str]]:
    info = loaded.info or loaded.model.info
    labels = class_labels(info, count, gc)
    names = [f"{i:05d}.png" for i in range(count)]
    identity = checkpoint_identity(loaded.checkpoint)
    # batch_size is part of the key: it decides which images are denoised together, and batched
    # arithmetic need not round exactly like another batching would.
    params = gc.model_dump(mode="json", exclude={"num_images", "grid_columns", "reconstruct", "class_labels"})
    batches = batch_ranges(count, gc.batch_size)
    keys = {i: item_key(checkpoint=identity, seed=seed, index=i, batch=[b.start, b.stop], params=params,
                        label=labels[i] if labels else None) for b in batches for i in b}
    images = np.zeros((count, info["channels"], info["size"], info["size"]), np.uint8)
    todo = []
    for indices in batches:
        done = [_finished_image(manifest, keys[i], out_dir / names[i]) for i in indices]
        if all(pixels is not None for pixels in done):
            images[indices.start:indices.stop] = np.stack(done)
        else:
            todo.append(indices)
    remaining = sum(len(b) for b in todo)
    reused = f"; {count - remaining} already done (in {MANIFEST}), sampling {remaining}" if remaining < count else ""
    log(f"sampling {count} image(s) from {loaded.checkpoint} with seed {seed}{reused}")
    for indices in todo:
        batch = sample_image_batch(loaded.model, indices, seed, gc, labels)
        for i, pixels in zip(indices, batch):
            data = png_bytes(pixels)
            write_bytes_atomic(out_dir / names[i], data)
            manifest.add({"key": keys[i], "file": names[i], "sha256": hashlib.sha256(data).hexdigest()})
        images[indices.start:indices.stop] = batch
    # Images of an earlier, larger run in this folder go: a fresh folder would not have them.
    for old in out_dir.glob("*.png"):
        if _IMAGE_NAME.fullmatch(old.name) and int(old.stem) >= count:
            old.unlink()
    return images, labels, names, [keys[i] for i in range(count)]


def _finished_image(manifest: OutputManifest, key: str, path: Path) -> np.ndarray | None:
    """The pixels of a finished image, or None when it is not in the manifest or its file changed since."""
    record = manifest.done.get(key)
    if record is None or not path.is_file() or sha256_file(path) != record.get("sha256"):
        return None
    return read_png(path)


def _remove_reconstructions(out_dir: Path) -> list[str]:
    """Reconstructions of an earlier run with generate.images.reconstruct set: a fresh folder would not have them."""
    for old in (out_dir / "reconstructions").glob("*.png"):
        if _IMAGE_NAME.fullmatch(old.name):
            old.unlink()
    (out_dir / "reconstructions_grid.png").unlink(missing_ok=True)
    return []


def _write_reconstructions(out_dir: Path, loaded: LoadedModel, gc: ImageGenerateConfig, cfg: ExperimentConfig) -> list[str]:
    """The vae's reconstructions (recomputed each run: one encoder-decoder pass, no sampling)."""
    originals, reconstructed = reconstruct_images(loaded, gc.reconstruct, cfg)
    names = [f"reconstructions/{i:05d}.png" for i in range(len(reconstructed))]
    for name, pixels in zip(names, reconstructed):
        save_png(pixels, out_dir / name)
    for old in (out_dir / "reconstructions").glob("*.png"):
        if f"reconstructions/{old.name}" not in set(names):
            old.unlink()
    # Originals in the odd rows, reconstructions under them.
    columns = gc.grid_columns or max(1, math.ceil(math.sqrt(len(originals))))
    rows = [part for start in range(0, len(originals), columns)
            for part in (originals[start:start + columns], reconstructed[start:start + columns])]
    paired = np.concatenate([np.concatenate([r, np.zeros((columns - len(r), *r.shape[1:]), np.uint8)]) for r in rows])
    save_png(make_grid(paired, columns), out_dir / "reconstructions_grid.png")
    return names


def reconstruct_images(loaded: LoadedModel, source: str, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions) as uint8 arrays, for the vae backend."""
    if not spec(loaded.backend_name).reconstructs:
        raise AigcError(f"generate.images.reconstruct: the {loaded.backend_name} backend has no encoder", "reconstructions need a vae checkpoint")
    originals = load_images_for(loaded.info, source, cfg)
    return originals, reconstruct(loaded, originals)


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

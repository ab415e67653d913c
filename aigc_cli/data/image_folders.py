"""The checks every folder-shaped text-to-image input goes through before anything is loaded or
written: a folder of images to read (DreamBooth's instance and class images), a folder to write
images into (class images), a Stable-Diffusion-style pipeline directory (finetune.base) and an
autoencoder directory (model.autoencoder). Each names the config key and says what is wrong in
one line. Nothing here imports torch: preflight.py runs these before a run directory exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aigc_cli.errors import AigcError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
AUTOENCODERS = ("AutoencoderKL", "VQModel")


def image_files(folder: str | Path, key: str) -> list[Path]:
    """The images under `folder` (recursive, sorted): an error naming `key` when it is missing, a
    file, or holds no image (saying what it holds instead)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise AigcError(f"{key} not found: {folder}", f"point {key} at a folder of images (.png, .jpg, ...)")
    if not folder.is_dir():
        raise AigcError(f"{key} {folder} is a file, not a folder", f"point {key} at the folder that holds the images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted(p.name for p in folder.rglob("*") if p.is_file())
        held = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else " (it is empty)"
        raise AigcError(f"{key}: no images (.png, .jpg, ...) under {folder}{held}", f"put the images in {folder}, or point {key} at a folder of images")
    return files


def writable_folder(folder: str | Path, key: str) -> Path:
    """A folder aigc may write images into: existing and writable, or creatable (nothing is created here)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise AigcError(f"{key} {folder} is a file, not a folder", f"point {key} at a folder (new or holding images)")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "cannot be written" if existing == folder else f"cannot be created ({existing} is not a writable folder)"
        raise AigcError(f"{key} {folder} {what}", f"point {key} at a folder you can write, or fill it with the images beforehand")
    return folder


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pipeline_problem(directory: str | Path) -> str | None:
    """What keeps `directory` from being a Stable-Diffusion-style pipeline (diffusers save_pretrained:
    model_index.json naming each part, a sub-folder per part), or None."""
    directory = Path(directory)
    index = _json_object(directory / "model_index.json")
    if index is None:
        return "its model_index.json is not a JSON object" if (directory / "model_index.json").exists() else "no model_index.json"
    missing = [part for part in PIPELINE_PARTS if not (directory / part).is_dir()]
    if missing:
        return f"no {', '.join(p + '/' for p in missing)} sub-folder"
    scheduler = index.get("scheduler")
    if not (isinstance(scheduler, list) and len(scheduler) == 2 and isinstance(scheduler[1], str)):
        return "model_index.json names no scheduler class (\"scheduler\": [\"diffusers\", \"DDIMScheduler\"])"
    unconfigured = [part for part in ("unet", "vae", "text_encoder") if _json_object(directory / part / "config.json") is None]
    if unconfigured:
        return f"no readable config.json in {', '.join(p + '/' for p in unconfigured)}"
    return None


def check_pipeline(directory: str | Path, key: str = "finetune.base") -> None:
    problem = pipeline_problem(directory)
    if problem is not None:
        raise AigcError(f"{key} {directory} is not a Stable-Diffusion-style pipeline directory: {problem}",
                        f"point {key} at a diffusers pipeline directory (StableDiffusionPipeline.save_pretrained: model_index.json, {', '.join(p + '/' for p in PIPELINE_PARTS)})")


def autoencoder_folder(path: Path, key: str = "model.autoencoder") -> tuple[Path, str]:
    """(the folder, its class name: AutoencoderKL or VQModel) of an autoencoder directory, or a pipeline's
    vae/ (`path` as already resolved from a run directory to its checkpoint)."""
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    config = _json_object(folder / "config.json")
    name = config.get("_class_name") if config else None
    if name not in AUTOENCODERS:
        found = f"its config.json is for {name}" if isinstance(name, str) else ("no readable config.json" if config is None else "its config.json names no _class_name")
        raise AigcError(f"{key} {path} is not an AutoencoderKL or VQModel directory (nor a pipeline with one in vae/): {found}",
                        "point it at a diffusers AutoencoderKL directory (config.json + weights), a pipeline directory or a latent-diffusion run")
    return folder, name

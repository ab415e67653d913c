"""`aigc generate --prompt TEXT` / `--prompts-file` on a checkpoint that samples from prompts (made by
`aigc finetune` on a Stable-Diffusion-style pipeline, or by `aigc train` with latent-diffusion): PNGs per prompt, grid.png, samples.json
and manifest.jsonl, as image generation writes them.

Image k of prompt p starts from latents drawn by its own generator, seeded from (generate.seed,
the prompt, k): the same seed and prompt give the same image whatever else is asked for. Batches
are one prompt's images in generate.images.batch_size chunks; a re-run samples only what the
manifest does not hold.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from aigc_cli.backends import backend_of_checkpoint
from aigc_cli.config import ExperimentConfig
from aigc_cli.errors import AigcError
from aigc_cli.generation.images import make_grid, png_bytes, read_png, save_png
from aigc_cli.generation.manifest import OutputManifest, item_key
from aigc_cli.inference.image_sampling import batch_ranges, to_uint8
from aigc_cli.runs.atomic_files import remove_stale_temporaries, write_bytes_atomic, write_json_atomic
from aigc_cli.runs.checkpoints import checkpoint_identity
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.runs.provenance import software_versions, write_provenance

MANIFEST = "manifest.jsonl"


@dataclass
class PromptedImages:
    out_dir: Path
    files: list[Path]
    grid: Path
    prompts: list[str]

    def to_json(self) -> dict:
        return {"outputs": [str(f) for f in self.files], "grid": str(self.grid), "count": len(self.files),
                "out_dir": str(self.out_dir), "prompts": self.prompts}

    def summary_lines(self) -> list[str]:
        return [f"images: {self.out_dir} ({len(self.files)} PNG files for {len(self.prompts)} prompt(s))", f"grid: {self.grid}"]


def prompt_image_seed(seed: int, prompt: str, index: int) -> int:
    digest = hashlib.sha256(f"prompted-image\0{seed}\0{prompt}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def read_prompt_lines(path: str | Path) -> list[str]:
    """One prompt per line, or JSONL rows with a 'prompt' field (blank lines skipped): the text verbs'
    prompts file (read_prompts_file: its checks on FIFOs, encodings, BOMs and null fields), one text per row."""
    from aigc_cli.data.records import is_jsonl, read_jsonl
    from aigc_cli.generation.text import read_prompts_file

    records = read_prompts_file(path)
    if is_jsonl(path):  # read_prompts_file writes every field as text (for templates); a prompt must be one already
        for where, row in read_jsonl(path, "each line must be a JSON object with a 'prompt' field", objects_only=False):
            text = row.get("prompt") if isinstance(row, dict) else row
            if text is not None and not isinstance(text, str):
                raise AigcError(f"{where}: the prompt is a JSON {type(text).__name__}, not a string", "write each prompt as text: {\"prompt\": \"a photo of ...\"}")
    prompts = []
    for record in records:
        text = record.get("source", record.get("prompt"))
        if text is None:
            raise AigcError(f"{record['_where']} is not a JSON object with a 'prompt' field", "write one {\"prompt\": ...} per line, or use a .txt file")
        if text.strip():
            prompts.append(text.strip())
    if not prompts:
        raise AigcError(f"{path} holds no prompts", "write one prompt per line")
    return prompts


def check_prompts(prompts: list) -> None:
    """Every prompt is text with something in it: an empty one (an unset shell variable in --prompt "$P")
    would quietly sample unconditioned images under a name that says otherwise."""
    for number, prompt in enumerate(prompts, 1):
        if not isinstance(prompt, str) or not prompt.strip():
            which = "the prompt" if len(prompts) == 1 else f"prompt {number} of {len(prompts)}"
            raise AigcError(f"{which} is empty" if isinstance(prompt, str) else f"{which} is not text ({prompt!r})",
                            "give --prompt the text to draw (or generate.prompts a list of texts)")


def generate_from_prompts(cfg: ExperimentConfig, checkpoint: Path, prompts: list[str], per_prompt: int,
                          log: Callable[[str], None] = lambda _: None, force: bool = False) -> PromptedImages:
    check_prompts(prompts)
    gc, seed = cfg.generate.images, cfg.generate.seed
    out_dir = Path(cfg.generate.out or Path(cfg.train.out_dir) / "samples")
    if out_dir.exists() and not out_dir.is_dir():
        raise AigcError(f"--out {out_dir} is a file; image generation writes a folder", "pass a directory path to --out")
    identity = checkpoint_identity(checkpoint)
    params = gc.model_dump(mode="json", exclude={"num_images", "grid_columns", "reconstruct", "class_labels"})
    model = None
    with exclusive_lock(out_dir, "output folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        with OutputManifest(out_dir / MANIFEST, force) as manifest:
            names, keys, images = [], [], []
            for p, prompt in enumerate(prompts):
                for indices in batch_ranges(per_prompt, gc.batch_size):
                    batch_names = [f"p{p:03d}_{k:03d}.png" for k in indices]
                    batch_keys = [item_key(checkpoint=identity, seed=seed, prompt=prompt, index=k, batch=[indices.start, indices.stop],
                                           params=params) for k in indices]
                    done = [_finished(manifest, key, out_dir / name) for key, name in zip(batch_keys, batch_names)]
                    if any(d is None for d in done):
                        if model is None:
                            from aigc_cli.inference.loading import load_model

                            log(f"sampling {len(prompts)} prompt(s) × {per_prompt} image(s) from {checkpoint} with seed {seed}")
                            model = load_model(checkpoint, modality="image")
                        done = sample_prompt_batch(model, prompt, indices, seed, gc)
                        for name, key, pixels in zip(batch_names, batch_keys, done):
                            data = png_bytes(pixels)
                            write_bytes_atomic(out_dir / name, data)
                            manifest.add({"key": key, "file": name, "sha256": hashlib.sha256(data).hexdigest()})
                    names += batch_names
                    keys += batch_keys
                    images += list(done)
            _remove_stale_images(out_dir, set(names))
            grid = out_dir / "grid.png"
            save_png(make_grid(np.stack(images), gc.grid_columns or per_prompt), grid)
            write_json_atomic(out_dir / "samples.json", {
                "checkpoint": str(checkpoint), "backend": backend_of_checkpoint(checkpoint), "seed": seed, "per_prompt": per_prompt,
                "prompts": prompts, "files": names, "params": params, "versions": software_versions()})
            write_provenance(out_dir, cfg, checkpoint=str(checkpoint))
            manifest.finish(keys)
    return PromptedImages(out_dir, [out_dir / n for n in names], grid, prompts)


def _remove_stale_images(out_dir: Path, current: set[str]) -> None:
    """Images of an earlier run in this folder with more prompts or images go (before samples.json and the
    manifest are rewritten without them): a fresh folder would not have them, and nothing may count them as current."""
    for old in out_dir.glob("p*_*.png"):
        if _PROMPT_IMAGE.fullmatch(old.name) and old.name not in current:
            old.unlink()


_PROMPT_IMAGE = re.compile(r"p\d{3,}_\d{3,}\.png")


def _finished(manifest: OutputManifest, key: str, path: Path):
    from aigc_cli.data.records import sha256_file

    record = manifest.done.get(key)
    if record is None or not path.is_file() or sha256_file(path) != record.get("sha256"):
        return None
    return read_png(path)


def sample_prompt_batch(loaded, prompt: str, indices: range, seed: int, gc) -> np.ndarray:
    """Images `indices` of `prompt` as uint8 (N, C, H, W): what `aigc generate` runs per batch (and the benchmark times)."""
    import torch

    backend = loaded.backend
    generators = [torch.Generator().manual_seed(prompt_image_seed(seed, prompt, k)) for k in indices]
    shape = tuple(backend.latent_shape(loaded.model))
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(loaded.device)
    images = backend.sample_prompts(loaded.model, noise, [prompt] * len(indices), gc, generators, gc.negative_prompt)
    return to_uint8(backend.as_data_channels(loaded.model, images))

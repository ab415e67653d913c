"""Checkpoint directories: written whole or not at all, found again by `latest`.

<run_dir>/checkpoints/step-000200/ holds the backend's own files (for `gpt`, a Hugging Face
model directory), the tokenizer, aigc.json (backend, step) and training_state.pt (optimizer,
step and RNG state for --resume, loaded with weights_only=True).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from aigc_cli.atomic_files import staging_dir, write_json_atomic, write_text_atomic
from aigc_cli.data.tokenization import copy_tokenizer_files
from aigc_cli.errors import AigcError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINING_STATE = "training_state.pt"


def write_checkpoint(run_dir: Path, step: int, backend_name: str, backend, model, training_state: dict,
                     tokenizer_dir: Path | None, keep: int = 0) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    with staging_dir(final, replace=True) as tmp:
        backend.save(model, tmp)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp, backend.context_length(model))
        torch.save(training_state, tmp / TRAINING_STATE)
        write_json_atomic(tmp / "aigc.json", {"backend": backend_name, "step": step})
        for name in ("config.yaml", "provenance.json"):
            if (Path(run_dir) / name).is_file():
                shutil.copy2(Path(run_dir) / name, tmp / name)
    write_text_atomic(root / LATEST, final.name + "\n")
    if keep:
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return path if path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory standing for its latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise AigcError(f"checkpoint not found: {path}", "pass a directory under <train.out_dir>/checkpoints/, or a run directory")
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    if any((path / name).is_file() for name in ("config.json", "adapter_config.json", "model_index.json", "aigc.json")):
        return path
    raise AigcError(f"{path} is not a checkpoint or run directory (no config.json, no checkpoints/latest)",
                    "pass a directory under <train.out_dir>/checkpoints/")


def read_training_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / TRAINING_STATE
    if not path.is_file():
        raise AigcError(f"{checkpoint} has no {TRAINING_STATE}, so training cannot resume from it", "resume from a checkpoint written by `aigc train`")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_step(checkpoint: Path) -> int | None:
    record = Path(checkpoint) / "aigc.json"
    return json.loads(record.read_text(encoding="utf-8")).get("step") if record.is_file() else None

"""Checkpoint directories: written whole or not at all, verified on load, found again by `latest`.

<run_dir>/checkpoints/step-000200/ holds the backend's own files (for `gpt`, a Hugging Face
model directory), the tokenizer, aigc.json (backend, step), training_state.pt (optimizer, step
and RNG state for --resume, loaded with weights_only=True) and checksums.json (the SHA-256 of
every other file). A checkpoint is written into a temporary directory, synced to disk and
renamed into place; only then does `checkpoints/latest` move to it, and only after that are old
checkpoints rotated out. Whatever instant a process dies at, `latest` names a complete
checkpoint — and if a disk or a person damages one later, its checksums say so and the
previous good one is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from aigc_cli.runs.atomic_files import staging_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from aigc_cli.backends import CHECKPOINT_MARKERS
from aigc_cli.data.records import sha256_file
from aigc_cli.errors import AigcError, warn

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINING_STATE = "training_state.pt"
CHECKSUMS = "checksums.json"
MARKERS = CHECKPOINT_MARKERS  # aigc.json, or the marker file a backend declares for directories from other tools
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def write_checkpoint(run_dir: Path, step: int, backend_name: str, backend, model, training_state: dict,
                     tokenizer_dir: Path | None, keep: int = 0) -> Path:
    import torch

    from aigc_cli.data.tokenization import copy_tokenizer_files

    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    try:
        with staging_dir(final, replace=True) as tmp:
            backend.save(model, tmp)
            if tokenizer_dir is not None:
                copy_tokenizer_files(tokenizer_dir, tmp, backend.context_length(model))
            state = io.BytesIO()  # serialised first, so a full disk fails in our write, with an errno
            torch.save(training_state, state)
            write_bytes_atomic(tmp / TRAINING_STATE, state.getvalue())
            write_json_atomic(tmp / "aigc.json", {"backend": backend_name, "step": step})
            for name in ("config.yaml", "provenance.json"):
                if (Path(run_dir) / name).is_file():
                    shutil.copy2(Path(run_dir) / name, tmp / name)
            write_json_atomic(tmp / CHECKSUMS, {"algorithm": "sha256", "files": file_checksums(tmp)})
    except Exception as exc:  # noqa: BLE001 — safetensors reports a failed write as its own error type
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if isinstance(exc, OSError) or not match:
            raise
        code = int(match.group(1))
        raise OSError(code, os.strerror(code), str(final)) from exc
    write_text_atomic(root / LATEST, final.name + "\n")
    rotate_checkpoints(root, step, keep)
    return final


def rotate_checkpoints(root: Path, current_step: int, keep: int) -> None:
    """Keep the newest `keep` checkpoints up to `current_step` (0: all). Checkpoints of later steps
    belong to a future this resumed run has replaced, so they go too. Each is renamed to a
    temporary name before it is deleted: a kill mid-delete never leaves a half checkpoint under
    a step-* name."""
    ordered = list_checkpoints(root.parent)
    stale = [p for p in ordered if checkpoint_step_of_name(p) > current_step]
    kept = [p for p in ordered if checkpoint_step_of_name(p) <= current_step]
    if keep:
        stale += kept[:-keep]
    for old in stale:
        doomed = old.with_name(f".{old.name}.removing.partial")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def file_checksums(directory: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory` except checksums.json."""
    directory = Path(directory)
    sums = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != CHECKSUMS:
            sums[rel] = sha256_file(path)
    return sums


_verified: set[tuple] = set()  # the (path, mtime, size) of every file of checkpoints this process found intact


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint according to its checksums.json, or None when it is intact
    (or has no checksums.json to check against: a model directory from elsewhere). A checkpoint
    found intact once is not hashed again by the same process (a verb checks its inputs before
    loading them)."""
    record = Path(checkpoint) / CHECKSUMS
    if not record.is_file():
        return None
    seen = _file_stats(Path(checkpoint))
    if seen in _verified:
        return None
    problem = _checksum_problem(checkpoint, record)
    if problem is None:
        _verified.add(seen)
    return problem


def _file_stats(directory: Path) -> tuple:
    return tuple((str(p.resolve()), s.st_mtime_ns, s.st_size) for p in sorted(directory.rglob("*")) if p.is_file() for s in [p.stat()])


def _checksum_problem(checkpoint: Path, record: Path) -> str | None:
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))["files"]
        if not isinstance(expected, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return f"{CHECKSUMS} is unreadable"
    for rel, digest in expected.items():
        path = Path(checkpoint) / rel
        if not path.is_file():
            return f"{rel} is missing"
        if sha256_file(path) != digest:
            return f"{rel} does not match its checksum"
    return None


def checkpoint_identity(checkpoint: Path) -> str:
    """A hash that changes whenever any file of the checkpoint does (for generation manifests).
    A LoRA adapter's identity includes its base model's."""
    checkpoint = Path(checkpoint)
    record = checkpoint / CHECKSUMS
    blob = record.read_bytes() if record.is_file() else json.dumps(file_checksums(checkpoint), sort_keys=True).encode()
    if (checkpoint / "adapter_config.json").is_file():
        base = adapter_base(checkpoint)
        if base and Path(base).is_dir():
            blob += checkpoint_identity(Path(base)).encode()
    return hashlib.sha256(blob).hexdigest()


ADAPTER_BASE = "aigc_base.json"  # beside adapter_config.json: the base's path relative to the adapter


def adapter_base(adapter: Path) -> str | None:
    """The base model of a LoRA adapter directory: adapter_config.json's base_model_name_or_path
    (absolute, so peft and other tools find it from anywhere) while it exists, else the same base
    found relative to the adapter, as aigc_base.json records it, so base and adapter moved together
    (or copied to another machine) still load. None when neither names one."""
    try:
        named = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not isinstance(named, str) or not named:
        return None
    if Path(named).exists() or not Path(named).is_absolute() and not (adapter / ADAPTER_BASE).is_file():
        return named  # present, or a hub id
    try:
        relative = json.loads((adapter / ADAPTER_BASE).read_text(encoding="utf-8"))["relative_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return named
    moved = (adapter / relative).resolve()
    return str(moved) if moved.exists() else named


def checkpoint_step_of_name(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's step-* checkpoint directories, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=checkpoint_step_of_name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points to (unverified), or None."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_bytes()[:64].decode("utf-8", "replace").strip()
    if not _STEP_NAME.fullmatch(name):  # damaged (binary bytes, an edit): the newest intact checkpoint is used instead
        warn(f"{pointer} is damaged (it does not name a step-NNNNNN checkpoint); ignoring it")
        return None
    path = pointer.parent / name
    return path if path.is_dir() else None


_STEP_NAME = re.compile(r"step-\d+")


def latest_good_checkpoint(run_dir: str | Path, report: Callable[[str], None] = warn) -> Path | None:
    """The newest intact checkpoint, starting at `latest` and going back; each damaged one is
    reported. None when the run has no checkpoint; an error when it has some but none is intact."""
    candidates = list_checkpoints(run_dir)[::-1]
    if not candidates:
        return None
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        # Newer directories than `latest` were renamed into place but never committed by it.
        candidates = [p for p in candidates if checkpoint_step_of_name(p) <= checkpoint_step_of_name(latest)]
    damaged = []
    for checkpoint in candidates:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if damaged:
                report(f"using {checkpoint} instead")
            return checkpoint
        damaged.append(checkpoint)
        report(f"checkpoint {checkpoint} is damaged ({problem}); skipping it")
    raise AigcError(f"every checkpoint in {Path(run_dir) / CHECKPOINTS} is damaged ({len(damaged)} checked)",
                    "restore one from a backup, or start a new run in another train.out_dir")


def is_model_dir(path: Path) -> bool:
    """A checkpoint or a model directory from another tool: it holds one of the marker files."""
    return any((Path(path) / name).is_file() for name in MARKERS)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory standing for its latest good checkpoint; verified."""
    path = Path(path)
    if not path.exists():
        raise AigcError(f"checkpoint not found: {path}", "pass a directory under <train.out_dir>/checkpoints/, or a run directory")
    if list_checkpoints(path):
        checkpoint = latest_good_checkpoint(path)
    elif is_model_dir(path):
        checkpoint = path
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise AigcError(f"checkpoint {checkpoint} is damaged: {problem}", "use an earlier checkpoint of the run (or the run directory)")
    else:
        raise AigcError(f"{path} is not a checkpoint or run directory (no config.json, no checkpoints/step-*)",
                        "pass a directory under <train.out_dir>/checkpoints/")
    refuse_pickled_weights(checkpoint)
    return checkpoint


def refuse_pickled_weights(directory: str | Path) -> None:
    """Refuse a model directory whose weights exist only as pickles (pytorch_model.bin and the like):
    unpickling can run any code the file's author put in it."""
    directory = Path(directory)
    for folder in [directory, *(p for p in directory.iterdir() if p.is_dir())]:
        files = [p for p in folder.iterdir() if p.is_file()]
        pickled = sorted(p for p in files if p.suffix in PICKLE_SUFFIXES and p.name != TRAINING_STATE)
        if pickled and not any(p.suffix == ".safetensors" for p in files):
            raise AigcError(f"{pickled[0]} holds pickled weights and there is no .safetensors file beside it; "
                            "aigc loads only safetensors, because unpickling a file can run arbitrary code",
                            "convert it in a trusted environment (e.g. load it and call save_pretrained(dir, safe_serialization=True)), "
                            "or use a safetensors checkpoint")


def resolve_base(base: str | None, key: str = "finetune.base") -> str:
    """A local model directory (as an absolute path) or a hub id; offline, a hub id fails fast.
    `key` is the config key that named it, for the messages."""
    if not base:
        raise AigcError(f"{key} is not set", f"set {key} to a model directory (e.g. runs/x/checkpoints/step-001000) or a hub id")
    path = Path(base).expanduser()
    if path.exists():
        path = latest_good_checkpoint(path) or path  # a run directory means its latest intact checkpoint
        if (path / "model_index.json").exists():  # a diffusers pipeline (text-to-image): whole, or said what it lacks
            from aigc_cli.data.image_folders import check_pipeline

            check_pipeline(path, key)
            return str(path.resolve())
        if not (path / "config.json").is_file():
            raise AigcError(f"{key} {base} is not a model directory (no config.json)",
                            "point it at a Hugging Face model directory, e.g. a checkpoint of `aigc train`")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise AigcError(f"{key} {path} is damaged: {problem}", "use an earlier checkpoint of that run (or the run directory)")
        refuse_pickled_weights(path)
        return str(path.resolve())
    return hub_id(base, key)


def hub_id(ref: str, key: str) -> str:
    """`ref`, which names nothing on disk, as a hub id: an error when it looks like a path, or when
    HF_HUB_OFFLINE is set (a download attempt would only fail, after a long wait)."""
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref
    if looks_like_path:
        raise AigcError(f"{key} not found: {ref}", "check the path")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise AigcError(f"{key} '{ref}' is a hub id, but HF_HUB_OFFLINE is set so nothing can be downloaded",
                        "pass a local model directory instead (or unset HF_HUB_OFFLINE when online)")
    return ref


def load_weights(backend, checkpoint: Path, device: str, **options):
    """`backend.load`, with the errors of a damaged or foreign directory turned into one line.
    (A checkpoint with checksums.json was verified before; this catches the others.)"""
    try:
        return backend.load(checkpoint, device, **options)
    except AigcError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot load the checkpoint {checkpoint}: {first}", "the directory is damaged or not a model of this backend; "
                        "use another checkpoint") from None
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own SafetensorError for a truncated file
        if type(exc).__name__ != "SafetensorError":
            raise
        raise AigcError(f"cannot load the checkpoint {checkpoint}: {exc}", "the weights file is damaged; use another checkpoint") from None


def read_training_state(checkpoint: Path) -> dict:
    import torch

    path = Path(checkpoint) / TRAINING_STATE
    if not path.is_file():
        raise AigcError(f"{checkpoint} has no {TRAINING_STATE}, so training cannot resume from it", "resume from a checkpoint written by `aigc train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — a truncated or foreign file raises many types
        raise AigcError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        "the checkpoint is damaged; resume from an earlier one or start a new run") from None

"""`aigc runs` and `aigc info`: what is on disk, read from the files alone.

Nothing here imports torch: parameter counts come from the safetensors headers (tensor shapes,
no weights loaded), the rest from the JSON and YAML files every verb writes. So a listing of a
hundred runs, or the description of a checkpoint, takes a fraction of a second. (The exception:
a downloaded checkpoint with only pickled .bin weights, whose shapes torch must read.)
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from aigc_cli.backends import BACKENDS, CHECKPOINT_MARKERS, CheckpointFiles, backend_of_checkpoint
from aigc_cli.runs.checkpoints import adapter_base
from aigc_cli.errors import AigcError

PREPARED_FORMAT_PREFIX = "aigc-prepared-"  # meta.json "format" of `aigc prep` outputs (text and images, any version)


@dataclass
class RunSummary:
    name: str
    path: str
    backend: str
    steps: int  # the last step logged in metrics.jsonl
    max_steps: int | None
    best_val_loss: float | None
    last_checkpoint: str | None
    checkpoint_step: int | None
    status: str  # finished | running | interrupted


# ----------------------------------------------------------------------------- runs
def find_runs(root: str | Path) -> list[RunSummary]:
    """Every run directory under `root` (a directory holding config.yaml plus metrics.jsonl or checkpoints/)."""
    root = Path(root)
    if not root.is_dir():
        raise AigcError(f"no such directory: {root}", "pass the folder that holds your runs (train.out_dir's parent), e.g. aigc runs runs")
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))  # skip half-written staging folders
        here = Path(directory)
        if is_run_dir(here):
            found.append(summarize_run(here, root))
            subdirs.clear()  # its checkpoints/ and samples are part of it, not runs
    return found


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir())


def summarize_run(run_dir: Path, root: Path | None = None) -> RunSummary:
    config = _read_yaml(run_dir / "config.yaml")
    rows = _metrics_rows(run_dir / "metrics.jsonl")
    checkpoint = latest_checkpoint_dir(run_dir)
    record = _read_json(checkpoint / "aigc.json") if checkpoint else {}
    backend = record.get("backend") or (config.get("model") or {}).get("backend", "?")
    max_steps = (config.get("train") or {}).get("max_steps")
    val = [r["val_loss"] for r in rows if isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
    step = record.get("step")
    if run_is_locked(run_dir):
        status = "running"
    elif step is not None and step == max_steps:
        status = "finished"
    else:
        status = "interrupted"
    name = run_dir.relative_to(root).as_posix() if root is not None and run_dir != root else run_dir.name
    return RunSummary(name, str(run_dir), backend, max((r.get("step", 0) for r in rows), default=0), max_steps,
                      min(val) if val else None, str(checkpoint) if checkpoint else None, step, status)


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    # checkpoints.latest_checkpoint, without importing torch with it
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return path if path.is_dir() else None


def run_is_locked(run_dir: Path) -> bool:
    """True when a lock file of the run names a live process (a training still going).

    The lock is `.NAME.lock` beside the run directory (where `aigc train` keeps it, so that it
    survives the directory being replaced) or a `*.lock` inside it. It holds the holder's PID as
    `pid=N` lines, as JSON {"pid": N} or as a bare number; an empty lock, or the PID of a process
    that is gone (a killed run), does not count. A lock taken on another host cannot be checked
    from here and is believed."""
    run_dir = run_dir.resolve()
    for lock in [run_dir.with_name(f".{run_dir.name}.lock"), *sorted(run_dir.glob("*.lock"))]:
        holder = _lock_holder(lock)
        if holder.get("pid") is None:
            continue
        if holder.get("host") and holder["host"] != socket.gethostname():
            return True
        if _process_alive(holder["pid"]):
            return True
    return False


def _lock_holder(lock: Path) -> dict:
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return {}
    if "=" in text:
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    else:
        try:
            fields = json.loads(text) if text else {}
        except json.JSONDecodeError:
            fields = {}
        fields = fields if isinstance(fields, dict) else {"pid": fields}
    try:
        pid = int(fields.get("pid"))
    except (TypeError, ValueError):
        pid = None
    return {"pid": pid, "host": fields.get("host") or fields.get("hostname")}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- info
def describe(path: str | Path) -> dict:
    """What `path` is — a prepared dataset, a run directory or a checkpoint — and its vital numbers."""
    path = Path(path)
    if not path.exists():
        raise AigcError(f"not found: {path}", "pass a checkpoint, a run directory (train.out_dir) or a prepared dataset (data.prepared_dir)")
    if not path.is_dir():
        if path.suffix in EXPORTED_SUFFIXES:
            return describe_exported_file(path)
        raise AigcError(f"{path} is a file", "pass a directory: a checkpoint, a run directory or a prepared dataset")
    if (path / EXPORT_RECORD).is_file():
        return describe_export(path)
    meta = _read_json(path / "meta.json")
    if str(meta.get("format", "")).startswith(PREPARED_FORMAT_PREFIX):
        return describe_prepared(path, meta)
    if is_run_dir(path):
        return describe_run(path)
    if any((path / name).is_file() for name in CHECKPOINT_MARKERS):
        return describe_checkpoint(path)
    raise AigcError(f"{path} is not a checkpoint, run directory or prepared dataset",
                    "pass train.out_dir, a folder under it in checkpoints/, or data.prepared_dir")


def describe_prepared(path: Path, meta: dict) -> dict:
    info = {"kind": "prepared images" if meta.get("kind") == "images" else "prepared text", "path": str(path)}
    if meta.get("kind") == "images":
        info.update({key: meta.get(key) for key in ("size", "channels", "train_images", "val_images", "classes", "skipped")})
    else:
        info["tokenizer"] = _tokenizer_info(path) or {"kind": meta.get("tokenizer"), "vocab_size": meta.get("vocab_size")}
        info.update({key: meta.get(key) for key in ("train_tokens", "val_tokens", "characters", "documents", "dtype")})
    info["split"] = meta.get("split")
    info["inputs"] = [{"path": i.get("path"), "sha256": i.get("sha256")} for i in meta.get("inputs", [])]
    info["config_hash"] = _config_hash(path)
    info["size_bytes"] = _size_on_disk(path)
    return info


def describe_run(path: Path) -> dict:
    summary = summarize_run(path)
    checkpoints = sorted(p.name for p in (path / "checkpoints").glob("step-*") if p.is_dir()) if (path / "checkpoints").is_dir() else []
    exports = sorted(p.name for p in (path / "export").glob("*") if (p / EXPORT_RECORD).is_file()) if (path / "export").is_dir() else []
    info = {"kind": "run", **asdict(summary), "checkpoints": checkpoints, "exports": exports or None,
            "config_hash": _config_hash(path), "size_bytes": _size_on_disk(path)}
    if summary.last_checkpoint:
        info["latest"] = describe_checkpoint(Path(summary.last_checkpoint))
    return info


def describe_checkpoint(path: Path) -> dict:
    backend = backend_of_checkpoint(path)
    record = _read_json(path / "aigc.json")
    info: dict = {"kind": "checkpoint", "path": str(path), "backend": backend, "step": record.get("step")}
    # Where this family's files describe it is declared in its registry entry (a backend this
    # version does not know is read as a plain config.json + safetensors directory).
    files = BACKENDS[backend].files if backend in BACKENDS else CheckpointFiles()
    config = _read_json(path / files.config)
    if files.fields is None:
        info["architecture"] = _model_config_summary(config)
    else:
        info["architecture"] = {shown: config.get(key) for shown, key in files.fields.items()}
    info["parameters"] = count_parameters(path / files.weights)  # for an adapter: its own (trainable) weights
    base = adapter_base(path) if files.base_model else None  # (found again when base and adapter moved together)
    if base and Path(base).is_dir():
        info["base_parameters"] = count_parameters(Path(base))
    info["tokenizer"] = _tokenizer_info(path)
    info["config_hash"] = _config_hash(path)
    info["size_bytes"] = _size_on_disk(path)
    return info


EXPORT_RECORD = "aigc_export.json"  # aigc_cli.export.RECORD: written into every folder `aigc export` writes
EXPORTED_SUFFIXES = (".onnx", ".gguf", ".safetensors")


def describe_export(path: Path) -> dict:
    """A folder `aigc export` wrote: its format and dtype, the checkpoint it came from, the model's
    architecture (its config.json, where the format keeps one) and every file with its size."""
    record = _read_json(path / EXPORT_RECORD)
    info: dict = {"kind": f"{record.get('format', '?')} export", "path": str(path), "format": record.get("format"),
                  "dtype": record.get("dtype"), "source_checkpoint": record.get("checkpoint")}
    config = _read_json(path / "config.json")
    info["architecture"] = _model_config_summary(config) or None
    if record.get("format") == "safetensors":
        info["parameters"] = count_parameters(path)
    info["tokenizer"] = _tokenizer_info(path)
    files = [path / name for name in record.get("files", []) if isinstance(name, str)]
    info["files"] = [{"path": str(f), "bytes": f.stat().st_size if f.is_file() else None} for f in files]
    missing = [f.name for f in files if not f.is_file()]
    info["missing_files"] = missing or None
    info["size_bytes"] = _size_on_disk(path)
    return info


def describe_exported_file(path: Path) -> dict:
    """One exported file (model.onnx, a .gguf, a .safetensors): its size, and what the export
    folder it lies in records about it."""
    info: dict = {"kind": f"{path.suffix[1:]} file", "path": str(path)}
    if path.suffix == ".safetensors":
        info["parameters"] = _count_file_parameters(path)
    if (path.parent / EXPORT_RECORD).is_file():
        record = _read_json(path.parent / EXPORT_RECORD)
        info.update({"format": record.get("format"), "dtype": record.get("dtype"), "source_checkpoint": record.get("checkpoint"),
                     "export": str(path.parent)})
    info["size_bytes"] = path.stat().st_size
    return info


def _count_file_parameters(file: Path, hint: str = "the file is damaged; export it again") -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as weights:
            return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own error types for damaged files
        raise AigcError(f"cannot read {file}: {exc}", hint) from None


def count_parameters(directory: Path) -> int | None:
    """Elements of every tensor in the directory's *.safetensors files, from their headers only
    (or, for a checkpoint with only pickled pytorch_model*.bin / adapter_model.bin weights, from
    torch.load with weights_only and mmap: shapes are read, the tensor data stays on disk)."""

    # A diffusers pipeline directory keeps its components' weights one level down (unet/, vae/, text_encoder/).
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*/*.safetensors"))
    if not files:
        return _count_pickled_parameters(sorted(directory.glob("*.bin")))
    return sum(_count_file_parameters(file, "the checkpoint is damaged; use another one") for file in files)


def _count_pickled_parameters(files: list[Path]) -> int | None:
    files = [f for f in files if f.name.startswith(("pytorch_model", "adapter_model", "model"))]
    if not files:
        return None
    import torch  # only here: a .bin-only checkpoint is the one case that needs it

    total = 0
    for file in files:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)  # never runs pickled code
        except Exception as exc:  # noqa: BLE001 — a damaged zip or a pickle that is not plain tensors
            raise AigcError(f"cannot read {file}: {exc}", "the checkpoint is damaged or not a weights file; use another one") from None
        total += sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    return total


_SIZE_KEYS = ("model_type", "architecture", "cell", "n_layer", "num_hidden_layers", "n_head", "num_attention_heads",
              "num_key_value_heads", "n_embd", "hidden_size", "intermediate_size", "n_positions",
              "max_position_embeddings", "block_size", "vocab_size", "latent_dim", "channels", "image_size", "size",
              "in_channels", "num_classes")


def _model_config_summary(config: dict) -> dict:
    return {key: config[key] for key in _SIZE_KEYS if key in config}


def _tokenizer_info(directory: Path) -> dict | None:
    """Kind and vocabulary size from tokenizer.json (aigc's char and byte-level BPE, or any other)."""
    data = _read_json(directory / "tokenizer.json")
    model = data.get("model")
    if not isinstance(model, dict):
        return None
    vocab = model.get("vocab") or {}
    added = {t.get("content") for t in data.get("added_tokens") or []} - set(vocab if isinstance(vocab, dict) else [])
    pre = data.get("pre_tokenizer") or {}
    if model.get("type") == "BPE" and not model.get("merges") and model.get("byte_fallback"):
        kind = "char"
    elif model.get("type") == "BPE" and pre.get("type") == "ByteLevel":
        kind = "bpe (byte-level)"
    else:
        kind = str(model.get("type", "?")).lower()
    return {"kind": kind, "vocab_size": len(vocab) + len(added)}


def _config_hash(directory: Path) -> str | None:
    """Short SHA-256 of the resolved config.yaml: equal hashes, equal settings."""
    path = directory / "config.yaml"
    from aigc_cli.data.records import sha256_file

    return sha256_file(path)[:12] if path.is_file() else None


def _size_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def _read_json(path: Path) -> dict:
    """A JSON object file aigc wrote; {} when it is not there, a clear error when it is damaged."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise _damaged(path, exc) from None
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object")
    return data


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise _damaged(path, exc) from None
    return data if isinstance(data, dict) else {}


def _damaged(path: Path, reason) -> AigcError:
    first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return AigcError(f"{path} is damaged ({first[:120]})", "restore it, or remove the folder it is in if it is no longer needed")


def _metrics_rows(path: Path) -> list[dict]:
    from aigc_cli.data.records import log_records

    try:
        return [row for _, row in log_records(path)]  # (without a line cut short by a kill)
    except OSError:
        return []


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"

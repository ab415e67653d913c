"""`aigc export`: a checkpoint as files other runtimes load — ONNX (ONNX Runtime, transformers.js),
a standalone safetensors model directory (transformers, vLLM, ...) or GGUF (llama.cpp, Ollama).

Every format is one module with `export(checkpoint_dir, out_dir, dtype) -> list[Path]`, named in
FORMATS and imported only when it is used (nothing here imports torch). This module decides the
rest once for all of them: which checkpoint a run directory stands for, where the files go, that
a folder aigc did not write is never replaced without --force, and that the folder appears whole
or not at all (written into a temporary sibling, then renamed into place).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aigc_cli.errors import AigcError

# format → the module that writes it
FORMATS = {
    "gguf": "aigc_cli.export.gguf",
    "onnx": "aigc_cli.export.onnx",
    "safetensors": "aigc_cli.export.safetensors",
}
DTYPES = ("fp32", "fp16", "bf16")
RECORD = "aigc_export.json"  # written into every export folder: what it is, and that aigc wrote it


@dataclass
class ExportResult:
    format: str
    dtype: str | None
    checkpoint: Path
    out: Path
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": self.format, "dtype": self.dtype, "checkpoint": str(self.checkpoint), "out": str(self.out),
                "files": [{"path": str(p), "bytes": p.stat().st_size} for p in self.files],
                "bytes": sum(p.stat().st_size for p in self.files)}

    def summary_lines(self) -> list[str]:
        from aigc_cli.runs.inspection import human_size

        lines = [f"exported {self.checkpoint} as {self.format}" + (f" ({self.dtype})" if self.dtype else "") + f" to {self.out}"]
        lines += [f"  {p.name}  {human_size(p.stat().st_size)}" for p in self.files]
        return lines


def format_module(name: str):
    """The module writing format `name`; a clear error for an unknown format or one not installed."""
    if name not in FORMATS:
        raise AigcError(f"--format {name} is not an export format", f"use one of: {', '.join(FORMATS)}")
    try:
        return importlib.import_module(FORMATS[name])
    except ModuleNotFoundError as exc:
        if exc.name == FORMATS[name]:
            raise AigcError(f"the {name} exporter is not part of this aigc version", f"use --format {' or '.join(f for f in FORMATS if f != name)}") from None
        missing = (exc.name or "").split(".")[0]
        raise AigcError(f"--format {name} needs the Python package {missing}, which is not installed",
                        "install aigc's export extra: pip install 'aigc[export]'") from None


def export_checkpoint(path: str | Path, format: str, out: str | Path | None = None, dtype: str | None = None,
                      force: bool = False) -> ExportResult:
    """Write `path` (a checkpoint, or a run directory standing for its latest good checkpoint) in
    `format` into `out` (default: <run>/export/<format>/)."""
    from aigc_cli.runs.atomic_files import remove_stale_temporaries
    from aigc_cli.runs.checkpoints import resolve_checkpoint
    from aigc_cli.runs.locks import exclusive_lock

    if format not in FORMATS:
        raise AigcError(f"--format {format} is not an export format", f"use one of: {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise AigcError(f"--dtype {dtype} is not a dtype aigc exports", f"use one of: {', '.join(DTYPES)}")
    checkpoint = resolve_checkpoint(path)
    target = Path(out) if out is not None else default_out(checkpoint, format)
    check_target(target, checkpoint, force)
    module = format_module(format)  # (torch comes with it: the errors above need none)
    with exclusive_lock(target, "export folder"):
        check_target(target, checkpoint, force)  # again: another export may have finished meanwhile
        remove_stale_temporaries(target.parent, (target.name,))  # what a killed export left
        files, chosen = _write(module, format, checkpoint, target, dtype)
    return ExportResult(format, chosen, checkpoint, target, files)


def _write(module, format: str, checkpoint: Path, target: Path, dtype: str | None) -> tuple[list[Path], str | None]:
    from aigc_cli.runs.atomic_files import staging_dir

    with staging_dir(target, replace=True) as tmp:
        written = module.export(checkpoint, tmp, dtype)
        chosen = dtype or getattr(module, "DEFAULT_DTYPE", None)
        files = [target / Path(p).relative_to(tmp) for p in written]
        (tmp / RECORD).write_text(json.dumps({"format": format, "dtype": chosen, "checkpoint": str(checkpoint.resolve()),
                                              "files": [p.relative_to(target).as_posix() for p in files]}, indent=2) + "\n",
                                  encoding="utf-8")
    return files, chosen


def default_out(checkpoint: Path, format: str) -> Path:
    """<run>/export/<format> for a checkpoint of a run (<run>/checkpoints/step-N), else
    <dir>-export/<format> beside a model directory from elsewhere."""
    checkpoint = checkpoint if checkpoint.name not in ("", ".", "..") else checkpoint.resolve()  # paths stay as the user wrote them
    if checkpoint.parent.name == "checkpoints" and checkpoint.name.startswith("step-"):
        return checkpoint.parent.parent / "export" / format
    return checkpoint.with_name(f"{checkpoint.name}-export") / format


def check_target(target: Path, checkpoint: Path, force: bool) -> None:
    """An export replaces only an earlier export (or an empty folder) unless --force; never the
    checkpoint it reads, nor a folder holding it."""
    resolved, source = target.resolve(), checkpoint.resolve()
    if resolved == source or resolved in source.parents:
        raise AigcError(f"--out {target} holds the checkpoint being exported", "choose another --out folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise AigcError(f"--out {target} is a file", "pass a folder (it is created when missing)")
    if (target / RECORD).is_file() or not any(target.iterdir()) or force:
        return
    raise AigcError(f"--out {target} already holds files aigc did not export",
                    "choose another --out folder, or pass --force to replace it")

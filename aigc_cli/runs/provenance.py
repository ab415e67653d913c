"""What every output directory records: the resolved config, software versions, input hashes."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from aigc_cli import __version__
from aigc_cli.runs.atomic_files import write_json_atomic, write_text_atomic
from aigc_cli.config import ExperimentConfig, dump_config

_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "peft", "diffusers")


def software_versions() -> dict[str, str]:
    versions = {"aigc": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_provenance(directory: str | Path, cfg: ExperimentConfig, inputs: list[dict] | None = None, **extra) -> None:
    """config.yaml (the resolved config) and provenance.json in `directory`."""
    directory = Path(directory)
    write_text_atomic(directory / "config.yaml", dump_config(cfg))
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "versions": software_versions(),
        "inputs": inputs or [],
        **extra,
    }
    write_json_atomic(directory / "provenance.json", record)

"""What text and image prep share about their output directory: its meta.json and when to reuse it."""

from __future__ import annotations

import json
from pathlib import Path

from aigc_cli.errors import AigcError


def read_meta(out: str | Path, meta_format: str) -> dict | None:
    """The directory's meta.json when it was written by the prep of this format, else None."""
    try:
        meta = json.loads((Path(out) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == meta_format else None


def reusable_output(out: str | Path, existing_meta: dict | None, fingerprint: str, force: bool) -> bool:
    """True when `out` already holds a result made from the same inputs and settings (the
    fingerprint in its meta.json). Refuses to touch a directory holding anything else unless
    --force was given, so a mistyped path never replaces someone's data."""
    out = Path(out)
    if existing_meta is not None:
        if existing_meta.get("fingerprint") == fingerprint:
            return True
        if not force:
            raise AigcError(f"{out} holds data prepared from other inputs or settings",
                            "pass --force to replace it, or set data.prepared_dir to a new directory")
    elif out.exists() and any(out.iterdir()) and not force:
        raise AigcError(f"{out} exists and is not a prepared-data directory", "set data.prepared_dir to a new directory or pass --force")
    return False

"""The manifest that makes `aigc generate` idempotent: a record of the items already finished.

Each generated item (a completion, an image) has a key: the SHA-256 of everything its content
depends on — the checkpoint's identity (the hash of its checksums), the prompt, the sampling
parameters, the seed and the item's number. When an item is finished its record is appended to
the manifest (a JSONL file) and synced to disk, so a run killed half-way loses at most the item
it was working on; the next run skips every key already there (`--force` ignores them) and, at
the end, rewrites the manifest with exactly the current items, in order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from aigc_cli.runs.atomic_files import naming_the_path, write_text_atomic


def item_key(**fields) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class OutputManifest:
    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        if force:
            write_text_atomic(self.path, "")  # forget earlier work, also for a re-run after a killed --force run
        else:
            self.done = self._read()
        self._handle = None

    def _read(self) -> dict[str, dict]:
        from aigc_cli.data.records import log_records

        done = {}
        for _, record in log_records(self.path):  # (without the torn last line of a killed run)
            if isinstance(record.get("key"), str):
                done[record["key"]] = record
        return done

    def add(self, record: dict) -> None:
        """Record one finished item durably (append + fsync)."""
        self.add_all([record])

    def add_all(self, records: list[dict]) -> None:
        """Record finished items durably with one append and one fsync (items finished together, e.g. a
        batch of predictions: an fsync per item cost as much as scoring them)."""
        if not records:
            return
        try:
            if self._handle is None:
                self._handle = open(self.path, "ab+")
                end = self._handle.seek(0, os.SEEK_END)
                if end and os.pread(self._handle.fileno(), 1, end - 1) != b"\n":
                    self._handle.write(b"\n")  # never glue a record onto a killed run's torn line
            self._handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise naming_the_path(exc, self.path) from exc
        for record in records:
            self.done[record["key"]] = record

    def finish(self, keys: list[str]) -> None:
        """Rewrite the manifest as exactly these items, in this order (dropping repeats and stale ones)."""
        self.close()
        seen = dict.fromkeys(keys)
        write_text_atomic(self.path, "".join(json.dumps(self.done[k], ensure_ascii=False) + "\n" for k in seen))

    def __enter__(self) -> "OutputManifest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

"""Writes that never leave half a file or half a directory behind (temp + fsync + rename).

A file is written to a temporary sibling, flushed to the disk (fsync), then renamed over the
final name, and the directory entry itself is synced: after a crash or a power cut a reader
sees either the old file or the complete new one. Temporaries left by a killed process are
named `.NAME.*.tmp` / `.NAME.*.partial` and are removed by `remove_stale_temporaries` the next
time a process holding the directory's lock starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(directory: str | Path) -> None:
    """Make renames and new entries in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root`, so a renamed directory is complete on disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(directory)


def naming_the_path(exc: OSError, path: str | Path, temporary: str | Path | None = None) -> OSError:
    """`exc` with `path` as its filename when it names none or only our temporary: a failed
    write() names no file, a failed rename names the temporary, and "No space left on device"
    or "Is a directory" is only useful with the path the user gave."""
    if exc.errno is None or (exc.filename is not None and (temporary is None or str(exc.filename) != str(temporary))):
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise naming_the_path(exc, path, tmp) from exc
        raise
    fsync_directory(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staging_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it is synced to disk and becomes `final` in one rename.

    With replace=True an existing `final` is swapped out only after the new one is complete,
    so an interrupted run leaves the old directory intact.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            if not replace:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}.old-{os.getpid()}.partial")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_directory(final.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise naming_the_path(exc, final, tmp) from exc
        raise


def remove_stale_temporaries(directory: str | Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the temporaries a killed aigc process left directly in `directory` — only those of
    the files or folders `names` when given. Call it only while holding the lock that guards
    them, so no live writer owns them."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if not path.name.startswith(".") or (names is not None and not path.name.startswith(tuple(f".{n}." for n in names))):
            continue
        if path.is_dir() and path.name.endswith(".partial"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path)
    return removed

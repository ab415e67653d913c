"""One aigc process per run or output directory: an exclusive lock, released when the process dies.

The lock is `fcntl.flock` on a file `.NAME.lock` next to the directory or file it guards (next
to, not inside: `prep` replaces its whole directory, and a lock inside would go with it). The
holder writes its PID into the file, for the message a second process prints, and deletes the
file when it finishes. The kernel drops a flock when its holder exits, however it exits —
SIGKILL and power loss included — so a lock file that exists but is not locked was left by a
process that died holding it: it is reported and taken over. flock works on local filesystems;
on network filesystems it is only as reliable as the server's locking.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from aigc_cli.errors import EXIT_LOCKED, AigcError, warn


def lock_path(target: str | Path) -> Path:
    target = Path(target).resolve()
    return target.with_name(f".{target.name}.lock")


def _parse_holder(text: str) -> dict:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {"pid": int(fields["pid"]) if fields.get("pid", "").isdigit() else None, "host": fields.get("host"),
            "command": fields.get("command")}


_held: dict[Path, int] = {}  # lock files this process holds → nesting depth


@contextlib.contextmanager
def exclusive_lock(target: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` (a directory or file) for the `with` block; exit code 3 when
    another process holds it. `what` names the target in messages (e.g. "run directory").
    Re-entrant within a process: `finetune` locks before loading the base model, and the
    training loop it calls locks the same run directory again."""
    path = lock_path(target)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    created = _missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, target, what)
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        previous = _parse_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if previous["pid"] and previous["pid"] != os.getpid():
            warn(f"{what} {target} was left locked by process {previous['pid']}, which is no longer running; taking it over")
        command = "aigc " + sys.argv[1] if len(sys.argv) > 1 else "aigc"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()}\nhost={socket.gethostname()}\ncommand={command}\n".encode(), 0)
        _held[path] = 1
        try:
            yield
        except BaseException:
            path.unlink(missing_ok=True)
            _remove_if_empty(created)  # a refused or failed command leaves no empty folders behind
            raise
        finally:
            del _held[path]
            path.unlink(missing_ok=True)  # while still holding it: see _acquire
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # something was written there (or it is gone): leave it and its parents


def _acquire(path: Path, target, what: str) -> int:
    """An open, flocked descriptor of the lock file at `path`. A holder deletes the file before it
    releases the lock, so a process that opened the old file and got the lock after that release
    holds a file no longer at `path`: it must start over with the new one."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            who = f"process {holder['pid']}" if holder["pid"] else "another process"
            if holder["host"] and holder["host"] != socket.gethostname():
                who += f" on {holder['host']}"
            doing = f" (`{holder['command']}`)" if holder["command"] else ""
            raise AigcError(f"{what} {target} is in use by aigc {who}{doing}",
                            f"wait for it to finish, or stop it; the lock is {path}", exit_code=EXIT_LOCKED) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            return fd
        os.close(fd)

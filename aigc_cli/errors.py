"""The one user-facing error type. Engines raise it; only cli.py renders it and exits."""

from __future__ import annotations

import sys

# Exit codes are part of the contract that CI jobs and cron scripts rely on (README: "Exit codes").
EXIT_GATE_FAILED = 1  # `aigc eval` worked but a metric missed its quality gate
EXIT_USAGE = 2  # bad usage, config, input data or checkpoint; an unwritable or full disk
EXIT_LOCKED = 3  # another aigc process holds the run or output directory
EXIT_DIVERGED = 4  # training produced a non-finite loss
EXIT_INTERNAL = 70  # a bug in aigc: rerun with --debug and report the traceback
EXIT_SIGINT = 130  # interrupted by Ctrl-C (128 + SIGINT)
EXIT_SIGTERM = 143  # stopped by SIGTERM (128 + SIGTERM), e.g. a CI time limit


class AigcError(Exception):
    """A problem the user can fix: `message` says what is wrong, `hint` how to fix it."""

    label = "error"  # the word cli.py prints before the message

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} — {self.hint}"
        return " ".join(text.split("\n"))


class Interrupted(AigcError):
    """Work stopped by a signal after saving what it could; exit 130 (SIGINT) or 143 (SIGTERM)."""

    label = "interrupted"


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of cli.py, so SIGTERM unwinds like Ctrl-C: temporary files
    are removed on the way out and finished files stay as they are."""


def warn(text: str) -> None:
    """A problem aigc worked around (a damaged checkpoint skipped, a stale lock taken over):
    always shown on stderr, even with --quiet, since a person may have to act on it."""
    print(f"warning: {text}", file=sys.stderr, flush=True)

"""The one user-facing error type. Engines raise it; only cli.py renders it and exits."""

# Exit codes are part of the contract that CI jobs and cron scripts rely on (README: "Exit codes").
EXIT_OK = 0
EXIT_USAGE = 2  # bad usage, config, input data or checkpoint
EXIT_DIVERGED = 3  # training produced a non-finite loss
EXIT_INTERNAL = 70  # a bug in aigc: rerun with --debug and report the traceback


class AigcError(Exception):
    """A problem the user can fix: `message` says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} — {self.hint}"
        return " ".join(text.split("\n"))

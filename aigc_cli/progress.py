"""Progress for long work: a Rich bar on a terminal, plain periodic lines everywhere else.

Cron and CI logs get one line per `log_every` steps on stderr instead of bar redraws; stdout
stays free for `--json`.
"""

from __future__ import annotations

import sys
import time


class StepProgress:
    def __init__(self, total: int, start: int = 0, description: str = "training", quiet: bool = False, log_every: int = 10):
        self.total, self.start, self.description = total, start, description
        self.quiet, self.log_every = quiet, max(1, log_every)
        self.use_bar = not quiet and sys.stdout.isatty() and sys.stderr.isatty()
        self._bar = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> "StepProgress":
        if self.use_bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, **fields) -> None:
        """`step` steps are done; `fields` (loss, lr, tok/s...) are shown next to the bar."""
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif not self.quiet and (step % self.log_every == 0 or step == self.total):
            elapsed = time.perf_counter() - self._t0
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done else 0.0
            print(f"{self.description} {step}/{self.total}  {info}  elapsed {elapsed:.0f}s eta {eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)

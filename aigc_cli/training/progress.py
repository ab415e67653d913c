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
        self._header: str | None = None
        self._held: list[str] = []

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
        if self._header is not None and not self.quiet:  # stopped before the estimate: say what was planned
            header, self._header = self._header, None
            self._print(header)
            for text in self._held:
                self._print(text)
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, **fields) -> None:
        """`step` steps are done; `fields` (loss, lr, tok/s...) are shown next to the bar."""
        if self._header is not None and not self.quiet:
            self._estimate(step)
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif not self.quiet and self._header is None and (step % self.log_every == 0 or step == self.total):
            elapsed = time.perf_counter() - self._t0
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done else 0.0
            print(f"{self.description} {step}/{self.total}  {info}  elapsed {elapsed:.0f}s eta {eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._header is not None:  # held until the header, with its estimate, is out
            self._held.append(text)
            return
        self._print(text)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    # The first line a person reads says how long the run will take: it is printed once the first
    # steps have been timed (a few seconds), with what was measured.
    def announce(self, header: str, evaluations_left: int) -> None:
        self._header, self._evaluations_left = header, evaluations_left
        self._eval_seconds, self._timed_from = [], None

    def evaluated(self, seconds: float) -> None:
        if self._header is not None:
            self._eval_seconds.append(seconds)
            self._evaluations_left -= 1

    def _estimate(self, step: int) -> None:
        now = time.perf_counter()
        if self._timed_from is None:
            self._timed_from = (step, now)  # the first step includes one-off work (allocation, compilation)
            return
        first_step, since = self._timed_from
        timed, elapsed = step - first_step, now - since
        if step < self.total and (timed < 3 or elapsed < 2.0) and timed < 20:
            return
        per_step = elapsed / max(1, timed)
        per_eval = sum(self._eval_seconds) / len(self._eval_seconds) if self._eval_seconds else 0.0
        remaining = per_step * (self.total - step) + per_eval * max(0, self._evaluations_left)
        total = (now - self._t0) + remaining
        evals = f"; {self._evaluations_left} more evaluations of {per_eval:.1f} s" if self._evaluations_left > 0 and per_eval else ""
        header, self._header = self._header, None
        self._print(f"{header} — estimated {human_duration(total)} in all for {self.total - self.start} steps "
                    f"(measured: {1 / per_step:,.1f} steps/s{evals})")
        for text in self._held:
            self._print(text)
        self._held = []


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def human_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

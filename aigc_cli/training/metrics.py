"""metrics.jsonl: one JSON row per evaluation and per logged step, mirrored to TensorBoard.

Process 0 alone writes (with FSDP no single process holds the whole model to sample from, and
one log is one run's); on the other processes a MetricsLog holds nothing and writes nothing.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aigc_cli.runs.atomic_files import naming_the_path, write_text_atomic
from aigc_cli.training.run_logging import RunLogger

if TYPE_CHECKING:
    from aigc_cli.training.recipe import Run

METRICS = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run: Run):
        self.run, self.path = run, run.run_dir / METRICS
        self._file, self._run_log, self._open = None, None, ExitStack()

    def __enter__(self) -> "MetricsLog":
        run = self.run
        if run.procs.is_main:
            with ExitStack() as opening:  # what opened is closed again if the rest fails
                self._file = opening.enter_context(open(self.path, "a", encoding="utf-8"))
                # Closed also after an interruption: loss.png and the events show what was done.
                self._run_log = opening.enter_context(RunLogger(run.cfg, run.run_dir, run.job.backend_name, run.job.backend,
                                                                run.job.tokenizer_dir, run.device, run.start_step))
                self._open = opening.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._open.__exit__(*exc)

    def record(self, row: dict) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as exc:
            raise naming_the_path(exc, self.path) from exc
        self._run_log.scalars(row)

    def evaluated(self, step: int, model: torch.nn.Module | None) -> None:
        """After each validation row: samples from `model` (None: none this time) and a fresh loss.png."""
        if self._run_log is not None:
            self._run_log.evaluated(step, model)


def truncate_metrics(path: Path, keep_through_step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the log reads as one run."""
    if not path.is_file():
        return
    from aigc_cli.data.records import log_records

    rows = list(log_records(path))  # without the half-written last line of a killed run (or of a full disk)
    kept = [line for line, row in rows if row.get("step", 0) < keep_through_step or
            (row.get("step") == keep_through_step and "train_loss" in row)]
    write_text_atomic(path, "".join(line + "\n" for line in kept))

"""Scalars a loss measures beside its value (DPO's rewards), logged with the loss.

A backend's loss keeps its signature `loss(model, batch, part) -> tensor`; what else it measures
it passes to `report`. The loop `collect`s around a training step and around a validation
estimate, and the means land in that step's metrics.jsonl row and TensorBoard; anywhere else
(`aigc eval`, a test calling the loss) `report` keeps nothing. The values stay tensors on the
device until a log row reads them, so reporting adds no host sync to a step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

from aigc_cli.training.distributed import Processes, mean_over_processes

_collecting: list[dict[str, list[torch.Tensor]]] = []  # innermost last; the loop runs in one thread


def report(stats: Mapping[str, torch.Tensor]) -> None:
    """Scalars of one loss call (one micro-batch), kept by the innermost `collect` if there is one."""
    if _collecting:
        for name, value in stats.items():
            _collecting[-1].setdefault(name, []).append(value.detach().float())


@contextmanager
def collect() -> Iterator[dict[str, list[torch.Tensor]]]:
    """What the losses called inside report, name → one value per call."""
    reported: dict[str, list[torch.Tensor]] = {}
    _collecting.append(reported)
    try:
        yield reported
    finally:
        _collecting.pop()


def batch_means(reported: Mapping[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each scalar's mean over the calls (micro-batches, validation batches), still on the device."""
    return {name: torch.stack(values).mean() for name, values in reported.items()}


def process_means(means: Mapping[str, torch.Tensor], procs: Processes, prefix: str = "") -> dict[str, float]:
    """The means over every process, as numbers for a log row. Every process must call it (the same
    loss reports the same names everywhere)."""
    return {prefix + name: float(mean_over_processes(value, procs)) for name, value in sorted(means.items())}

"""The one held-out loss: the backend's training loss averaged over batches it does not learn from.

Training's validation (random batches, every process scoring its own rows), `aigc eval`'s loss
and perplexity (consecutive windows), an image model's held-out loss and the perplexity of
predictions all call `heldout_loss`; they differ only in their batches, in what a batch's loss
counts for (once, once per row, once per scored token) and in the seed of the noise some losses
draw (diffusion timesteps, latents), which is fixed so that every estimate is comparable.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Literal, Protocol

import torch

from aigc_cli.data.batches import to_device

IGNORE_INDEX = -100  # cross_entropy's ignore_index: padding targets, not scored


class ScoresBatches(Protocol):
    """A LoadedModel, or training's ParallelModel (its loss runs under DDP/FSDP)."""

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, part: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class LossSum:
    total: float = 0.0  # Σ weight × batch loss
    weight: int = 0  # Σ weight: batches, rows or scored tokens
    rows: int = 0

    @property
    def mean(self) -> float:
        return self.total / self.weight


_WEIGHTS: dict[str, Callable[[torch.Tensor], int]] = {
    "batch": lambda targets: 1,
    "row": lambda targets: targets.size(0),
    "token": lambda targets: int((targets != IGNORE_INDEX).sum()),
}


@torch.no_grad()
def heldout_loss(model: ScoresBatches, part: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str,
                 per: Literal["batch", "row", "token"] = "batch", seed: int | None = None,
                 autocast: Callable[[], ContextManager] = nullcontext, across_processes: bool = False,
                 so_far: LossSum = LossSum()) -> LossSum:
    """The loss of `part` summed over `batches`, each batch's loss counted `per` batch, row or
    scored token, continuing `so_far`. With `seed`, the noise a loss draws comes from that seed
    and the caller's RNG stream is left exactly where it was. `across_processes`: each process
    scored its own rows of every batch, and the sums are added over the process group."""
    total, weight, rows = so_far.total, so_far.weight, so_far.rows
    forked = torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []) if seed is not None else nullcontext()
    with forked:
        if seed is not None:
            torch.manual_seed(seed)
        for inputs, targets in batches:
            with autocast():
                loss = model.loss(to_device(inputs, device), targets.to(device), part)
            counts = _WEIGHTS[per](targets)
            total += loss.item() * counts
            weight += counts
            rows += targets.size(0)
    if across_processes:
        import torch.distributed as dist

        sums = torch.tensor([total, weight], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, weight = sums[0].item(), int(sums[1].item())  # (a sum of integers: exact in float64)
    return LossSum(total, weight, rows)

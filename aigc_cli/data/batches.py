"""Training batches: random windows of the memory-mapped token arrays written by `aigc prep`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aigc_cli.errors import AigcError


class TokenArray:
    """One prepared split (train.bin or val.bin) opened as a read-only memory map."""

    def __init__(self, data_dir: str | Path, split: str):
        data_dir = Path(data_dir)
        meta_path = data_dir / "meta.json"
        if not meta_path.is_file():
            raise AigcError(f"no prepared data in {data_dir}", "run `aigc prep CONFIG` first (it writes data.prepared_dir)")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.tokens = np.memmap(data_dir / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")
        except (OSError, ValueError, KeyError, TypeError) as exc:  # ValueError: bad JSON, an empty .bin
            raise AigcError(f"the prepared data in {data_dir} is damaged (meta.json or {split}.bin: {exc})",
                            "run `aigc prep CONFIG --force` to prepare it again") from None
        self.split = split

    def __len__(self) -> int:
        return len(self.tokens)

    def check_fits(self, block_size: int) -> None:
        if len(self.tokens) < block_size + 1:
            raise AigcError(f"the {self.split} split has {len(self.tokens)} tokens, fewer than block_size+1={block_size + 1}",
                            "add more text, raise data.val_fraction, or lower model.block_size")

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator,
                     shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each int64 rows × block_size; targets are inputs shifted by one.

        `shard=(rank, world_size)`: every process draws the same batch_size starts from the same
        generator and reads only its own contiguous rows of them, so N processes together see
        exactly the batch one process would.
        """
        starts = torch.randint(len(self.tokens) - block_size, (batch_size,), generator=generator).numpy()
        starts = own_rows(starts, shard)
        # One fancy-indexing read of the memory map: no Python loop over rows or tokens.
        windows = torch.from_numpy(self.tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def sequential_batches(self, batch_size: int, block_size: int, max_batches: int | None = None):
        """Non-overlapping windows covering the split in order: a deterministic score for `aigc eval`."""
        n_windows = (len(self.tokens) - 1) // block_size
        emitted = 0
        for first in range(0, n_windows, batch_size):
            if max_batches is not None and emitted >= max_batches:
                return
            idx = range(first, min(first + batch_size, n_windows))
            windows = np.stack([self.tokens[i * block_size:i * block_size + block_size + 1] for i in idx]).astype(np.int64)
            windows = torch.from_numpy(windows)
            emitted += 1
            yield windows[:, :-1], windows[:, 1:]


def to_device(inputs, device: str):
    """A batch's inputs on `device`: a tensor, or a tuple of them (token ids with position ids)."""
    if isinstance(inputs, tuple):
        return tuple(t.to(device, non_blocking=True) for t in inputs)
    return inputs.to(device, non_blocking=True)


def own_rows(rows, shard: tuple[int, int]):
    """This process's contiguous slice of a batch drawn identically by every process."""
    rank, world_size = shard
    if len(rows) % world_size:
        raise AigcError(f"a batch of {len(rows)} cannot be split evenly over {world_size} processes",
                        f"set train.batch_size to a multiple of {world_size}")
    per_rank = len(rows) // world_size
    return rows[rank * per_rank:(rank + 1) * per_rank]

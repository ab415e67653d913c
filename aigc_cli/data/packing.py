"""Labelled token rows as the training loop draws them: truncated, optionally packed, padded.

An example is (ids, labels) of one sequence, labels IGNORE_INDEX where no loss is taken. Batches
are shifted for next-token prediction (inputs = ids[:-1], targets = labels[1:]) per example, so
no target ever crosses from one example into the next.

Packing puts whole examples side by side in rows of up to max_length inputs (best fit,
longest first). A packed batch's inputs are (ids, position_ids): every example's positions start
again at 0, which is how transformers (masking_utils.find_packed_sequence_indices) tells the
examples of a row apart when no attention mask is given, and keeps each from attending to the
others; the logits of a packed row are those of its examples run alone (tests/data/test_packing.py).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index

Example = tuple[list[int], list[int]]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of the examples in each row: best fit, longest first (deterministic: ties by index)."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free places, row), sorted: the tightest fit is the first that is wide enough
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(room, (lengths[i], -1))
        if k == len(room):
            rows.append([i])
            bisect.insort(room, (capacity - lengths[i], len(rows) - 1))
        else:
            free, row = room.pop(k)
            rows[row].append(i)
            bisect.insort(room, (free - lengths[i], row))
    return rows


class ExampleRows:
    """Examples cut to max_length + 1 tokens from the end (one extra: inputs and targets are the row
    shifted by one), those left without a labelled target dropped; `truncated` and `dropped`
    count them."""

    def __init__(self, examples: list[Example], pad_id: int, max_length: int, packing: bool = False):
        self.pad_id, self.packing = pad_id, packing
        self.truncated = sum(len(ids) > max_length + 1 for ids, _ in examples)
        cut = [(ids[:max_length + 1], labels[:max_length + 1]) for ids, labels in examples]
        self.rows = [row for row in cut if any(t != IGNORE_INDEX for t in row[1][1:])]
        self.dropped = len(cut) - len(self.rows)
        self.packs = pack_rows([len(ids) - 1 for ids, _ in self.rows], max_length) if packing else None

    def __len__(self) -> int:
        return len(self.packs) if self.packing else len(self.rows)

    def batch(self, indices):
        """(inputs, targets) right-padded; inputs are (ids, position_ids) when packed."""
        import torch

        if not self.packing:
            rows = [self.rows[i] for i in indices]
            ids, labels = padded([r[0] for r in rows], self.pad_id), padded([r[1] for r in rows], IGNORE_INDEX)
            # Right padding needs no attention mask in a causal model: real tokens never see the pads.
            return ids[:, :-1], labels[:, 1:]
        packs = [[self.rows[i] for i in self.packs[p]] for p in indices]
        ids = [[t for row_ids, _ in pack for t in row_ids[:-1]] for pack in packs]
        targets = [[t for _, row_labels in pack for t in row_labels[1:]] for pack in packs]
        positions = [[p for row_ids, _ in pack for p in range(len(row_ids) - 1)] for pack in packs]
        width = max(map(len, ids))
        # Padding is an example of its own (positions from 0 again): nothing real attends to it.
        positions = [row + list(range(width - len(row))) for row in positions]
        return (padded(ids, self.pad_id), torch.tensor(positions)), padded(targets, IGNORE_INDEX)

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        import torch

        from aigc_cli.data.batches import own_rows

        return self.batch(own_rows(torch.randint(len(self), (batch_size,), generator=generator).tolist(), shard))


def padded(rows: list[list[int]], pad: int, width: int | None = None) -> torch.Tensor:
    """int64 [len(rows), width] of the rows, right-padded with `pad`."""
    import torch

    width = width or max(map(len, rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out

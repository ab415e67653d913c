"""The one held-out loss against direct computations, for each way a caller counts a batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from aigc_cli.inference.heldout import IGNORE_INDEX, LossSum, heldout_loss


def padded_batches(vocab: int, lengths: list[list[int]], width: int = 12):
    """(inputs, targets) batches whose rows have `length` real targets each, the rest ignored."""
    generator = torch.Generator().manual_seed(0)
    for batch in lengths:
        inputs = torch.randint(vocab, (len(batch), width), generator=generator)
        targets = torch.randint(vocab, (len(batch), width), generator=generator)
        for row, length in enumerate(batch):
            targets[row, length:] = IGNORE_INDEX
        yield inputs, targets


def test_per_token_is_the_mean_over_every_scored_token(gpt2):
    batches = list(padded_batches(gpt2.model.config.vocab_size, [[12, 3, 7], [1, 12], [5]]))
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            logits = gpt2.model(input_ids=inputs).logits
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    scored = heldout_loss(gpt2, gpt2.validation_part, batches, "cpu", per="token")
    assert scored.weight == count == 12 + 3 + 7 + 1 + 12 + 5 and scored.rows == 6
    assert scored.mean == pytest.approx(total / count, rel=1e-5)
    # Continuing a sum batch by batch (prediction perplexity, chunk by chunk) gives the same number exactly.
    running = LossSum()
    for batch in batches:
        running = heldout_loss(gpt2, gpt2.validation_part, [batch], "cpu", per="token", so_far=running)
    assert running == scored


class RecordedLoss:
    """A model whose loss is given per batch, and draws from the global RNG like a diffusion loss."""

    def __init__(self, losses: list[float]):
        self.losses, self.calls, self.draws = iter(losses), [], []

    def loss(self, inputs, targets, part):
        self.calls.append((inputs.shape, part))
        self.draws.append(torch.rand(()).item())
        return torch.tensor(next(self.losses))


def test_per_batch_and_per_row_weights():
    batches = [(torch.zeros(4, 2), torch.zeros(4)), (torch.zeros(2, 2), torch.zeros(2))]  # an uneven last batch
    assert heldout_loss(RecordedLoss([1.0, 4.0]), "unet", batches, "cpu", per="batch").mean == 2.5
    by_row = heldout_loss(RecordedLoss([1.0, 4.0]), "unet", batches, "cpu", per="row")
    assert by_row.mean == pytest.approx((4 * 1.0 + 2 * 4.0) / 6) and by_row.rows == 6


def test_a_seed_fixes_the_noise_and_leaves_the_callers_rng_alone():
    batches = [(torch.zeros(1), torch.zeros(1))] * 3
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = RecordedLoss([1.0] * 3), RecordedLoss([1.0] * 3)
    heldout_loss(first, "model", batches, "cpu", seed=7)
    heldout_loss(second, "model", batches, "cpu", seed=7)
    assert first.draws == second.draws
    assert torch.equal(torch.get_rng_state(), before)


def test_the_loss_runs_under_the_given_autocast():
    entered = []

    @contextlib.contextmanager
    def autocast():
        entered.append(True)
        yield

    heldout_loss(RecordedLoss([1.0, 2.0]), "model", [(torch.zeros(1), torch.zeros(1))] * 2, "cpu", autocast=autocast)
    assert len(entered) == 2


def test_training_validation_is_the_mean_over_its_random_batches(gpt2):
    # training.estimate_loss draws batches from a generator seeded with `seed` and averages them.
    from aigc_cli.backends import get_backend
    from aigc_cli.training.distributed import ParallelModel, Processes
    from aigc_cli.training.recipe import estimate_loss

    class Tokens:
        def random_batch(self, batch_size, block_size, generator, shard=(0, 1)):
            windows = torch.randint(gpt2.model.config.vocab_size, (batch_size, block_size + 1), generator=generator)
            return windows[:, :-1], windows[:, 1:]

    parallel = ParallelModel(get_backend("gpt"), gpt2.model, Processes(), "cpu", parts=("model",))
    got = estimate_loss(parallel, "model", Tokens(), 3, 8, 4, seed=11, device="cpu", autocast=contextlib.nullcontext)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        direct = [gpt2.loss(*Tokens().random_batch(3, 8, generator), "model").item() for _ in range(4)]
    assert got == pytest.approx(sum(direct) / 4, rel=1e-6)
    gpt2.model.eval()  # estimate_loss puts the model back in training mode

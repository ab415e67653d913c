"""aigc_cli/training/recipe.py: setup → train_step → save_checkpoint, driven by hand, is the CLI's run."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from aigc_cli.config import load_config
from aigc_cli.errors import EXIT_DIVERGED, AigcError
from aigc_cli.training.loop import prepared_data_job
from aigc_cli.training.optimizer import lr_at, set_learning_rate
from aigc_cli.training.recipe import next_batches, save_checkpoint, setup, train_step, validation_loss
from tests.conftest import json_out, tiny_config

TRAIN = {"max_steps": 6, "eval_every": 3, "save_every": 0, "log_every": 1, "grad_accum_steps": 2}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recipe_by_hand_gives_the_cli_runs_weights(cli, tmp_path, corpus):
    reference = tiny_config(tmp_path / "cli", corpus, train=TRAIN, model={"dropout": 0.1})
    json_out(cli("prep", reference, "--json"))
    straight = json_out(cli("train", reference, "--json"))

    cfg = load_config(reference, [f"train.out_dir={tmp_path / 'by-hand'}"])
    run = setup(cfg, prepared_data_job(cfg), quiet=True)
    assert (run.step, run.checkpoint, run.validation_part, run.val_loss_name, run.unit) == (0, None, "model", "loss", "tokens")
    losses = []
    for step in range(cfg.train.max_steps):
        set_learning_rate(run.optimizers, lr_at(step, cfg.train))
        result = train_step(run, next_batches(run))
        losses.append(float(result.loss) / cfg.train.grad_accum_steps)
        assert not result.skipped and result.samples == 2 * 4 * 16  # micro-batches × rows × block_size
    assert run.step == 6
    # The evaluations the CLI made in between drew from forked RNG streams: the weights still agree.
    assert validation_loss(run) == pytest.approx(straight["val_loss"], abs=0)
    path = save_checkpoint(run, run.step)
    assert (path.name, run.checkpoint, run.last_saved) == ("step-000006", path, 6)

    cli_checkpoint = tmp_path / "cli" / "run" / "checkpoints" / "step-000006"
    assert _sha(path / "model.safetensors") == _sha(cli_checkpoint / "model.safetensors")
    rows = [json.loads(line) for line in (tmp_path / "cli" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses == [row["train_loss"] for row in rows if "train_loss" in row]


def test_a_resumed_setup_continues_where_the_checkpoint_left_off(cli, tmp_path, corpus):
    cfg_path = tiny_config(tmp_path, corpus, train={**TRAIN, "save_every": 3})
    json_out(cli("prep", cfg_path, "--json"))
    json_out(cli("train", cfg_path, "train.max_steps=3", "--json"))
    cfg = load_config(cfg_path)
    run = setup(cfg, prepared_data_job(cfg), resume=True, quiet=True)
    assert (run.start_step, run.step, run.last_saved, run.checkpoint.name) == (3, 3, 3, "step-000003")


def test_a_non_finite_loss_stops_the_step_or_is_skipped(cli, tmp_path, corpus, monkeypatch):
    cfg_path = tiny_config(tmp_path, corpus, train=TRAIN)
    json_out(cli("prep", cfg_path, "--json"))
    cfg = load_config(cfg_path)
    run = setup(cfg, prepared_data_job(cfg), quiet=True)
    monkeypatch.setattr(run.parallel, "loss", lambda inputs, targets, part: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(AigcError, match="training diverged: non-finite loss .* at step 1; no checkpoint was written") as caught:
        train_step(run, next_batches(run))
    assert caught.value.exit_code == EXIT_DIVERGED and run.step == 0

    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    run.cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"skip_nonfinite": True})})
    result = train_step(run, next_batches(run))
    assert result.skipped and (run.skipped, run.step) == (1, 1)
    assert all(torch.equal(before[name], p) for name, p in run.model.named_parameters())

"""aigc_cli/training/optimizer.py: nanoGPT's warm-up + cosine schedule, and AdamW's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from aigc_cli.config import TrainConfig
from aigc_cli.training.optimizer import lr_at, make_optimizer, set_learning_rate

TC = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)


def test_warm_up_is_linear_and_never_zero():
    assert lr_at(0, TC) == pytest.approx(1e-3 / 11)
    assert lr_at(9, TC) == pytest.approx(1e-3 * 10 / 11)
    assert all(lr_at(s, TC) < lr_at(s + 1, TC) for s in range(9))


def test_cosine_decay_from_learning_rate_to_min_lr():
    assert lr_at(10, TC) == pytest.approx(1e-3)
    assert lr_at(55, TC) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 9e-4)
    assert lr_at(100, TC) == lr_at(1000, TC) == 1e-4
    assert all(lr_at(s, TC) >= lr_at(s + 1, TC) for s in range(10, 120))


def test_lr_decay_steps_ends_the_decay_early():
    tc = TC.model_copy(update={"lr_decay_steps": 50})
    assert lr_at(49, tc) > 1e-4 and lr_at(50, tc) == lr_at(99, tc) == 1e-4


def test_weight_decay_on_matrices_only_and_lr_scale_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.lr_scale = 16.0  # LoRA+'s mark: this matrix learns 16× faster
    opt = make_optimizer(model.parameters(), TrainConfig(weight_decay=0.1), "cpu")
    groups = {(g["lr_scale"], g["weight_decay"]): {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups[(1.0, 0.1)] == {id(model[0].weight)}
    assert groups[(1.0, 0.0)] == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert groups[(16.0, 0.1)] == {id(model[2].weight)} and groups[(16.0, 0.0)] == set()
    assert opt.defaults["fused"] and not make_optimizer(model.parameters(), TC, "cpu", sharded=True).defaults["fused"]

    assert set_learning_rate({"model": opt}, 2e-3) == 2e-3
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([2e-3, 2e-3, 32e-3, 32e-3])

"""AdamW for one part of a model, and the learning rate at each step (nanoGPT's schedule)."""

from __future__ import annotations

import math

import torch

from aigc_cli.config import TrainConfig


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to learning_rate, then cosine decay to min_lr at lr_decay_steps (nanoGPT's)."""
    decay_steps = tc.lr_decay_steps or tc.max_steps
    if step < tc.warmup_steps:
        return tc.learning_rate * (step + 1) / (tc.warmup_steps + 1)
    if step >= decay_steps:
        return tc.min_lr
    progress = (step - tc.warmup_steps) / max(1, decay_steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.learning_rate - tc.min_lr)


def make_optimizer(params, tc: TrainConfig, device: str, sharded: bool = False) -> torch.optim.AdamW:
    # Matrices get weight decay; biases, norms and other vectors do not (GPT-2 / nanoGPT practice).
    # A parameter may carry `lr_scale` (LoRA+'s B matrices): its group's rate is the schedule's × that.
    params = list(params)
    groups = []
    for scale in sorted({getattr(p, "lr_scale", 1.0) for p in params}):
        scaled = [p for p in params if getattr(p, "lr_scale", 1.0) == scale]
        groups += [{"params": [p for p in scaled if p.dim() >= 2], "weight_decay": tc.weight_decay, "lr_scale": scale},
                   {"params": [p for p in scaled if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    # One fused kernel per step on CUDA and CPU alike (on CPU much faster than the default per-tensor
    # loop); FSDP's sharded DTensor parameters take the multi-tensor (foreach) path instead.
    kind = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), **kind)


def set_learning_rate(optimizers: dict[str, torch.optim.Optimizer], lr: float) -> float:
    """Every group of every optimizer at `lr` × its group's lr_scale; returns `lr`."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr

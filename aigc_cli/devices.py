"""The one place a device is chosen: training, inference and evaluation alike.

`auto` is CUDA when a GPU is visible, then Apple's `mps`, then the CPU; an explicit `cuda` (or
`mps`) that is not there is an error everywhere, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import torch

from aigc_cli.errors import AigcError


def pick_device(requested: str = "auto", key: str = "train.device") -> str:
    available = {"cuda": torch.cuda.is_available(), "mps": _mps_available(), "cpu": True}
    if requested == "auto":
        return next(name for name in ("cuda", "mps", "cpu") if available[name])
    if requested not in available:
        raise AigcError(f"{key}={requested} is not a device aigc knows", "use auto, cuda, mps or cpu")
    if not available[requested]:
        what = "CUDA GPU" if requested == "cuda" else "Apple mps device"
        raise AigcError(f"{key}={requested} but no {what} is visible", f"use {key}=auto or cpu")
    return requested


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())

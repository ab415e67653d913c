"""The autocast dtype a run trains in: bf16 where it is native and pays, else plain fp32."""

from __future__ import annotations

import torch

from aigc_cli.backends import BackendSpec

from aigc_cli.errors import AigcError


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls at several times the fp32 rate (measured here: ≈820 against
    ≈195 GFLOP/s). Without them oneDNN emulates bf16, slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def pick_precision(requested: str, device: str, backend_spec: BackendSpec | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. fp16 is never chosen: on CPU it is ~100× slower.
    auto: bf16 on CUDA GPUs that have it, and on CPUs with native bf16 for backends measured to
    gain there at the same loss (spec `cpu_bf16=True`; the figures are in the README, Training)."""
    if requested == "fp32":
        return None
    supported = torch.cuda.is_bf16_supported() if device == "cuda" else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if requested == "bf16":
        if not supported:
            raise AigcError(f"train.precision=bf16 but this {device} has no native bfloat16 support", "use train.precision=fp32 (or auto)")
        return torch.bfloat16
    if device == "cuda":
        return torch.bfloat16 if supported else None
    return torch.bfloat16 if backend_spec is not None and backend_spec.cpu_bf16 and cpu_has_native_bf16() else None

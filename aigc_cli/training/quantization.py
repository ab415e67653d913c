"""QLoRA's base model: a causal LM loaded quantized by bitsandbytes (finetune.quantization), frozen.

4bit is the QLoRA paper's recipe: NF4 weights with double-quantized scales, each matmul
dequantizing to the compute dtype. 8bit is LLM.int8: int8 weights, outlier features in fp16.
bitsandbytes runs both on CUDA and on CPU (its CPU backend since 0.48). Only the base is
quantized: the LoRA adapters train in fp32 and are saved as a plain peft adapter, which loads on
the unquantized base as well.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from aigc_cli.errors import AigcError

# On a CPU with AVX512-BF16, importing bitsandbytes logs that an optional kernel package is not
# installed (it then uses its own kernels); LLM.int8 logs on every call that it quantizes its
# inputs from fp16, which is how it works.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def compute_dtype(tc, device: str) -> torch.dtype:
    """The dtype 4-bit matmuls dequantize to: the one training autocasts to (train.precision:
    bf16 where the GPU or CPU has it natively), else fp32."""
    from aigc_cli.backends import spec
    from aigc_cli.training.precision import pick_precision

    return pick_precision(tc.precision, device, spec("lora")) or torch.float32


def check_quantized_run(tc, device: str) -> None:
    """Refuse what a quantized base cannot do, before it loads."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and tc.strategy == "fsdp":
        raise AigcError("finetune.quantization cannot be combined with train.strategy=fsdp: aigc does not shard bitsandbytes' quantized weights",
                        "use train.strategy=ddp (every process holds the quantized base), or finetune.quantization=none")


def bitsandbytes_config(quantization: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {quantization!r}")


def load_quantized(ref: str, trust_remote_code: bool, config: Any, quantization: str, device: str,
                   compute_dtype: torch.dtype) -> torch.nn.Module:
    """The base at `ref` quantized on `device`, frozen and prepared for training adapters on it
    (peft's prepare_model_for_kbit_training). Quantization happens tensor by tensor while loading,
    so the full-precision weights are never all in memory."""
    import importlib.util

    from peft import prepare_model_for_kbit_training

    from aigc_cli.backends.gpt import load_pretrained

    if importlib.util.find_spec("bitsandbytes") is None:
        raise AigcError(f"finetune.quantization={quantization} needs the bitsandbytes package, which is not installed",
                        "pip install 'aigc[qlora]' (or bitsandbytes), or set finetune.quantization=none")

    # Under torchrun every process loads onto its own GPU (the process group is not joined yet).
    place = int(os.environ.get("LOCAL_RANK", "0")) if device == "cuda" else device
    try:
        model = load_pretrained(ref, trust_remote_code, config, quantization_config=bitsandbytes_config(quantization, compute_dtype),
                                device_map={"": place})
    except (ImportError, RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot load finetune.base {ref} quantized to {quantization} on {device}: {first}",
                        "set finetune.quantization=none, or train on a device bitsandbytes supports (CUDA or CPU)") from None
    keep_4bit_layout_for_training(model)
    own_unquantized_tensors(model)
    # No activation checkpointing: aigc trains without it everywhere, and the memory saved here is the weights'.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def own_unquantized_tensors(model: torch.nn.Module) -> None:
    """The tensors bitsandbytes leaves in full precision (embeddings, norms, biases) come out of the
    loader as views into the memory-mapped safetensors file, which keeps the whole file mapped —
    the full-precision weights just quantized included, resident as long as the model lives.
    Copies of those few tensors let the mapping go."""
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if type(tensor).__name__ not in ("Params4bit", "Int8Params"):
                tensor.data = tensor.data.clone()


def keep_4bit_layout_for_training(model: torch.nn.Module) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight into a layout for its
    fast inference kernel on the first forward pass in eval mode without gradients (a validation
    loss, a sample). After that, training through the layer fails ("a view of a leaf Variable
    ... in-place operation"), and a layer whose input width is not a multiple of 64 cannot be
    repacked at all. Training evaluates between steps, so the repacking is turned off: every
    forward pass dequantizes the standard layout (the same numbers, only the slower kernel)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, a 4-bit weight counted by its unpacked shape (bitsandbytes
    stores two 4-bit values per byte), so the totals match the unquantized model's."""
    trainable = total = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        n = state.shape.numel() if state is not None else param.numel()
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total

"""The model an export writes: a gpt checkpoint as it is, a LoRA adapter merged into its base,
and the files that travel with it (tokenizer, generation config)."""

from __future__ import annotations

from pathlib import Path

import torch

from aigc_cli.backends import backend_of_checkpoint, get_backend
from aigc_cli.errors import AigcError
from aigc_cli.runs.checkpoints import load_weights

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def standalone_model(checkpoint: Path, dtype: str | None, what: str) -> torch.nn.Module:
    """A plain transformers causal LM in eval mode and in `dtype` (default fp32): the checkpoint's
    model, or for a LoRA adapter the base with the adapter merged in (peft's merge_and_unload)."""
    name = backend_of_checkpoint(checkpoint)
    if name not in ("gpt", "lora"):
        raise AigcError(f"{checkpoint} holds a {name} model; {what} export takes transformers causal LMs",
                        "export a checkpoint of a gpt run (aigc train) or a LoRA run (aigc finetune)")
    backend = get_backend(name)
    model = load_weights(backend, checkpoint, "cpu")
    if name == "lora":
        model = backend.merge(model)
    return model.to(TORCH_DTYPES[dtype or "fp32"]).eval()


def copy_companions(checkpoint: Path, out: Path, model: torch.nn.Module) -> list[Path]:
    """The tokenizer files and generation_config.json beside the exported weights; the paths written."""
    from aigc_cli.data.tokenization import TOKENIZER_FILES, copy_tokenizer_files

    copy_tokenizer_files(checkpoint, out, get_backend("gpt").context_length(model))
    model.generation_config.save_pretrained(out)
    return [out / name for name in (*TOKENIZER_FILES, "generation_config.json") if (out / name).is_file()]

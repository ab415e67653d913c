"""`aigc finetune` on a Stable-Diffusion-style pipeline (finetune.base is a diffusers pipeline
directory): LoRA adapters on the UNet through peft (finetune.method lora), or the whole UNet
(full), on captioned images prepared by `aigc prep` with data.image.captions. A recipe, not a
second loop: the base loads once, the captioned splits tokenize with its CLIP tokenizer, and
`run_training` (loop.py) runs the steps, checkpoints and --resume as for every other backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from aigc_cli.backends import get_backend
from aigc_cli.config import ExperimentConfig, require_data
from aigc_cli.data.images import CaptionedImages
from aigc_cli.errors import AigcError
from aigc_cli.training.loop import TrainingJob, run_training

BACKEND = "text-to-image"


def finetune_pipeline(cfg: ExperimentConfig, resume: bool = False, merge: bool = False, quiet: bool = False):
    from aigc_cli.training.finetune import FinetuneResult

    fc, data = cfg.finetune, require_data(cfg)
    if fc.method not in ("lora", "full"):
        raise AigcError(f"finetune.method {fc.method} is for language models; a text-to-image pipeline takes lora or full",
                        "set finetune.method=lora (adapters on the UNet) or full")
    if fc.quantization != "none" or fc.lora.dora or fc.lora.loraplus_lr_ratio or fc.lora.modules_to_save:
        raise AigcError("finetune.quantization, lora.dora, lora.loraplus_lr_ratio and lora.modules_to_save are not supported on text-to-image pipelines",
                        "leave them at their defaults")
    if merge:
        raise AigcError("--merge is not supported for text-to-image LoRA yet",
                        "load the LoRA onto the base with StableDiffusionPipeline.load_lora_weights (then fuse_lora), or use finetune.method=full")
    backend = get_backend(BACKEND)
    data_dir = Path(data.prepared_dir)
    train = CaptionedImages(data_dir, "train", lambda texts: texts, data.image.caption_dropout, data.image.random_flip)
    torch.manual_seed(cfg.train.seed)  # the adapters' initial weights are drawn here: the same run, the same start
    base_model = backend.start(fc.base, fc.method, fc.lora, train.meta)
    tokenize = lambda texts: backend.tokenize(base_model, texts)  # noqa: E731
    train.tokenize = tokenize
    val = CaptionedImages(data_dir, "val", tokenize)
    if not quiet:
        print(f"fine-tuning the pipeline {fc.base} ({fc.method}) on {len(train):,} captioned images, {len(val):,} for validation",
              file=sys.stderr, flush=True)

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        return backend.load(previous, device, trainable=True) if previous is not None else base_model.to(device)

    job = TrainingJob(BACKEND, backend, make_model, train, val, 0, None, train.meta["inputs"],
                      provenance={"base_model": str(Path(fc.base).resolve()), "method": fc.method, "format": "captioned-images"},
                      verb="finetune")
    result = run_training(cfg, job, resume=resume, quiet=quiet)
    final = backend.load(result.checkpoint, "cpu", trainable=True)
    trainable = sum(p.numel() for p in backend.parameters(final, "unet"))
    total = sum(p.numel() for p in final.parameters())
    return FinetuneResult(result.run_dir, result.checkpoint, result.val_loss, trainable, total, 0, None, fc.method,
                          result.stats, "none", 0, "captioned-images")

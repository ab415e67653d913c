"""`aigc finetune` on a Stable-Diffusion-style pipeline (finetune.base is a diffusers pipeline
directory): LoRA adapters on the UNet through peft (finetune.method lora), or the whole UNet
(full), on captioned images prepared by `aigc prep` with data.image.captions — or, DreamBooth
(finetune.text_to_image.dreambooth), on a folder of instance images with one instance prompt and
optional class images for prior preservation (data/dreambooth.py). A recipe, not a
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

    fc = cfg.finetune
    if fc.method not in ("lora", "full"):
        raise AigcError(f"finetune.method {fc.method} is for language models; a text-to-image pipeline takes lora or full",
                        "set finetune.method=lora (adapters on the UNet) or full")
    if fc.quantization != "none" or fc.lora.dora or fc.lora.loraplus_lr_ratio or fc.lora.modules_to_save:
        raise AigcError("finetune.quantization, lora.dora, lora.loraplus_lr_ratio and lora.modules_to_save are not supported on text-to-image pipelines",
                        "leave them at their defaults")
    if merge and fc.method != "lora":
        raise AigcError("--merge fuses LoRA weights into the pipeline; a full fine-tune's checkpoint is already a whole pipeline",
                        "drop --merge (the checkpoint loads with StableDiffusionPipeline.from_pretrained)")
    backend = get_backend(BACKEND)
    dreambooth = fc.text_to_image.dreambooth.instance_prompt is not None
    if dreambooth:
        from aigc_cli.data.dreambooth import DreamBoothImages

        instances, classes = dreambooth_images(cfg, quiet)
        db = fc.text_to_image.dreambooth
        train = val = DreamBoothImages(instances, db.instance_prompt, lambda texts: texts, classes, db.class_prompt)
    else:
        data = require_data(cfg)
        data_dir = Path(data.prepared_dir)
        train = CaptionedImages(data_dir, "train", lambda texts: texts, data.image.caption_dropout, data.image.random_flip)
    torch.manual_seed(cfg.train.seed)  # the adapters' initial weights are drawn here: the same run, the same start
    base_model = backend.start(fc.base, fc.method, fc.lora, train.meta, fc.text_to_image)
    tokenize = lambda texts: backend.tokenize(base_model, texts)  # noqa: E731
    train.tokenize = tokenize
    if dreambooth:
        base_model.record["prior_loss_weight"] = fc.text_to_image.dreambooth.prior_loss_weight
        what = f"{len(train):,} instance images ('{train.instance_prompt}')" + (
            f" with {len(train.classes):,} class images ('{train.class_prompt}'), prior_loss_weight {base_model.record['prior_loss_weight']:g}"
            if train.classes is not None else "") + "; validation on the same images"
    else:
        val = CaptionedImages(data_dir, "val", tokenize)
        what = f"{len(train):,} captioned images, {len(val):,} for validation"
    if not quiet:
        print(f"fine-tuning the pipeline {fc.base} ({fc.method}) on {what}", file=sys.stderr, flush=True)

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        if previous is None:
            return base_model.to(device)
        resumed = backend.load(previous, device, trainable=True)
        _same_settings(resumed.record, base_model.record, previous)
        return resumed

    job = TrainingJob(BACKEND, backend, make_model, train, val, 0, None, train.meta["inputs"],
                      provenance={"base_model": str(Path(fc.base).resolve()), "method": fc.method,
                                "format": "dreambooth" if dreambooth else "captioned-images"},
                      verb="finetune")
    result = run_training(cfg, job, resume=resume, quiet=quiet)
    final = backend.load(result.checkpoint, "cpu", trainable=True)
    trainable = sum(p.numel() for p in backend.parameters(final, "unet"))
    total = sum(p.numel() for p in final.parameters())
    merged = None
    if merge:
        from aigc_cli.runs.atomic_files import staging_dir

        merged = Path(result.run_dir) / "merged"
        with staging_dir(merged, replace=True) as tmp:
            backend.merge_pipeline(result.checkpoint, tmp)
    return FinetuneResult(result.run_dir, result.checkpoint, result.val_loss, trainable, total, 0, merged, fc.method,
                          result.stats, "none", 0, "dreambooth" if dreambooth else "captioned-images")


def _same_settings(resumed: dict, wanted: dict, checkpoint: Path) -> None:
    """--resume continues the run the checkpoint holds: a changed training setting would silently not apply."""
    defaults = {"method": None, "text_encoder": False, "ema_decay": 0.0, "snr_gamma": None, "prior_loss_weight": None}  # (records before these keys)
    value = lambda record, key: record.get(key, defaults[key])  # noqa: E731
    changed = [k for k in defaults if value(resumed, k) != value(wanted, k)]
    if changed:
        was = ", ".join(f"{k} {value(resumed, k)!r} (now {value(wanted, k)!r})" for k in changed)
        raise AigcError(f"--resume: {checkpoint} was trained with {was}",
                        "resume with the run's own settings (its config.yaml), or start a new run in another train.out_dir")


def dreambooth_images(cfg: ExperimentConfig, quiet: bool):
    """(instance images, class images or None) as uint8 arrays at data.image's size and channels (RGB when
    there is no data section); missing class images are generated by the base pipeline first."""
    from aigc_cli.config import ImageDataConfig
    from aigc_cli.data.dreambooth import ensure_class_images, read_image_folder

    db = cfg.finetune.text_to_image.dreambooth
    image = cfg.data.image if cfg.data is not None else ImageDataConfig(channels=3)
    instances = read_image_folder(db.instance_dir, image.size, image.channels, "finetune.text_to_image.dreambooth.instance_dir")
    if db.class_prompt is None:
        return instances, None
    folder = Path(db.class_dir or Path(cfg.train.out_dir) / "class_images")
    log = (lambda _: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    ensure_class_images(folder, db.num_class_images, _class_image_maker(cfg, image.size, image.channels), log)
    return instances, read_image_folder(folder, image.size, image.channels, "finetune.text_to_image.dreambooth.class_dir")


def _class_image_maker(cfg: ExperimentConfig, size: int, channels: int):
    """Class images from the base pipeline as train_dreambooth.py makes them (StableDiffusionPipeline on the
    class prompt), with generate.images' steps and guidance, image i seeded from (train.seed, prompt, i)."""
    pipe = None

    def make(indices: list[int]):
        nonlocal pipe
        import numpy as np
        from diffusers import StableDiffusionPipeline

        from aigc_cli.generation.text_to_image import prompt_image_seed

        if pipe is None:
            pipe = StableDiffusionPipeline.from_pretrained(cfg.finetune.base, safety_checker=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
        prompt, gc = cfg.finetune.text_to_image.dreambooth.class_prompt, cfg.generate.images
        generators = [torch.Generator().manual_seed(prompt_image_seed(cfg.train.seed, prompt, i)) for i in indices]
        with torch.inference_mode():
            images = pipe(prompt, num_images_per_prompt=len(indices), num_inference_steps=gc.num_inference_steps,
                          guidance_scale=gc.guidance_scale, height=size, width=size, generator=generators, output_type="np").images
        pixels = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2)
        return pixels.mean(axis=1, keepdims=True).round().astype(np.uint8) if channels == 1 else pixels

    return make

#!/usr/bin/env python
"""Benchmark: `aigc finetune` (LoRA) on a Stable-Diffusion-style pipeline vs the training loop of
diffusers' examples/text_to_image/train_text_to_image_lora.py, and text-to-image sampling of
`aigc generate` vs `StableDiffusionPipeline` — same pipeline, data, batch, optimizer and precision.

A benchmark, not a test. The pipeline is built here (tests/tiny_text_to_image.py, larger than the
tests' one so that the UNet dominates): UNet2DConditionModel (32, 64) channels, cross-attention at
both levels, 1 layer per block; AutoencoderKL (8, 16) (downsamples 2×); the tiny CLIP text
encoder (2 layers × 32, 16-token context). Data: the built-in captioned digits at 32×32 RGB
("a bold seven, inverted"), 16×16 latents.

Training (LoRA rank 4 on to_q/to_k/to_v/to_out.0, alpha = rank, gaussian init, fp32, batch 8,
AdamW lr 1e-4 constant, betas (0.9, 0.999), weight decay 1e-2: the script's defaults):
  plain  train_text_to_image_lora.py's main() written out, reading it line by line (diffusers
         main, fetched 2026-12): `Accelerator(mixed_precision="no")`, models from the pipeline's
         subfolders, `unet.add_adapter(LoraConfig(...))`, `torch.optim.AdamW(filter(requires_grad))`,
         `load_dataset("imagefolder")` on a folder of PNGs + metadata.jsonl holding exactly aigc's
         prepared training images and captions, `with_transform(preprocess_train)`, the script's
         collate_fn and `DataLoader(shuffle=True, num_workers=0)`, `get_scheduler("constant")`,
         `accelerator.prepare(...)`, then its step loop: vae.encode → latent_dist.sample() ×
         scaling_factor, randn noise, randint timesteps, add_noise, the text encoder, the UNet,
         MSE(float, float), `accelerator.gather(loss.repeat(bs)).mean().item()`, backward,
         `accelerator.clip_grad_norm_(lora_layers, 1.0)`, optimizer/scheduler step, zero_grad, a
         tqdm bar (written to /dev/null). Two things differ from the script, both without effect
         on the arithmetic: torchvision is not installed here, so the transforms (Resize and
         CenterCrop at the images' own size, ToTensor, Normalize([0.5], [0.5])) are written out with
         PIL and numpy; and the script clips `lora_layers`, a `filter` the optimizer already
         consumed, so its clipping clips nothing — aigc runs with train.grad_clip 0 to do the
         same work. Timed: perf_counter around the step loop (data loading included, as in the
         script), after everything is prepared.
  plain (in memory)  the same loop with the batches taken from tensors already in memory instead
         of the DataLoader: the loop's arithmetic alone (an information row).
  aigc   `aigc_cli.training.finetune.finetune_model` itself: throughput from its metrics.jsonl
         window (every optimisation step with the loop's own per-step work; not the step-0
         evaluation, the final checkpoint or the plot), exactly as scripts/bench/ddpm.py does.
Sampling (one prompt, N images, DDIM, 20 steps, guidance 7.5 against the empty prompt, fp32, the
same initial latents, in inference mode): aigc `generation.text_to_image.sample_prompt_batch` (what
`aigc generate` runs per batch: per-image generators and latents, its DDIM loop, VAE decode, uint8)
on the last aigc LoRA checkpoint loaded by `load_model`; peer: `StableDiffusionPipeline` from the
base directory with `load_lora_weights(checkpoint)`, called with `latents=` aigc's noise,
output_type "np". Both are unfused peft LoRA layers on the same weights.

Each measurement: one untimed warm-up of each side, then --repeats rounds rotating who goes
first; medians compared. accelerate, datasets and peft are the script's requirements (installed);
the script's other requirements (torchvision, wandb) are not used.

    python scripts/bench/text_to_image.py                      # 20 steps × 3 rounds, 8 images × 20 steps
    python scripts/bench/text_to_image.py --steps 40 --repeats 5 --json out.json
    python scripts/bench/text_to_image.py --smoke              # one step of each at the tests' tiny size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

sys.path.insert(0, str(harness.REPO))
BENCH_PIPELINE = {"unet_channels": (32, 64), "layers_per_block": 1, "cross_attention_levels": (0, 1), "vae_channels": (8, 16),
                  "norm_num_groups": 32}
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the script's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="optimisation steps per timed training run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (the script's default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample-images", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="the tests' tiny pipeline at 16×16, one step, 2 images × 2 steps")
    p.add_argument("--json", help="write the result rows here")
    args = p.parse_args(argv)
    args.size, args.pipeline = 32, BENCH_PIPELINE
    if args.smoke:
        args.steps, args.repeats, args.batch_size, args.sample_images, args.sample_steps = 1, 1, 4, 2, 2
        args.size, args.pipeline = 16, {}
    return args


# ----------------------------------------------------------------------------- setup
def prepare(args, workdir: Path):
    """(base pipeline dir, config dict, prepared dir, imagefolder dir) for both sides."""
    from aigc_cli.config import validate_config
    from aigc_cli.data.images import CaptionedImages, prepare_images
    from tests.tiny_text_to_image import tiny_text_to_image_pipeline

    base = tiny_text_to_image_pipeline(workdir / "pipeline", **args.pipeline)
    raw = {"data": {"source": "digits", "prepared_dir": str(workdir / "prepared"), "image": {"size": args.size, "channels": 3, "captions": True}},
           "finetune": {"base": str(base), "method": "lora", "lora": {"r": args.rank, "alpha": float(args.rank), "dropout": 0.0}},
           "train": {"out_dir": str(workdir / "unused"), "max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": 1e-4,
                     "min_lr": 1e-4, "warmup_steps": 0, "weight_decay": 1e-2, "beta1": 0.9, "beta2": 0.999, "grad_clip": 0.0,
                     "eval_every": args.steps, "eval_batches": 1, "save_every": 0, "keep_last": 1, "log_every": args.steps,
                     "sample_every_eval": False, "precision": "fp32", "device": "cpu", "seed": 0}}
    cfg = validate_config(raw, source="bench")
    prepare_images(cfg, log=lambda _: None)
    train = CaptionedImages(cfg.data.prepared_dir, "train", lambda texts: texts)
    folder = write_imagefolder(train, workdir / "imagefolder")
    return base, cfg, folder, len(train)


def write_imagefolder(train, folder: Path) -> Path:
    """aigc's prepared training split as diffusers' imagefolder layout: PNGs and metadata.jsonl (file_name, text)."""
    from PIL import Image

    folder.mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i, (pixels, caption) in enumerate(zip(train.images, train.captions)):
            Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB").save(folder / f"{i:05d}.png")
            meta.write(json.dumps({"file_name": f"{i:05d}.png", "text": caption}) + "\n")
    return folder


# ----------------------------------------------------------------------------- the script's loop
def train_plain(args, base: Path, folder: Path, workdir: Path, in_memory: bool = False) -> tuple[float, float]:
    """train_text_to_image_lora.py's main(), as its docstring above says. Returns (steps/s, last loss)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from datasets import load_dataset
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from tqdm.auto import tqdm
    from transformers import CLIPTextModel, CLIPTokenizer

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # run_all runs TRL/Trainer benchmarks first in this process: their state is not this script's
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no", cpu=True)
    set_seed(0)
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    weight_dtype = torch.float32
    unet_lora_config = LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=TARGETS)
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(unet_lora_config)
    lora_layers = filter(lambda p: p.requires_grad, unet.parameters())
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08)

    dataset = load_dataset("imagefolder", data_files={"train": os.path.join(folder, "**")}, cache_dir=str(workdir / "hf-cache"))
    image_column, caption_column = dataset["train"].column_names[:2]

    def tokenize_captions(examples, is_train=True):
        captions = [caption for caption in examples[caption_column]]
        inputs = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt")
        return inputs.input_ids

    def train_transforms(image):  # Resize(res, bilinear), CenterCrop(res), ToTensor(), Normalize([0.5], [0.5]), without torchvision
        from PIL import Image

        if image.size != (args.size, args.size):
            w, h = image.size
            scale = args.size / min(w, h)
            image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            left, top = (image.size[0] - args.size) // 2, (image.size[1] - args.size) // 2
            image = image.crop((left, top, left + args.size, top + args.size))
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()).float().div(255)
        return (tensor - 0.5) / 0.5

    def preprocess_train(examples):
        images = [image.convert("RGB") for image in examples[image_column]]
        examples["pixel_values"] = [train_transforms(image) for image in images]
        examples["input_ids"] = tokenize_captions(examples)
        return examples

    train_dataset = dataset["train"].with_transform(preprocess_train)

    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
        input_ids = torch.stack([example["input_ids"] for example in examples])
        return {"pixel_values": pixel_values, "input_ids": input_ids}

    train_dataloader = torch.utils.data.DataLoader(train_dataset, shuffle=True, collate_fn=collate_fn, batch_size=args.batch_size,
                                                   num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=500, num_training_steps=args.steps)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / 1)
    num_train_epochs = math.ceil(args.steps / num_update_steps_per_epoch)
    if in_memory:  # the information row: the same batches, already collated in memory
        batches = [b for _, b in zip(range(args.steps), (b for _ in range(num_train_epochs) for b in train_dataloader))]
    progress_bar = tqdm(range(0, args.steps), desc="Steps", file=open(os.devnull, "w"))

    global_step = 0
    start = time.perf_counter()
    for epoch in range(0, num_train_epochs):
        unet.train()
        train_loss = 0.0
        for step, batch in enumerate(batches if in_memory else train_dataloader):
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
                timesteps = timesteps.long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                target = noise  # prediction_type epsilon
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(args.batch_size)).mean()
                train_loss += avg_loss.item() / 1
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    params_to_clip = lora_layers
                    accelerator.clip_grad_norm_(params_to_clip, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                train_loss = 0.0
            logs = {"step_loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            progress_bar.set_postfix(**logs)
            if global_step >= args.steps:
                break
        if in_memory:
            break
    elapsed = time.perf_counter() - start
    return global_step / elapsed, loss.detach().item()


# ----------------------------------------------------------------------------- aigc
def train_aigc(cfg, out_dir: Path) -> tuple[float, float, Path]:
    """`finetune_model` itself. Returns (steps/s over the optimisation steps, last train loss, checkpoint)."""
    from aigc_cli.training.finetune import finetune_model

    cfg = cfg.model_copy(deep=True)
    cfg.train.out_dir = str(out_dir)
    result = finetune_model(cfg, quiet=True)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    window = [r for r in rows if "images_per_s" in r]
    if len(window) != 1 or window[0]["step"] != cfg.train.max_steps:
        raise RuntimeError(f"expected one throughput window ending at step {cfg.train.max_steps}: {window}")
    return window[0]["images_per_s"] / cfg.train.batch_size, window[0]["train_loss"], result.checkpoint


# ----------------------------------------------------------------------------- sampling
def sample_aigc(loaded, gc, count: int):
    import torch

    from aigc_cli.generation.text_to_image import sample_prompt_batch

    start = time.perf_counter()
    with torch.inference_mode():
        images = sample_prompt_batch(loaded, PROMPT, range(count), SEED, gc)
    return count / (time.perf_counter() - start), images


def aigc_latents(loaded, count: int):
    """The initial latents aigc draws for images 0..count-1 of PROMPT (what the pipeline is given)."""
    import torch

    from aigc_cli.generation.text_to_image import prompt_image_seed

    shape = tuple(loaded.backend.latent_shape(loaded.model))
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(prompt_image_seed(SEED, PROMPT, k))) for k in range(count)])


def sample_pipeline(pipe, latents, steps: int, size: int):
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        images = pipe(PROMPT, num_images_per_prompt=len(latents), num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                      latents=latents.clone(), output_type="np").images
    return len(latents) / (time.perf_counter() - start), images


PROMPT, SEED = "a bold seven", 1337


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from aigc_cli.config import ImageGenerateConfig
    from aigc_cli.inference.loading import load_model

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="aigc-bench-t2i-") as tmp:
        workdir = Path(tmp)
        base, cfg, folder, n_train = prepare(args, workdir)
        what = (f"UNet {'×'.join(map(str, args.pipeline.get('unet_channels', (4, 8))))}, {args.size}×{args.size} RGB digits → "
                f"{args.size // 2}×{args.size // 2} latents, LoRA r {args.rank}, batch {args.batch_size}, fp32")
        print(f"pipeline: {base} ({what}); {n_train:,} captioned training images; torch threads {torch.get_num_threads()}", flush=True)

        runs, last = iter(range(10_000)), {}

        def aigc_side() -> float:
            rate, last["aigc_loss"], last["checkpoint"] = train_aigc(cfg, workdir / f"run-{next(runs)}")
            return rate

        def plain_side() -> float:
            rate, last["plain_loss"] = train_plain(args, base, folder, workdir)
            return rate

        def memory_side() -> float:
            rate, _ = train_plain(args, base, folder, workdir, in_memory=True)
            return rate

        sides = {"plain": plain_side, "aigc": aigc_side, "plain_in_memory": memory_side}
        if not args.smoke:
            for side in sides.values():  # untimed warm-up
                side()
        train = harness.interleaved(sides, args.repeats, "training steps/s")

        loaded = load_model(last["checkpoint"], "cpu", modality="image")
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(last["checkpoint"])
        pipe.set_progress_bar_config(disable=True)
        gc = ImageGenerateConfig(sampler="ddim", num_inference_steps=args.sample_steps, guidance_scale=7.5, eta=0.0, batch_size=args.sample_images)
        latents = aigc_latents(loaded, args.sample_images)
        out = {}

        def aigc_sampling() -> float:
            rate, out["aigc"] = sample_aigc(loaded, gc, args.sample_images)
            return rate

        def pipeline_sampling() -> float:
            rate, out["pipeline"] = sample_pipeline(pipe, latents, args.sample_steps, args.size)
            return rate

        sampling_sides = {"pipeline": pipeline_sampling, "aigc": aigc_sampling}
        for side in sampling_sides.values():  # untimed warm-up
            side()
        sampling = harness.interleaved(sampling_sides, args.repeats, "sampling images/s")
        theirs = np.round(np.clip(out["pipeline"], 0, 1) * 255).astype(np.int64).transpose(0, 3, 1, 2)
        differ = int(np.abs(out["aigc"].astype(np.int64) - theirs).max())
        print(f"sanity: last losses aigc {last['aigc_loss']:.4f}, plain {last['plain_loss']:.4f} (different batches and noise); "
              f"max |aigc - pipeline| over the sampled images: {differ} uint8 levels", flush=True)

    med = {k: harness.median(v) for k, v in train.items()}
    sampled = {k: harness.median(v) for k, v in sampling.items()}
    spread = lambda values: f"{min(values):.3g}–{max(values):.3g}"  # noqa: E731
    load = f"load average {os.getloadavg()[0]:.2f} at the end"
    rows = [
        harness.row("text_to_image", f"LoRA training steps/s ({what})", "steps/s", med["aigc"],
                    "diffusers train_text_to_image_lora.py loop (accelerate, imagefolder DataLoader)", med["plain"], 1.0,
                    f"median of {args.repeats} interleaved rounds of {args.steps} steps; aigc {spread(train['aigc'])}, script {spread(train['plain'])}; "
                    f"the script's clip_grad_norm_ clips an exhausted filter (nothing), so aigc ran with grad_clip 0; {load}"),
        harness.row("text_to_image", f"LoRA training steps/s, the script's loop on batches already in memory ({what})", "steps/s",
                    med["aigc"], "train_text_to_image_lora.py loop without its DataLoader", med["plain_in_memory"], None,
                    f"information: the loop's arithmetic alone, without the script's per-step PNG decoding and transforms; "
                    f"script in memory {spread(train['plain_in_memory'])}"),
        harness.row("text_to_image", f"sampling images/s ({args.sample_images} images of one prompt, {args.sample_steps} DDIM steps, "
                                     f"guidance 7.5, {what.split(', LoRA')[0]}, LoRA loaded)", "images/s", sampled["aigc"],
                    "diffusers StableDiffusionPipeline + load_lora_weights", sampled["pipeline"], 0.95,
                    f"same initial latents; outputs differ by at most {differ} uint8 levels; aigc {spread(sampling['aigc'])}, "
                    f"pipeline {spread(sampling['pipeline'])}; {load}"),
    ]
    harness.write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`aigc train` with model.backend=latent-diffusion: two jobs in sequence through the one loop.

1. The autoencoder (part "autoencoder") in <train.out_dir>/autoencoder/, its own run directory
   (config.yaml, metrics.jsonl, checkpoints/), for model.autoencoder_steps steps at
   model.autoencoder_learning_rate; skipped when model.autoencoder names a trained one.
2. The UNet with the text encoder (part "unet") in train.out_dir for train.max_steps: it starts
   from phase 1's last checkpoint (its UNet and text encoder still their initial weights), first
   measures the latent scale on the training images (Stable Diffusion's 1 / std), then trains on
   the frozen autoencoder's scaled latents. Its checkpoints are the run's.

`--resume` resumes whichever phase was interrupted: a complete phase 1 (its checkpoint at
autoencoder_steps) is not run again. Each phase is a `run_training` like every other backend's,
so its resume is exact. The tokenizer is built once from the training captions' words into
<train.out_dir>/tokenizer/ and saved into every checkpoint's pipeline (tokenizer/).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from aigc_cli.backends import get_backend
from aigc_cli.config import ExperimentConfig, require_data
from aigc_cli.data.images import CaptionedImages
from aigc_cli.runs.checkpoints import checkpoint_step_of_name, latest_good_checkpoint, list_checkpoints, load_weights
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.training.loop import TrainResult, run_training
from aigc_cli.training.recipe import TrainingJob

BACKEND = "latent-diffusion"
AUTOENCODER_DIR = "autoencoder"
SCALE_IMAGES = 512  # training images the latent scale is measured on


def train_model(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> TrainResult:
    run_dir = Path(cfg.train.out_dir)
    with exclusive_lock(run_dir, "run directory"):
        data_dir = Path(require_data(cfg).prepared_dir)
        # model.autoencoder loaded before anything is written: a folder it cannot load leaves no run directory behind
        given = get_backend(BACKEND).load_autoencoder(cfg.model.autoencoder) if cfg.model.autoencoder and not list_checkpoints(run_dir) else None
        tokenizer_dir = _tokenizer(cfg, data_dir, run_dir / "tokenizer")
        autoencoder = None
        if not cfg.model.autoencoder and not list_checkpoints(run_dir):  # phase 2 has not started: phase 1 first (or again)
            autoencoder = _autoencoder_phase(cfg, data_dir, tokenizer_dir, resume, quiet)
        if not quiet:
            print(f"latent diffusion, phase 2 of 2: the UNet and text encoder, {cfg.train.max_steps} steps in {run_dir}", file=sys.stderr, flush=True)
        return run_training(cfg, _unet_job(cfg, data_dir, tokenizer_dir, autoencoder, given), resume, quiet)


def _tokenizer(cfg: ExperimentConfig, data_dir: Path, directory: Path) -> Path:
    """The CLIP vocabulary of the training captions' words (the same files every time for the same data)."""
    import json

    from aigc_cli.data.clip_vocabulary import caption_words, write_clip_tokenizer
    from aigc_cli.runs.atomic_files import staging_dir

    CaptionedImages(data_dir, "train", list)  # the captions are there (else a clear error)
    captions = json.loads((data_dir / "train_captions.json").read_text(encoding="utf-8"))
    words = caption_words(captions, cfg.model.vocabulary_words)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(directory, replace=True) as tmp:
        write_clip_tokenizer(tmp, words)
    return directory


def _data(cfg: ExperimentConfig, data_dir: Path, tokenizer_dir: Path) -> tuple[CaptionedImages, CaptionedImages]:
    from aigc_cli.data.clip_vocabulary import clip_tokenizer

    image, length = require_data(cfg).image, cfg.model.max_prompt_tokens
    tokenizer = clip_tokenizer(tokenizer_dir, length)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids

    return (CaptionedImages(data_dir, "train", tokenize, image.caption_dropout, image.random_flip),
            CaptionedImages(data_dir, "val", tokenize))


def _autoencoder_phase(cfg: ExperimentConfig, data_dir: Path, tokenizer_dir: Path, resume: bool, quiet: bool) -> Path:
    """Phase 1's last checkpoint: trained now, resumed, or found complete from an earlier run."""
    mc, tc = cfg.model, cfg.train
    phase_dir = Path(tc.out_dir) / AUTOENCODER_DIR
    done = latest_good_checkpoint(phase_dir) if resume else None
    if done is not None and checkpoint_step_of_name(done) >= mc.autoencoder_steps:
        return done
    scale = mc.autoencoder_learning_rate / tc.learning_rate
    phase = tc.model_copy(update={
        "out_dir": str(phase_dir), "max_steps": mc.autoencoder_steps, "learning_rate": mc.autoencoder_learning_rate,
        "min_lr": tc.min_lr * scale, "warmup_steps": min(tc.warmup_steps, mc.autoencoder_steps // 10), "lr_decay_steps": None,
        "eval_every": min(tc.eval_every, mc.autoencoder_steps), "sample_every_eval": False})
    backend = get_backend(BACKEND)
    train, val = _data(cfg, data_dir, tokenizer_dir)
    if not quiet:
        print(f"latent diffusion, phase 1 of 2: the autoencoder, {mc.autoencoder_steps} steps in {phase_dir}", file=sys.stderr, flush=True)

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        model = load_weights(backend, previous, device) if previous is not None else backend.build(mc, train.meta, tokenizer_dir).to(device)
        model.unet.requires_grad_(False)
        model.text_encoder.requires_grad_(False)
        return model

    job = TrainingJob(BACKEND, backend, make_model, train, val, 0, None, train.meta["inputs"],
                      provenance={"prepared_data": str(data_dir), "phase": "autoencoder"}, parts=("autoencoder",))
    return run_training(cfg.model_copy(update={"train": phase}), job, resume, quiet).checkpoint


def _unet_job(cfg: ExperimentConfig, data_dir: Path, tokenizer_dir: Path, autoencoder: Path | None, given_vae=None) -> TrainingJob:
    """Phase 2: from phase 1's checkpoint (or model.autoencoder's), the latent scale measured, the autoencoder frozen."""
    mc = cfg.model
    backend = get_backend(BACKEND)
    train, val = _data(cfg, data_dir, tokenizer_dir)

    def make_model(previous: Path | None, device: str) -> torch.nn.Module:
        if previous is not None:
            model = load_weights(backend, previous, device)
        else:
            if autoencoder is not None:
                model = load_weights(backend, autoencoder, device)
            else:  # model.autoencoder: fresh UNet and text encoder on a trained autoencoder
                model = backend.build(mc, train.meta, tokenizer_dir, vae=given_vae if given_vae is not None else backend.load_autoencoder(mc.autoencoder)).to(device)
            count = min(SCALE_IMAGES, len(train))
            images = torch.from_numpy(train.images[:count].copy()).float().div_(127.5).sub_(1.0).to(device)
            backend.set_latent_scale(model, images, cfg.train.seed)
        model.vae.requires_grad_(False)
        return model

    source = {"autoencoder": str(mc.autoencoder)} if mc.autoencoder else {"autoencoder_phase": str(autoencoder)}
    return TrainingJob(BACKEND, backend, make_model, train, val, 0, None, train.meta["inputs"],
                       provenance={"prepared_data": str(data_dir), "phase": "unet", **source}, parts=("unet",))

"""`ddpm`: denoising diffusion with a diffusers `UNet2DModel` and `DDPMScheduler`.

Training is the DDPM objective: noise an image to a random timestep, predict the noise (or v,
or the clean image) with the UNet, mean-squared error. An exponential moving average of the
weights is kept beside them; it is what samples and what the checkpoint's `unet/` holds, so a
checkpoint is a plain diffusers pipeline directory: `DDPMPipeline.from_pretrained(dir)` loads
it. The raw training weights sit in `unet_training/` for `--resume`.
"""

from __future__ import annotations

import copy
import json
import shutil
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.errors import AigcError

IMAGE_INFO = "aigc_image.json"
PIPELINE_FILE = "aigc_ddpm_pipeline.py"


class Diffusion(nn.Module):
    """The UNet being trained, its EMA copy, the noise schedule and what the images are."""

    def __init__(self, unet, scheduler, ema_decay: float, image_info: dict):
        super().__init__()
        self.unet = unet
        self.ema = copy.deepcopy(unet).requires_grad_(False) if ema_decay else None
        self.scheduler = scheduler
        self.ema_decay = ema_decay
        self.image_info = image_info
        self.ema_updates = 0  # a Python int: reading a device tensor every step would sync the GPU

    @property
    def sampling_unet(self):
        return self.ema if self.ema is not None else self.unet

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        self.ema_updates += 1
        # Warm-up as diffusers' EMAModel: early weights move fast, so a short run is not all noise.
        n = self.ema_updates
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.unet.parameters()], 1.0 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.unet.buffers()):
            ema_buffer.copy_(buffer)


def _norm_groups(channels: list[int]) -> int:
    return math.gcd(32, *channels)


def build(model_cfg: Any, data_meta: dict) -> nn.Module:
    from diffusers import DDPMScheduler, UNet2DModel

    size, channels = data_meta["size"], data_meta["channels"]
    levels = len(model_cfg.block_out_channels)
    if size % (2 ** (levels - 1)):
        raise AigcError(f"data.image.size={size} cannot be halved {levels - 1} times (model.block_out_channels has {levels} levels)",
                        "use a power-of-two image size or fewer levels")
    bad = [i for i in model_cfg.attention_levels if not 0 <= i < levels]
    if bad:
        raise AigcError(f"model.attention_levels {bad} outside 0..{levels - 1}", "name levels of model.block_out_channels, counted from 0")
    classes = data_meta.get("classes")
    if model_cfg.class_conditional and not classes:
        raise AigcError("model.class_conditional needs labelled data", "use `digits`, or data.image.class_folders=true, and run `aigc prep` again")
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels,
        layers_per_block=model_cfg.layers_per_block, block_out_channels=tuple(model_cfg.block_out_channels),
        down_block_types=tuple("AttnDownBlock2D" if i in model_cfg.attention_levels else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if i in model_cfg.attention_levels else "UpBlock2D" for i in reversed(range(levels))),
        norm_num_groups=_norm_groups(model_cfg.block_out_channels),
        attention_head_dim=8,
        num_class_embeds=len(classes) if model_cfg.class_conditional else None,
    )
    scheduler = DDPMScheduler(num_train_timesteps=model_cfg.num_train_timesteps, beta_schedule=model_cfg.beta_schedule,
                              prediction_type=model_cfg.prediction_type, clip_sample=True)
    info = {"size": size, "channels": channels, "classes": classes, "class_conditional": model_cfg.class_conditional}
    return Diffusion(unet, scheduler, model_cfg.ema_decay, info)


def parameters(model: Diffusion, part: str):
    return [p for p in model.unet.parameters() if p.requires_grad]


def loss(model: Diffusion, batch, part: str) -> torch.Tensor:
    images, labels = batch
    noise = torch.randn_like(images)
    steps = torch.randint(0, model.scheduler.config.num_train_timesteps, (images.size(0),), device=images.device)
    noisy = model.scheduler.add_noise(images, noise, steps)
    class_labels = labels if model.image_info["class_conditional"] else None
    prediction = model.unet(noisy, steps, class_labels=class_labels).sample
    kind = model.scheduler.config.prediction_type
    target = noise if kind == "epsilon" else model.scheduler.get_velocity(images, noise, steps) if kind == "v_prediction" else images
    return F.mse_loss(prediction.float(), target.float())


def after_step(model: Diffusion) -> None:
    model.update_ema()


def save(model: Diffusion, directory: Path) -> None:
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=model.sampling_unet, scheduler=model.scheduler).save_pretrained(directory)
    # diffusers' DDPMPipeline cannot pass class labels: the checkpoint carries a pipeline that can
    # (DiffusionPipeline.from_pretrained(dir, custom_pipeline=f"{dir}/aigc_ddpm_pipeline.py", trust_remote_code=True)).
    shutil.copyfile(Path(__file__).parent / "shipped" / PIPELINE_FILE, Path(directory) / PIPELINE_FILE)
    if model.ema is not None:
        model.unet.save_pretrained(directory / "unet_training")
    info = {**model.image_info, "ema_decay": model.ema_decay, "ema_updates": model.ema_updates}
    (directory / IMAGE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load(directory: Path, device: str) -> Diffusion:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    directory = Path(directory)
    if not (directory / "unet").is_dir() or not (directory / "scheduler").is_dir():
        raise AigcError(f"{directory} is not a diffusion pipeline directory (no unet/ and scheduler/)", "pass a checkpoint written by `aigc train` with model.backend=ddpm")
    info = json.loads((directory / IMAGE_INFO).read_text(encoding="utf-8")) if (directory / IMAGE_INFO).is_file() else None
    ema_unet = UNet2DModel.from_pretrained(directory / "unet", use_safetensors=True)  # never unpickle
    scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
    if info is None:  # a diffusers pipeline from elsewhere: sample with it as it is
        config = ema_unet.config
        info = {"size": config.sample_size, "channels": config.in_channels, "classes": None, "class_conditional": False, "ema_decay": 0.0}
    has_training = (directory / "unet_training").is_dir()
    unet = UNet2DModel.from_pretrained(directory / "unet_training", use_safetensors=True) if has_training else ema_unet
    model = Diffusion(unet, scheduler, info.get("ema_decay", 0.0) if has_training else 0.0,
                      {k: info[k] for k in ("size", "channels", "classes", "class_conditional")})
    if model.ema is not None:
        model.ema.load_state_dict(ema_unet.state_dict())
        model.ema_updates = info.get("ema_updates", 0)
    return model.to(device)


def image_info(model: Diffusion) -> dict:
    return model.image_info


@torch.inference_mode()
def sample(model: Diffusion, noise: torch.Tensor, labels: torch.Tensor | None, gen_cfg: Any,
           generators: list[torch.Generator]) -> torch.Tensor:
    """Denoise `noise` (B×C×H×W) into images in [-1, 1]. Each image has its own generator, so an
    image does not depend on what else is in the batch."""
    from diffusers import DDIMScheduler, DDPMScheduler

    unet = model.sampling_unet
    if gen_cfg.sampler not in ("ddim", "ddpm"):
        raise AigcError(f"generate.images.sampler={gen_cfg.sampler} is for text-to-image pipelines", "use ddim or ddpm with model.backend=ddpm")
    if gen_cfg.sampler == "ddim":
        scheduler = DDIMScheduler.from_config(model.scheduler.config)
    else:
        scheduler = DDPMScheduler.from_config(model.scheduler.config)
    steps = min(gen_cfg.num_inference_steps, model.scheduler.config.num_train_timesteps)
    scheduler.set_timesteps(steps, device=noise.device)
    class_labels = labels if model.image_info["class_conditional"] else None
    images = noise * scheduler.init_noise_sigma
    extra = {"eta": gen_cfg.eta} if gen_cfg.sampler == "ddim" else {}
    for t in scheduler.timesteps:
        prediction = unet(images, t, class_labels=class_labels).sample
        images = scheduler.step(prediction, t, images, generator=generators, **extra).prev_sample
    return images.clamp(-1, 1)


def latent_shape(model: Diffusion) -> tuple[int, ...]:
    info = model.image_info
    return (info["channels"], info["size"], info["size"])

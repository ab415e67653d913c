"""`text-to-image`: a Stable-Diffusion-style pipeline directory (diffusers: unet/, vae/, text_encoder/,
tokenizer/, scheduler/) fine-tuned by `aigc finetune` — LoRA on the UNet through peft, or the full UNet.

Training is the latent-diffusion objective of diffusers' train_text_to_image(_lora).py: encode the
images with the frozen VAE (times its scaling factor), noise the latents to a random timestep of a
DDPMScheduler with the pipeline's schedule, predict the noise (or v) with the UNet conditioned on
the frozen CLIP text encoder's hidden states, mean-squared error.

A LoRA checkpoint is `pytorch_lora_weights.safetensors` as `StableDiffusionPipeline.save_lora_weights`
writes it (so `pipe.load_lora_weights(dir)` loads it unchanged) plus RECORD naming the base
pipeline; a full fine-tune's checkpoint is a whole pipeline directory (`from_pretrained` loads it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.errors import AigcError

RECORD = "aigc_text_to_image.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the UNet's attention projections, as diffusers' LoRA script
SAMPLERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm-solver++": "DPMSolverMultistepScheduler",
            "euler": "EulerDiscreteScheduler"}


class TextToImage(nn.Module):
    """The pipeline's parts; only the UNet (its adapters, or all of it) trains."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, record: dict):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler, self.record = tokenizer, scheduler, record  # scheduler: the pipeline's own (for sampling)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def is_pipeline_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / "unet").is_dir() and (path / "text_encoder").is_dir()


def _parts(directory: Path):
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel, CLIPTokenizer

    from aigc_cli.backends.gpt import _quiet_transformers

    diffusers_logging.disable_progress_bar()
    _quiet_transformers()
    if not is_pipeline_dir(directory):
        raise AigcError(f"{directory} is not a Stable-Diffusion-style pipeline directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                        "point finetune.base at a local diffusers pipeline directory")
    index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    scheduler_class = getattr(__import__("diffusers"), index["scheduler"][1])
    try:
        return (UNet2DConditionModel.from_pretrained(directory / "unet"), AutoencoderKL.from_pretrained(directory / "vae"),
                CLIPTextModel.from_pretrained(directory / "text_encoder"), CLIPTokenizer.from_pretrained(directory / "tokenizer"),
                scheduler_class.from_pretrained(directory / "scheduler"))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot load the pipeline {directory}: {first}", "check the directory (diffusers save_pretrained layout)") from None


def start(base: str | Path, method: str, lora_cfg, image: dict) -> TextToImage:
    """The base pipeline ready to fine-tune: LoRA adapters on the UNet (method lora) or the whole UNet trainable (full).
    `image` is the prepared data's {size, channels}."""
    base = Path(base).resolve()
    unet, vae, text_encoder, tokenizer, scheduler = _parts(base)
    record = {"base": str(base), "method": method, "size": image["size"], "data_channels": image["channels"]}
    if method == "lora":
        record["lora"] = {"r": lora_cfg.r, "alpha": lora_cfg.alpha, "dropout": lora_cfg.dropout,
                          "target_modules": lora_cfg.target_modules or DEFAULT_TARGETS}
        _add_adapter(unet, record["lora"])
    else:
        unet.requires_grad_(True)
    model = TextToImage(unet, vae, text_encoder, tokenizer, scheduler, record)
    _check_size(model, image["size"])
    return model


def _add_adapter(unet, lora: dict) -> None:
    from peft import LoraConfig

    unet.requires_grad_(False)
    try:
        unet.add_adapter(LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                    init_lora_weights="gaussian", target_modules=lora["target_modules"]))
    except ValueError as exc:
        raise AigcError(f"cannot add LoRA adapters to the UNet: {exc}", "set finetune.lora.target_modules to module names of the UNet (e.g. to_q, to_k, to_v, to_out.0)") from None


def _check_size(model: TextToImage, size: int) -> None:
    levels = len(model.unet.config.block_out_channels)
    step = model.vae_scale * 2 ** (levels - 1)
    if size % step:
        raise AigcError(f"data.image.size={size} does not fit this pipeline: it must divide by {step} "
                        f"(the VAE downsamples {model.vae_scale}×, the UNet {2 ** (levels - 1)}× more)",
                        f"set data.image.size to a multiple of {step} and run `aigc prep CONFIG --force`")


def build(model_cfg: Any, data_meta: dict):
    raise AigcError("text-to-image fine-tunes an existing pipeline and cannot be trained from scratch",
                    "use `aigc finetune` with finetune.base pointing at a diffusers pipeline directory")


def tokenize(model: TextToImage, texts: list[str]) -> torch.Tensor:
    tok = model.tokenizer
    return tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


def parameters(model: TextToImage, part: str):
    return [p for p in model.unet.parameters() if p.requires_grad]


def _rgb(model: TextToImage, images: torch.Tensor) -> torch.Tensor:
    wanted = model.vae.config.in_channels
    return images.expand(-1, wanted, -1, -1) if images.size(1) == 1 and wanted != 1 else images


def loss(model: TextToImage, batch, part: str) -> torch.Tensor:
    images, ids = batch
    with torch.no_grad():
        latents = model.vae.encode(_rgb(model, images).to(model.vae.dtype)).latent_dist.sample() * model.vae.config.scaling_factor
        hidden = model.text_encoder(ids, return_dict=False)[0]
    noise = torch.randn_like(latents)
    sched = model.noise_scheduler
    steps = torch.randint(0, sched.config.num_train_timesteps, (latents.size(0),), device=latents.device)
    noisy = sched.add_noise(latents, noise, steps)
    prediction = model.unet(noisy, steps, hidden, return_dict=False)[0]
    target = sched.get_velocity(latents, noise, steps) if sched.config.prediction_type == "v_prediction" else noise
    return F.mse_loss(prediction.float(), target.float())


def save(model: TextToImage, directory: Path) -> None:
    directory = Path(directory)
    if model.record["method"] == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model.unet))
        StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
    else:
        _pipeline(model).save_pretrained(directory)
    relative = os.path.relpath(model.record["base"], directory.resolve())
    (directory / RECORD).write_text(json.dumps({**model.record, "base_relative": relative}, indent=2) + "\n", encoding="utf-8")


def _pipeline(model: TextToImage):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   scheduler=model.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _base_dir(directory: Path, record: dict) -> Path:
    for candidate in (Path(record["base"]), (directory / record.get("base_relative", "")).resolve()):
        if is_pipeline_dir(candidate):
            return candidate
    raise AigcError(f"the LoRA weights in {directory} need their base pipeline {record['base']}, which is not there",
                    f"restore the base pipeline directory ({RECORD}: base)")


def load(directory: Path, device: str, trainable: bool = False) -> TextToImage:
    directory = Path(directory)
    if not (directory / RECORD).is_file():
        raise AigcError(f"{directory} is not a text-to-image checkpoint (no {RECORD})", "pass a checkpoint written by `aigc finetune` on a pipeline")
    record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
    record.pop("base_relative", None)
    if record["method"] != "lora":
        unet, vae, text_encoder, tokenizer, scheduler = _parts(directory)
        unet.requires_grad_(trainable)
        return TextToImage(unet, vae, text_encoder, tokenizer, scheduler, record).to(device)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    base = _base_dir(directory, record)
    unet, vae, text_encoder, tokenizer, scheduler = _parts(base)
    record["base"] = str(base)
    _add_adapter(unet, record["lora"])
    state, _ = StableDiffusionPipeline.lora_state_dict(directory, weight_name=LORA_WEIGHTS)
    unet_state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")})
    result = set_peft_model_state_dict(unet, unet_state, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise AigcError(f"the LoRA weights in {directory} do not fit the base pipeline {base}", "use the base the adapter was trained on")
    if not trainable:
        unet.requires_grad_(False)
    return TextToImage(unet, vae, text_encoder, tokenizer, scheduler, record).to(device)


def image_info(model: TextToImage) -> dict:
    """What the samples are: the prepared data's size and channels (greyscale data: the pipeline's RGB averaged)."""
    return {"size": model.record["size"], "channels": model.record["data_channels"], "classes": None, "class_conditional": False}


def as_data_channels(model: TextToImage, images: torch.Tensor) -> torch.Tensor:
    """The pipeline's RGB images as the prepared data's channels (greyscale: the mean of R, G and B)."""
    if model.record["data_channels"] == 1 and images.size(1) != 1:
        return images.mean(dim=1, keepdim=True)
    return images


def latent_shape(model: TextToImage) -> tuple[int, ...]:
    side = model.record["size"] // model.vae_scale
    return (model.unet.config.in_channels, side, side)


def sample(model: TextToImage, noise: torch.Tensor, labels: torch.Tensor | None, gen_cfg: Any,
           generators: list[torch.Generator]) -> torch.Tensor:
    """The ImageBackend contract (training's sample grids): images of the empty prompt, unconditioned."""
    return as_data_channels(model, sample_prompts(model, noise, [""] * noise.size(0), gen_cfg, generators))


def _encode(model: TextToImage, texts: list[str], device) -> torch.Tensor:
    return model.text_encoder(tokenize(model, texts).to(device), return_dict=False)[0]


@torch.inference_mode()
def sample_prompts(model: TextToImage, noise: torch.Tensor, prompts: list[str], gen_cfg: Any,
                   generators: list[torch.Generator], negative_prompt: str | None = None) -> torch.Tensor:
    """Images in [-1, 1] for `prompts` from initial latents `noise`, with classifier-free guidance
    (gen_cfg.guidance_scale > 1: the negative prompt, or the empty one, is what is guided away from)."""
    import diffusers

    scheduler = getattr(diffusers, SAMPLERS[gen_cfg.sampler]).from_config(
        model.scheduler.config, **({"algorithm_type": "dpmsolver++"} if gen_cfg.sampler == "dpm-solver++" else {}))
    scheduler.set_timesteps(gen_cfg.num_inference_steps, device=noise.device)
    guided = gen_cfg.guidance_scale > 1.0
    cond = _encode(model, prompts, noise.device)
    if guided:
        cond = torch.cat([_encode(model, [negative_prompt or ""] * len(prompts), noise.device), cond])
    latents = noise.to(cond.dtype) * scheduler.init_noise_sigma
    extra = {"eta": gen_cfg.eta} if gen_cfg.sampler == "ddim" else {}
    for t in scheduler.timesteps:
        inputs = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        prediction = model.unet(inputs, t, encoder_hidden_states=cond, return_dict=False)[0]
        if guided:
            uncond, text = prediction.chunk(2)
            prediction = uncond + gen_cfg.guidance_scale * (text - uncond)
        latents = scheduler.step(prediction, t, latents, generator=generators, return_dict=False, **extra)[0]
    images = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0]
    return images.clamp(-1, 1)

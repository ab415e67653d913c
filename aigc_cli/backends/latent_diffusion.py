"""`latent-diffusion`: Stable Diffusion's recipe at small sizes, trained from scratch by `aigc train`.

The model is text_to_image's `TextToImage` (the same parts: AutoencoderKL, UNet2DConditionModel,
CLIPTextModel, CLIPTokenizer, a diffusers scheduler), so sampling, `aigc generate --prompt` and
saving as a StableDiffusionPipeline directory are that module's. What is new is building the parts
from `model.*` and the two parts' losses:

- autoencoder: per-pixel mean-squared reconstruction error of a posterior sample, plus kl_weight
  times the KL to N(0, I) (summed over each image's latents, divided by its pixel count); or, for
  a VQModel (autoencoder_kind vq), of the quantized reconstruction plus its commitment loss;
- unet: the latent-diffusion objective on the frozen autoencoder's latents times its scaling
  factor (measured on the training images when phase 1 ends, `set_latent_scale`), conditioned on
  the text encoder's hidden states; with train_text_encoder the text encoder learns with the UNet.

A checkpoint is a StableDiffusionPipeline directory plus RECORD (the model section, the image size
and channels), which `load` reads back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aigc_cli.backends import LatentDiffusionModelConfig
from aigc_cli.backends.text_to_image import (TextToImage, _pipeline, diffusers_errors_unlogged, _rgb, as_data_channels, latent_shape,  # noqa: F401
                                             sample_prompts, tokenize)
from aigc_cli.data.image_folders import AUTOENCODERS, autoencoder_folder
from aigc_cli.errors import AigcError

RECORD = "aigc_latent_diffusion.json"


def _quiet() -> None:
    from diffusers.utils import logging as diffusers_logging

    from aigc_cli.backends.gpt import _quiet_transformers

    diffusers_logging.disable_progress_bar()
    _quiet_transformers()


def build(model_cfg: LatentDiffusionModelConfig, data_meta: dict, tokenizer_dir: Path | None = None, vae=None) -> TextToImage:
    """Fresh parts for the images of `data_meta` ({size, channels}); the tokenizer is read from
    `tokenizer_dir` (vocab.json, merges.txt; None: bytes alone), `vae` replaces a fresh autoencoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from aigc_cli.data.clip_vocabulary import clip_tokenizer, write_clip_tokenizer

    _quiet()
    mc, size, channels = model_cfg, data_meta["size"], data_meta["channels"]
    if vae is None:
        levels = len(mc.autoencoder_channels)
        shape = dict(in_channels=channels, out_channels=channels, block_out_channels=list(mc.autoencoder_channels),
                     down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                     latent_channels=mc.latent_channels, norm_num_groups=mc.norm_num_groups, sample_size=size, scaling_factor=1.0)
        if mc.autoencoder_kind == "vq":
            from diffusers import VQModel

            vae = VQModel(**shape, num_vq_embeddings=mc.codebook_size, vq_embed_dim=mc.latent_channels)
        else:
            vae = AutoencoderKL(**shape)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    step = factor * 2 ** (len(mc.unet_channels) - 1)
    if size % step:
        raise AigcError(f"data.image.size={size} does not fit model.*: it must divide by {step} (the autoencoder downsamples "
                        f"{factor}×, the UNet {step // factor}× more)", f"set data.image.size to a multiple of {step} and run `aigc prep CONFIG --force`, or use fewer levels")
    if tokenizer_dir is None:  # bytes alone; the tokenizer holds its vocabulary in memory once built
        import tempfile

        with tempfile.TemporaryDirectory(prefix="aigc-clip-vocab-") as tmp:
            tokenizer = clip_tokenizer(write_clip_tokenizer(tmp, []), mc.max_prompt_tokens)
    else:
        tokenizer = clip_tokenizer(tokenizer_dir, mc.max_prompt_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=mc.text_width, intermediate_size=4 * mc.text_width, num_hidden_layers=mc.text_layers,
        num_attention_heads=mc.text_heads, max_position_embeddings=mc.max_prompt_tokens, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    levels = range(len(mc.unet_channels))
    unet = UNet2DConditionModel(
        sample_size=size // factor, in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
        block_out_channels=list(mc.unet_channels), layers_per_block=mc.layers_per_block, norm_num_groups=mc.norm_num_groups,
        down_block_types=["CrossAttnDownBlock2D" if i in mc.attention_levels else "DownBlock2D" for i in levels],
        up_block_types=["CrossAttnUpBlock2D" if i in mc.attention_levels else "UpBlock2D" for i in reversed(levels)],
        cross_attention_dim=mc.text_width, attention_head_dim=mc.attention_head_dim)
    scheduler = DDIMScheduler(num_train_timesteps=mc.num_train_timesteps, beta_schedule=mc.beta_schedule, beta_start=0.00085,
                              beta_end=0.012, prediction_type=mc.prediction_type, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    record = {"method": "scratch", "size": size, "data_channels": channels, "model": mc.model_dump(mode="json"),
              "latent_scale_measured": False}
    return _ready(TextToImage(unet, vae, text_encoder, tokenizer, scheduler, record))


def _ready(model: TextToImage) -> TextToImage:
    """TextToImage freezes its autoencoder and text encoder (fine-tuning's choice); here every part
    trains under its own optimizer (the recipe freezes what a phase does not train), and the text
    encoder only with train_text_encoder."""
    model.vae.requires_grad_(True)
    model.unet.requires_grad_(True)
    model.text_encoder.requires_grad_(model.record["model"]["train_text_encoder"])
    return model


def parameters(model: TextToImage, part: str):
    if part == "autoencoder":
        return list(model.vae.parameters())
    return list(model.unet.parameters()) + (list(model.text_encoder.parameters()) if model.record["model"]["train_text_encoder"] else [])


def loss(model: TextToImage, batch, part: str) -> torch.Tensor:
    images, ids = batch
    return _autoencoder_loss(model, images) if part == "autoencoder" else _diffusion_loss(model, images, ids)


def is_vq(model: TextToImage) -> bool:
    return type(model.vae).__name__ == "VQModel"


def encode(model: TextToImage, images: torch.Tensor, generator: torch.Generator | None = None, mode: bool = False) -> torch.Tensor:
    """The latents of images in [-1, 1] (unscaled): a posterior sample (or its mode) for a KL
    autoencoder, the encoder's unquantized output for a VQModel (its decoder quantizes)."""
    encoded = model.vae.encode(_rgb(model, images))
    if is_vq(model):
        return encoded.latents
    return encoded.latent_dist.mode() if mode else encoded.latent_dist.sample(generator=generator)


def _autoencoder_loss(model: TextToImage, images: torch.Tensor) -> torch.Tensor:
    from aigc_cli.training.loss_stats import report

    images = _rgb(model, images)
    if is_vq(model):  # VQModel: reconstruction, plus its commitment and codebook terms
        decoded = model.vae.decode(model.vae.encode(images).latents)
        reconstruction = F.mse_loss(decoded.sample.float(), images.float())
        commitment = decoded.commit_loss.float().mean()
        report({"reconstruction_mse": reconstruction.detach(), "vq_loss": commitment.detach()})
        return reconstruction + commitment
    posterior = model.vae.encode(images).latent_dist
    decoded = model.vae.decode(posterior.sample()).sample
    reconstruction = F.mse_loss(decoded.float(), images.float())
    kl = posterior.kl().float().mean() / images[0].numel()
    report({"reconstruction_mse": reconstruction.detach(), "kl": kl.detach()})
    return reconstruction + model.record["model"]["kl_weight"] * kl


def _diffusion_loss(model: TextToImage, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        latents = encode(model, images) * model.vae.config.scaling_factor
    with torch.set_grad_enabled(torch.is_grad_enabled() and model.record["model"]["train_text_encoder"]):
        hidden = model.text_encoder(ids, return_dict=False)[0]
    noise = torch.randn_like(latents)
    sched = model.noise_scheduler
    steps = torch.randint(0, sched.config.num_train_timesteps, (latents.size(0),), device=latents.device)
    prediction = model.unet(sched.add_noise(latents, noise, steps), steps, hidden, return_dict=False)[0]
    target = sched.get_velocity(latents, noise, steps) if sched.config.prediction_type == "v_prediction" else noise
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def set_latent_scale(model: TextToImage, images: torch.Tensor, seed: int) -> float:
    """Stable Diffusion's scaling factor, 1 / std of the autoencoder's latents (posterior samples drawn
    with their own seeded generator) over `images`; written into the autoencoder's config (the UNet trains on latents times it).
    """
    was_training = model.vae.training
    model.vae.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    latents = torch.cat([encode(model, chunk, generator) for chunk in images.split(64)])
    model.vae.train(was_training)
    scale = float(1.0 / latents.float().std().clamp_min(1e-6))
    model.vae.register_to_config(scaling_factor=scale)
    model.record["latent_scale_measured"] = True
    model.record["latent_scale"] = scale
    return scale


def save(model: TextToImage, directory: Path) -> None:
    directory = Path(directory)
    _pipeline(model).save_pretrained(directory)
    (directory / RECORD).write_text(json.dumps(model.record, indent=2) + "\n", encoding="utf-8")


def load(directory: Path, device: str) -> TextToImage:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    if not (directory / RECORD).is_file():
        raise AigcError(f"{directory} is not a latent-diffusion checkpoint (no {RECORD})", "pass a checkpoint written by `aigc train` with model.backend=latent-diffusion")
    _quiet()
    record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
    model = TextToImage(UNet2DConditionModel.from_pretrained(directory / "unet"), _autoencoder_class(directory / "vae").from_pretrained(directory / "vae"),
                        CLIPTextModel.from_pretrained(directory / "text_encoder"), CLIPTokenizer.from_pretrained(directory / "tokenizer"),
                        DDIMScheduler.from_pretrained(directory / "scheduler"), record)
    return _ready(model).to(device)


def _autoencoder_class(folder: Path):
    """diffusers' class of the autoencoder saved in `folder` (its config.json's _class_name), or None."""
    import diffusers

    try:
        name = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return getattr(diffusers, name) if name in AUTOENCODERS else None


def load_autoencoder(path: str | Path):
    """model.autoencoder: an AutoencoderKL or VQModel directory, a pipeline's (its vae/), or a checkpoint or run directory of this backend."""
    from aigc_cli.runs.checkpoints import latest_good_checkpoint

    path = Path(path).expanduser()
    if not path.exists():
        raise AigcError(f"model.autoencoder not found: {path}", "point it at an AutoencoderKL or pipeline directory")
    path = latest_good_checkpoint(path) or path
    folder, name = autoencoder_folder(path)
    kind = getattr(__import__("diffusers"), name)
    _quiet()
    try:
        with diffusers_errors_unlogged():
            return kind.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # missing/garbage weights, a config of wrong fields
        raise AigcError(f"cannot load model.autoencoder {folder}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                        "check the directory (diffusers save_pretrained layout)") from None


def image_info(model: TextToImage) -> dict:
    return {"size": model.record["size"], "channels": model.record["data_channels"], "classes": None, "class_conditional": False}


def sample(model: TextToImage, noise: torch.Tensor, labels: torch.Tensor | None, gen_cfg: Any,
           generators: list[torch.Generator]) -> torch.Tensor:
    """The ImageBackend contract (training's sample grids, FID samples): images of the empty prompt,
    which caption dropout (data.image.caption_dropout) trains as the unconditional model. Guidance
    from the empty prompt away from the empty prompt changes nothing, so it is not computed."""
    unguided = gen_cfg.model_copy(update={"guidance_scale": 1.0})
    return as_data_channels(model, sample_prompts(model, noise, [""] * noise.size(0), unguided, generators))


@torch.inference_mode()
def reconstruct(model: TextToImage, images: torch.Tensor) -> torch.Tensor:
    """The autoencoder's image of each input's posterior mean, in [-1, 1]."""
    decoded = model.vae.decode(encode(model, images, mode=True)).sample.clamp(-1, 1)
    return as_data_channels(model, decoded)

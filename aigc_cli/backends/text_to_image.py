"""`text-to-image`: a Stable-Diffusion-style pipeline directory (diffusers: unet/, vae/, text_encoder/,
tokenizer/, scheduler/) fine-tuned by `aigc finetune` — LoRA on the UNet through peft, or the full UNet;
optionally the CLIP text encoder too (finetune.text_to_image.train_text_encoder), an EMA of the trained
weights (ema_decay) and min-SNR loss weighting (snr_gamma).

Training is the latent-diffusion objective of diffusers' train_text_to_image(_lora).py: encode the
images with the frozen VAE (times its scaling factor), noise the latents to a random timestep of a
DDPMScheduler with the pipeline's schedule, predict the noise (or v) with the UNet conditioned on
the frozen CLIP text encoder's hidden states, mean-squared error.

A LoRA checkpoint is `pytorch_lora_weights.safetensors` as `StableDiffusionPipeline.save_lora_weights`
writes it, the UNet's layers under unet., the text encoder's under text_encoder. (so
`pipe.load_lora_weights(dir)` loads both unchanged), plus RECORD naming the base pipeline; a full
fine-tune's checkpoint is a whole pipeline directory (`from_pretrained` loads it). With EMA those
files hold the EMA weights — what samples — and TRAINING_WEIGHTS the raw ones, for --resume.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigc_cli.errors import AigcError

RECORD = "aigc_text_to_image.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# With EMA: the raw trained weights, for --resume (in a sub-folder: `aigc info` counts the checkpoint's
# top-level *.safetensors as its parameters, and these are a second copy of the trained ones).
TRAINING_WEIGHTS = "training/raw_weights.safetensors"
DEFAULT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the UNet's attention projections, as diffusers' LoRA script
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's attention projections, as diffusers' train_dreambooth_lora.py
SAMPLERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm-solver++": "DPMSolverMultistepScheduler",
            "euler": "EulerDiscreteScheduler"}


class TextToImage(nn.Module):
    """The pipeline's parts; the UNet (its adapters, or all of it) trains, and with
    record["text_encoder"] the text encoder too. With record["ema_decay"], `ema` holds the moving
    average of every trained weight (name → tensor), updated after each step."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, record: dict):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler, self.record = tokenizer, scheduler, record  # scheduler: the pipeline's own (for sampling)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.vae.requires_grad_(False)
        self.ema: dict[str, torch.Tensor] | None = None
        self.ema_updates = 0  # a Python int: reading a device tensor every step would sync the GPU

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def trained(self) -> list[tuple[str, nn.Parameter]]:
        """The trainable weights by name ("unet.…", "text_encoder.…"): what the optimizer and the EMA see."""
        parts = [("unet", self.unet)] + ([("text_encoder", self.text_encoder)] if self.record.get("text_encoder") else [])
        return [(f"{prefix}.{name}", p) for prefix, module in parts for name, p in module.named_parameters() if p.requires_grad]

    def start_ema(self) -> None:
        self.ema = {name: p.detach().clone() for name, p in self.trained()}

    @torch.no_grad()
    def update_ema(self) -> None:
        """diffusers' EMAModel.step (no warm-up power, update_after_step 0): after update k the decay is
        min(ema_decay, (1 + s) / (10 + s)) with s = k - 1, and 0 (a plain copy) at the first."""
        names, params = zip(*self.trained())
        self._ema_on(params[0].device)
        self.ema_updates += 1
        s = self.ema_updates - 1
        decay = 0.0 if s <= 0 else min(self.record["ema_decay"], (1 + s) / (10 + s))
        torch._foreach_lerp_([self.ema[n] for n in names], [p.detach() for p in params], 1.0 - decay)

    def _ema_on(self, device) -> None:
        first = next(iter(self.ema.values()))
        if first.device != device:  # the model moved after the EMA was taken (.to(device) moves parameters, not this dict)
            self.ema = {n: t.to(device) for n, t in self.ema.items()}


@contextmanager
def ema_weights(model: TextToImage):
    """The EMA weights in place of the trained ones for the duration (what is saved for sampling); a no-op without EMA."""
    if model.ema is None:
        yield
        return
    trained = model.trained()
    model._ema_on(trained[0][1].device)
    kept = {name: p.detach().clone() for name, p in trained}
    with torch.no_grad():
        for name, p in trained:
            p.copy_(model.ema[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in trained:
                p.copy_(kept[name])


def is_pipeline_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / "unet").is_dir() and (path / "text_encoder").is_dir()


@contextmanager
def diffusers_errors_unlogged():
    """diffusers logs a failed load ("An error occurred while trying to fetch ...") before raising; aigc turns
    the exception into its one line, so the log line would only say the same thing twice."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _parts(directory: Path):
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel, CLIPTokenizer

    from aigc_cli.backends.gpt import _quiet_transformers

    diffusers_logging.disable_progress_bar()
    _quiet_transformers()
    from aigc_cli.data.image_folders import check_pipeline

    check_pipeline(directory)
    index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    scheduler_class = getattr(__import__("diffusers"), index["scheduler"][1], None)
    if scheduler_class is None or not hasattr(scheduler_class, "from_pretrained"):
        raise AigcError(f"cannot load the pipeline {directory}: model_index.json names the scheduler {index['scheduler'][1]!r}, which diffusers does not have",
                        "name a diffusers scheduler class there (e.g. DDIMScheduler)")
    try:
        with diffusers_errors_unlogged():
            return (UNet2DConditionModel.from_pretrained(directory / "unet"), AutoencoderKL.from_pretrained(directory / "vae"),
                    CLIPTextModel.from_pretrained(directory / "text_encoder"), CLIPTokenizer.from_pretrained(directory / "tokenizer"),
                    scheduler_class.from_pretrained(directory / "scheduler"))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AigcError(f"cannot load the pipeline {directory}: {first}", "check the directory (diffusers save_pretrained layout)") from None


def start(base: str | Path, method: str, lora_cfg, image: dict, t2i_cfg=None) -> TextToImage:
    """The base pipeline ready to fine-tune: LoRA adapters on the UNet (method lora) or the whole UNet trainable (full),
    and the text encoder likewise with t2i_cfg.train_text_encoder. `image` is the prepared data's {size, channels}."""
    base = Path(base).resolve()
    unet, vae, text_encoder, tokenizer, scheduler = _parts(base)
    record = {"base": str(base), "method": method, "size": image["size"], "data_channels": image["channels"],
              "text_encoder": bool(t2i_cfg and t2i_cfg.train_text_encoder), "ema_decay": t2i_cfg.ema_decay if t2i_cfg else 0.0,
              "snr_gamma": t2i_cfg.snr_gamma if t2i_cfg else None}
    if method == "lora":
        adapter = {"r": lora_cfg.r, "alpha": lora_cfg.alpha, "dropout": lora_cfg.dropout}
        record["lora"] = {**adapter, "target_modules": lora_cfg.target_modules or DEFAULT_TARGETS}
        if record["text_encoder"]:
            record["text_encoder_lora"] = {**adapter, "target_modules": TEXT_ENCODER_TARGETS}
    _make_trainable(unet, text_encoder, record)
    model = TextToImage(unet, vae, text_encoder, tokenizer, scheduler, record)
    _check_size(model, image["size"])
    if record["ema_decay"]:
        model.start_ema()
    return model


def _make_trainable(unet, text_encoder, record: dict) -> None:
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if record["method"] == "lora":
        _add_adapter(unet, record["lora"], "UNet", "finetune.lora.target_modules to module names of the UNet (e.g. to_q, to_k, to_v, to_out.0)")
        if record.get("text_encoder"):
            _add_adapter(text_encoder, record["text_encoder_lora"], "text encoder", "use a CLIP text encoder (q_proj, k_proj, v_proj, out_proj)")
    else:
        unet.requires_grad_(True)
        text_encoder.requires_grad_(bool(record.get("text_encoder")))


def _add_adapter(module, lora: dict, what: str, hint: str) -> None:
    """peft LoRA layers injected into `module` (diffusers' ModelMixin.add_adapter does exactly this for the
    UNet; transformers' add_adapter would want a newer peft, so the text encoder gets peft's own call)."""
    from diffusers import ModelMixin
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], init_lora_weights="gaussian",
                        target_modules=lora["target_modules"])
    try:
        if isinstance(module, ModelMixin):  # a diffusers model (the UNet): its own add_adapter
            module.add_adapter(config)
        else:
            inject_adapter_in_model(config, module, adapter_name="default")
    except ValueError as exc:
        raise AigcError(f"cannot add LoRA adapters to the {what}: {exc}", f"set {hint}") from None


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
    return [p for _, p in model.trained()]


def _rgb(model: TextToImage, images: torch.Tensor) -> torch.Tensor:
    wanted = model.vae.config.in_channels
    return images.expand(-1, wanted, -1, -1) if images.size(1) == 1 and wanted != 1 else images


def loss(model: TextToImage, batch, part: str) -> torch.Tensor:
    """The latent-diffusion MSE (min-SNR weighted with record["snr_gamma"]). A DreamBooth batch with
    prior preservation is ((images, is_class), ids): instance loss + prior_loss_weight × class loss."""
    images, ids = batch
    is_class = None
    if isinstance(images, (tuple, list)):
        images, is_class = images
    prediction, target, steps = predict_noise(model, images, ids)
    if is_class is None or not bool(is_class.any()):
        return weighted_mse(model, prediction, target, steps)
    own = ~is_class
    prior = F.mse_loss(prediction[is_class].float(), target[is_class].float())
    return weighted_mse(model, prediction[own], target[own], steps[own]) + model.record.get("prior_loss_weight", 1.0) * prior


def predict_noise(model: TextToImage, images: torch.Tensor, ids: torch.Tensor):
    """(the UNet's prediction, its target, the timesteps) for one batch: train_text_to_image.py's step."""
    with torch.no_grad():
        latents = model.vae.encode(_rgb(model, images).to(model.vae.dtype)).latent_dist.sample() * model.vae.config.scaling_factor
    with torch.set_grad_enabled(torch.is_grad_enabled() and bool(model.record.get("text_encoder"))):
        hidden = model.text_encoder(ids, return_dict=False)[0]
    noise = torch.randn_like(latents)
    sched = model.noise_scheduler
    steps = torch.randint(0, sched.config.num_train_timesteps, (latents.size(0),), device=latents.device)
    noisy = sched.add_noise(latents, noise, steps)
    prediction = model.unet(noisy, steps, hidden, return_dict=False)[0]
    target = sched.get_velocity(latents, noise, steps) if sched.config.prediction_type == "v_prediction" else noise
    return prediction, target, steps


def weighted_mse(model: TextToImage, prediction: torch.Tensor, target: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    gamma = model.record.get("snr_gamma")
    if gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=list(range(1, prediction.dim())))
    return (per_example * snr_weights(model.noise_scheduler, steps, gamma)).mean()


def snr_weights(scheduler, steps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weights (Hang et al. 2023) as train_text_to_image.py computes them: min(SNR, γ)/SNR for
    epsilon prediction, min(SNR, γ)/(SNR + 1) for v; SNR(t) = ᾱ_t / (1 - ᾱ_t)."""
    alphas = scheduler.alphas_cumprod.to(steps.device)[steps].float()
    snr = alphas / (1.0 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def after_step(model: TextToImage) -> None:
    if model.ema is not None:
        model.update_ema()


def save(model: TextToImage, directory: Path) -> None:
    """The sampling weights (the EMA where there is one) as diffusers writes them; with EMA the raw trained
    weights beside them (TRAINING_WEIGHTS), so --resume continues both."""
    directory = Path(directory)
    with ema_weights(model):
        if model.record["method"] == "lora":
            _save_lora(model, directory)
        else:
            _pipeline(model).save_pretrained(directory)
    if model.ema is not None:
        from safetensors.torch import save_file

        (directory / TRAINING_WEIGHTS).parent.mkdir(exist_ok=True)
        save_file({name: p.detach().contiguous() for name, p in model.trained()}, str(directory / TRAINING_WEIGHTS))
    record = {**model.record, "ema_updates": model.ema_updates, "base_relative": os.path.relpath(model.record["base"], directory.resolve())}
    (directory / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _save_lora(model: TextToImage, directory: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(model.unet))}
    if model.record.get("text_encoder"):
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(model.text_encoder))
    StableDiffusionPipeline.save_lora_weights(directory, safe_serialization=True, **layers)


def _pipeline(model: TextToImage):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   scheduler=model.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def merge_pipeline(checkpoint: Path, directory: Path) -> None:
    """`aigc finetune --merge`: the base pipeline with the checkpoint's LoRA (UNet, and text encoder where
    trained) fused into its weights by diffusers itself (load_lora_weights, fuse_lora, unload_lora_weights),
    written as a whole pipeline directory that StableDiffusionPipeline.from_pretrained loads without peft."""
    from diffusers import StableDiffusionPipeline

    record = json.loads((Path(checkpoint) / RECORD).read_text(encoding="utf-8"))
    if record.get("method") != "lora":
        raise AigcError(f"--merge fuses LoRA weights; {checkpoint} is a full fine-tune, already a whole pipeline", f"use {checkpoint}")
    with diffusers_errors_unlogged():
        pipe = StableDiffusionPipeline.from_pretrained(_base_dir(Path(checkpoint), record), safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(checkpoint)
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()  # the fused weights stay; the peft layers (and the adapter) go
    pipe.save_pretrained(directory)


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
    updates = record.pop("ema_updates", 0)
    if record["method"] != "lora":
        unet, vae, text_encoder, tokenizer, scheduler = _parts(directory)
        _make_trainable(unet, text_encoder, record)
    else:
        base = _base_dir(directory, record)
        unet, vae, text_encoder, tokenizer, scheduler = _parts(base)
        record["base"] = str(base)
        _make_trainable(unet, text_encoder, record)
        _load_lora(directory, unet, text_encoder, record, base)
    model = TextToImage(unet, vae, text_encoder, tokenizer, scheduler, record)
    if trainable and record.get("ema_decay"):  # the files hold the EMA; the raw weights are beside them
        from safetensors.torch import load_file

        model.start_ema()
        model.ema_updates = updates
        raw = load_file(str(directory / TRAINING_WEIGHTS))
        with torch.no_grad():
            for name, p in model.trained():
                p.copy_(raw[name])
    if not trainable:
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
    return model.to(device)


def _load_lora(directory: Path, unet, text_encoder, record: dict, base: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(directory, weight_name=LORA_WEIGHTS)
    part = lambda prefix: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    results = [set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(part("unet.")), adapter_name="default")]
    if record.get("text_encoder"):  # as diffusers' training scripts load it back (training_utils._set_state_dict_into_text_encoder)
        te_state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part("text_encoder.")))
        results.append(set_peft_model_state_dict(text_encoder, te_state, adapter_name="default"))
    if any(getattr(result, "unexpected_keys", None) for result in results):
        raise AigcError(f"the LoRA weights in {directory} do not fit the base pipeline {base}", "use the base the adapter was trained on")


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
    """The ImageBackend contract (training's sample grids): images of the empty prompt, unconditioned; with
    an EMA, of the EMA weights (what the checkpoint will hold)."""
    with ema_weights(model):
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

"""A diffusers pipeline for the DDPM checkpoints of aigc, class-conditional or not.

Copied into every `aigc train` DDPM checkpoint (it imports diffusers and torch only), so the
checkpoint samples in plain diffusers:

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(ckpt, custom_pipeline=f"{ckpt}/aigc_ddpm_pipeline.py",
                                             trust_remote_code=True)  # this file: read it first
    images = pipe(class_labels=[3, 3, 7], num_inference_steps=100).images   # a class-conditional model
    images = pipe(batch_size=4).images                                      # an unconditional one

It is diffusers' own DDPMPipeline plus the class labels a conditional UNet needs (DDPMPipeline
cannot pass them). `DDPMPipeline.from_pretrained(ckpt)` still loads and samples unconditional
checkpoints.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class AigcDDPMPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels=None, generator=None, num_inference_steps: int = 1000,
                 output_type: str = "pil", return_dict: bool = True):
        labels = None
        if self.unet.config.num_class_embeds is not None:
            if class_labels is None:
                raise ValueError(f"this DDPM is class-conditional ({self.unet.config.num_class_embeds} classes): pass class_labels, one per image")
            labels = torch.as_tensor(class_labels, device=self.device, dtype=torch.long).reshape(-1)
            batch_size = len(labels)
        elif class_labels is not None:
            raise ValueError("this DDPM is unconditional: leave class_labels out")
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        image = randn_tensor((batch_size, self.unet.config.in_channels, *size), generator=generator, device=self.device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            prediction = self.unet(image, t, class_labels=labels).sample
            image = self.scheduler.step(prediction, t, image, generator=generator).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)

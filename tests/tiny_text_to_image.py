"""A tiny Stable-Diffusion-style pipeline saved locally, built as diffusers' own tests build one
(UNet2DConditionModel with block_out_channels=(4, 8), a tiny AutoencoderKL, a tiny CLIPTextModel)
with a CLIPTokenizer whose vocab and merges are written here: nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from aigc_cli.data.clip_vocabulary import bytes_to_unicode

WORDS = ("a", "thin", "bold", "inverted", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_clip_tokenizer(directory: Path) -> None:
    """A byte-level CLIP BPE vocabulary: every byte (alone and word-final), merges spelling the
    digit captions' words, and the start/end tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            merges.append(f"{pieces[0]} {pieces[1]}")
            if merged not in vocab:
                vocab.append(merged)
            pieces = [merged] + pieces[2:]
    merges = list(dict.fromkeys(merges))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def tiny_text_to_image_pipeline(directory: Path, seed: int = 0, unet_channels: tuple[int, ...] = (4, 8), layers_per_block: int = 1,
                                cross_attention_levels: tuple[int, ...] = (1,), vae_channels: tuple[int, ...] = (4, 8),
                                norm_num_groups: int = 2) -> Path:
    """diffusers' test pipeline by default; the keyword arguments make a larger one of the same shape
    (the benchmark's): UNet channels per level, cross-attention at the named levels (0 is the top)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    levels = range(len(unet_channels))
    unet = UNet2DConditionModel(block_out_channels=tuple(unet_channels), layers_per_block=layers_per_block, sample_size=32, in_channels=4,
                                out_channels=4, cross_attention_dim=32, norm_num_groups=norm_num_groups,
                                down_block_types=tuple("CrossAttnDownBlock2D" if i in cross_attention_levels else "DownBlock2D" for i in levels),
                                up_block_types=tuple("CrossAttnUpBlock2D" if i in cross_attention_levels else "UpBlock2D" for i in reversed(levels)))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    vae = AutoencoderKL(block_out_channels=list(vae_channels), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(vae_channels),
                        up_block_types=["UpDecoderBlock2D"] * len(vae_channels), latent_channels=4, norm_num_groups=2)
    write_clip_tokenizer(directory / "_tok")
    tokenizer = CLIPTokenizer(str(directory / "_tok" / "vocab.json"), str(directory / "_tok" / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                                                num_hidden_layers=2, pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer),
                                                max_position_embeddings=16))
    pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory)
    shutil.rmtree(directory / "_tok")
    return directory

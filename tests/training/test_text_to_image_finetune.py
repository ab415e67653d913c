"""`aigc finetune` on a tiny Stable-Diffusion-style pipeline saved locally: LoRA on the UNet (the
weights diffusers' load_lora_weights loads), full fine-tuning, resume; captioned digits as data."""

import json
import os

import numpy as np
import pytest
import torch
import yaml

from aigc_cli.config import load_config
from aigc_cli.training.finetune import finetune_model
from tests.tiny_text_to_image import tiny_text_to_image_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_text_to_image_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-sd")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from aigc_cli.data.images import prepare_images

    out = tmp_path_factory.mktemp("prep") / "digits"
    cfg = load_config(_write(tmp_path_factory.mktemp("cfg"), out, None, "unused"))
    prepare_images(cfg, log=lambda m: None)
    return out


def _write(directory, prep, base, out, **train):
    raw = {"data": {"source": "digits", "prepared_dir": str(prep), "image": {"size": 16, "channels": 1, "captions": True}},
           "finetune": {"base": str(base) if base else None, "method": "lora", "lora": {"r": 4, "alpha": 4, "dropout": 0.0}},
           "train": {"out_dir": str(out), "max_steps": 30, "batch_size": 16, "learning_rate": 5e-3, "warmup_steps": 0,
                     "eval_every": 1000, "eval_batches": 8, "log_every": 5, "sample_every_eval": False, **train},
           "generate": {"images": {"num_inference_steps": 3}}}
    path = directory / "t2i.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_trains_and_loads_unchanged_in_diffusers(tmp_path, pipeline_dir, prepared):
    from diffusers import StableDiffusionPipeline

    result = finetune_model(load_config(_write(tmp_path, prepared, pipeline_dir, tmp_path / "run", max_steps=15, learning_rate=1e-2)), quiet=True)
    vals = [row["val_loss"] for row in _metrics(tmp_path / "run") if "val_loss" in row]
    assert vals[-1] < vals[0]  # same fixed validation batches and noise at both ends
    assert 0 < result.trainable_params < result.total_params / 10
    weights = result.checkpoint / "pytorch_lora_weights.safetensors"
    assert weights.is_file()

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe("a bold seven", num_inference_steps=3, height=16, width=16, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images
    before = run()
    pipe.load_lora_weights(result.checkpoint)
    after = run()
    assert np.abs(after - before).max() > 1e-3

    # aigc's own sampler on the loaded checkpoint: the same images as diffusers' pipeline with its LoRA.
    from aigc_cli.backends import text_to_image
    from aigc_cli.config import ImageGenerateConfig

    model = text_to_image.load(result.checkpoint, "cpu").eval()
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ours = text_to_image.sample_prompts(model, latents, ["a bold seven"], ImageGenerateConfig(num_inference_steps=3),
                                        [torch.Generator().manual_seed(2)])
    theirs = pipe("a bold seven", num_inference_steps=3, height=16, width=16, output_type="pt", latents=latents.clone()).images
    assert torch.allclose((ours / 2 + 0.5).clamp(0, 1), theirs, atol=1e-4)


def test_resume_continues_the_same_run(tmp_path, pipeline_dir, prepared):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # lr_decay_steps fixed: the learning-rate schedule must not depend on where the first leg stopped.
    straight = finetune_model(load_config(_write(tmp_path / "a", prepared, pipeline_dir, tmp_path / "a" / "run", max_steps=6, lr_decay_steps=6)), quiet=True)
    cfg_b = _write(tmp_path / "b", prepared, pipeline_dir, tmp_path / "b" / "run", max_steps=3, lr_decay_steps=6)
    finetune_model(load_config(cfg_b), quiet=True)
    resumed = finetune_model(load_config(cfg_b, ["train.max_steps=6"]), resume=True, quiet=True)
    from safetensors.torch import load_file

    a = load_file(straight.checkpoint / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.checkpoint / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_finetune_writes_a_pipeline(tmp_path, pipeline_dir, prepared):
    from diffusers import StableDiffusionPipeline

    cfg = load_config(_write(tmp_path, prepared, pipeline_dir, tmp_path / "run", max_steps=3), ["finetune.method=full"])
    result = finetune_model(cfg, quiet=True)
    pipe = StableDiffusionPipeline.from_pretrained(result.checkpoint)
    base = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    changed = [n for n, p in pipe.unet.named_parameters() if not torch.equal(p, dict(base.unet.named_parameters())[n])]
    assert changed and result.trainable_params == sum(p.numel() for p in base.unet.parameters())

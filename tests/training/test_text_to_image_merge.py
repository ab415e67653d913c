"""`aigc finetune --merge` on a text-to-image LoRA run: merged/ is a whole pipeline directory with the
LoRA fused, and StableDiffusionPipeline.from_pretrained(merged) draws what the base with
load_lora_weights draws (within 1e-4), without peft layers."""

import os

import numpy as np
import torch
import yaml
from PIL import Image

from tests.tiny_text_to_image import tiny_text_to_image_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_merge_writes_a_pipeline_that_draws_as_base_plus_lora(cli, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe_dir = tiny_text_to_image_pipeline(tmp_path / "pipe")
    (tmp_path / "inst").mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 + 90 * i, np.uint8)).save(tmp_path / "inst" / f"{i}.png")
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "finetune": {"base": str(pipe_dir), "method": "lora", "lora": {"r": 2, "alpha": 2, "dropout": 0.0},
                     "text_to_image": {"train_text_encoder": True,
                                       "dreambooth": {"instance_prompt": "a sks one", "instance_dir": str(tmp_path / "inst")}}},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 2, "learning_rate": 5e-2, "warmup_steps": 0,
                  "eval_every": 1000, "eval_batches": 1, "log_every": 1, "sample_every_eval": False, "precision": "fp32"}}))
    result = cli("finetune", config, "--merge", "--json")
    assert result.exit_code == 0, result.stderr
    merged = tmp_path / "run" / "merged"
    assert (merged / "model_index.json").is_file() and (merged / "unet").is_dir()
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]

    def draw(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a sks one", num_inference_steps=3, height=16, width=16, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    base = StableDiffusionPipeline.from_pretrained(pipe_dir)
    plain = draw(base)
    base.load_lora_weights(checkpoint)
    with_lora = draw(base)
    fused = StableDiffusionPipeline.from_pretrained(merged)
    assert not any("lora" in name for name, _ in fused.unet.named_modules())  # plain weights, no peft layers
    assert np.abs(with_lora - plain).max() > 1e-3  # the LoRA changes the image, so the comparison below means something
    assert np.abs(draw(fused) - with_lora).max() < 1e-4


def test_merge_of_a_full_finetune_is_refused_before_training(cli, tmp_path):
    config = tmp_path / "full.yaml"
    (tmp_path / "inst").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "inst" / "0.png")
    config.write_text(yaml.safe_dump({
        "finetune": {"base": str(tiny_text_to_image_pipeline(tmp_path / "pipe")), "method": "full",
                     "text_to_image": {"dreambooth": {"instance_prompt": "a sks one", "instance_dir": str(tmp_path / "inst")}}},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 1, "sample_every_eval": False}}))
    result = cli("finetune", config, "--merge")
    assert result.exit_code == 2 and "already a whole pipeline" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()

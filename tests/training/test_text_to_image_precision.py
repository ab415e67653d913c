"""`train.precision: bf16` on a text-to-image LoRA fine-tune: the steps run under bf16 autocast, the loss
is finite, and the saved LoRA loads into diffusers' StableDiffusionPipeline (fp32 weights, as in fp32)."""

import json
import os

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from tests.tiny_text_to_image import tiny_text_to_image_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_bf16_lora_finetune_saves_a_loadable_lora(cli, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe_dir = tiny_text_to_image_pipeline(tmp_path / "pipe")
    (tmp_path / "inst").mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 + 90 * i, np.uint8)).save(tmp_path / "inst" / f"{i}.png")
    config = tmp_path / "bf16.yaml"
    config.write_text(yaml.safe_dump({
        "finetune": {"base": str(pipe_dir), "method": "lora", "lora": {"r": 2, "alpha": 2, "dropout": 0.0},
                     "text_to_image": {"dreambooth": {"instance_prompt": "a sks one", "instance_dir": str(tmp_path / "inst")}}},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "warmup_steps": 0,
                  "eval_every": 1000, "eval_batches": 1, "log_every": 1, "sample_every_eval": False, "precision": "bf16"}}))
    result = cli("finetune", config)
    assert result.exit_code == 0, result.stderr
    assert "bf16" in result.stderr  # the run says what it trained in
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in rows if "train_loss" in r) and any("train_loss" in r for r in rows)
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    weights = load_file(str(checkpoint / "pytorch_lora_weights.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    assert any(t.abs().max() > 0 for k, t in weights.items() if "lora_B" in k or "lora.up" in k)  # the steps moved the adapters

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe("a sks one", num_inference_steps=2, height=16, width=16, output_type="np",  # noqa: E731
                       generator=torch.Generator().manual_seed(0)).images
    before = run()
    pipe.load_lora_weights(checkpoint)
    after = run()
    assert np.isfinite(after).all() and np.abs(after - before).max() > 0

"""finetune.text_to_image on a tiny local pipeline: LoRA on the text encoder too (diffusers'
load_lora_weights loads both), min-SNR loss weighting (against diffusers' compute_snr), and an EMA
of the trained weights (against diffusers' EMAModel; the checkpoint's sampling weights, resumed exactly)."""

import os

import numpy as np
import torch
from safetensors.torch import load_file

from aigc_cli.config import ImageGenerateConfig, LoraConfig, TextToImageFinetuneConfig, load_config
from aigc_cli.training.finetune import finetune_model
from tests.training.test_text_to_image_finetune import _write, pipeline_dir, prepared  # noqa: F401 (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
IMAGE = {"size": 16, "channels": 1}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((4, 1, 16, 16), generator=g) * 2 - 1, torch.randint(0, 100, (4, 16), generator=g)


def test_text_encoder_lora_loads_in_diffusers_with_the_unet_lora(tmp_path, pipeline_dir, prepared):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    from aigc_cli.backends import text_to_image

    cfg = load_config(_write(tmp_path, prepared, pipeline_dir, tmp_path / "run", max_steps=4, learning_rate=2e-2),
                      ["finetune.text_to_image.train_text_encoder=true", "train.eval_batches=1", "train.batch_size=4"])
    result = finetune_model(cfg, quiet=True)
    saved = load_file(result.checkpoint / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("unet.") for k in saved) and any(k.startswith("text_encoder.") for k in saved)
    assert {k.split(".")[-4] for k in saved if k.startswith("text_encoder.")} == {"q_proj", "k_proj", "v_proj", "out_proj"}

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    ids = pipe.tokenizer(["a bold seven"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    hidden_before = pipe.text_encoder(ids)[0]
    pipe.load_lora_weights(result.checkpoint)
    assert (pipe.text_encoder(ids)[0] - hidden_before).abs().max() > 1e-4  # the text encoder's adapters were loaded

    model = text_to_image.load(result.checkpoint, "cpu").eval()
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ours = text_to_image.sample_prompts(model, latents, ["a bold seven"], ImageGenerateConfig(num_inference_steps=3),
                                        [torch.Generator().manual_seed(2)])
    theirs = pipe("a bold seven", num_inference_steps=3, height=16, width=16, output_type="pt", latents=latents.clone()).images
    assert torch.allclose((ours / 2 + 0.5).clamp(0, 1), theirs, atol=1e-4)


def test_min_snr_loss_is_diffusers_weighting(tmp_path, pipeline_dir):  # noqa: F811
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    from aigc_cli.backends import text_to_image

    model = text_to_image.start(pipeline_dir, "lora", LoraConfig(r=2, dropout=0.0), IMAGE, TextToImageFinetuneConfig(snr_gamma=0.1))
    for prediction_type in ("epsilon", "v_prediction"):
        model.noise_scheduler.register_to_config(prediction_type=prediction_type)
        images, ids = _batch()
        torch.manual_seed(3)
        ours = text_to_image.loss(model, (images, ids), "unet")
        torch.manual_seed(3)  # the same noise and timesteps again
        pred, target, steps = text_to_image.predict_noise(model, images, ids)
        # train_text_to_image.py's lines, verbatim in substance
        snr = compute_snr(model.noise_scheduler, steps)
        weights = torch.stack([snr, 0.1 * torch.ones_like(steps)], dim=1).min(dim=1)[0]
        weights = weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
        theirs = (F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3]) * weights).mean()
        plain = F.mse_loss(pred.float(), target.float())
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=0), (prediction_type, ours, theirs)
        assert not torch.allclose(ours, plain, rtol=1e-3)  # the weighting did something


def test_ema_is_diffusers_ema_model(pipeline_dir):  # noqa: F811
    from diffusers.training_utils import EMAModel

    from aigc_cli.backends import text_to_image

    model = text_to_image.start(pipeline_dir, "lora", LoraConfig(r=2, dropout=0.0), IMAGE,
                                TextToImageFinetuneConfig(ema_decay=0.9, train_text_encoder=True))
    params = text_to_image.parameters(model, "unet")
    reference = EMAModel(params, decay=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        text_to_image.after_step(model)
        reference.step(params)
    ours = [model.ema[name] for name, _ in model.trained()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, reference.shadow_params))
    assert not all(torch.allclose(a, p, atol=1e-3) for a, p in zip(ours, params))  # an average, not a copy


def test_ema_checkpoint_samples_with_the_ema_and_resumes_exactly(tmp_path, pipeline_dir, prepared):  # noqa: F811
    from aigc_cli.backends import text_to_image

    extra = ["finetune.text_to_image.ema_decay=0.8", "finetune.text_to_image.snr_gamma=5", "train.lr_decay_steps=6", "train.eval_batches=1",
             "train.batch_size=4"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = finetune_model(load_config(_write(tmp_path / "a", prepared, pipeline_dir, tmp_path / "a" / "run", max_steps=6), extra), quiet=True)
    cfg_b = _write(tmp_path / "b", prepared, pipeline_dir, tmp_path / "b" / "run", max_steps=3)
    finetune_model(load_config(cfg_b, extra), quiet=True)
    resumed = finetune_model(load_config(cfg_b, extra + ["train.max_steps=6"]), resume=True, quiet=True)
    for name in ("pytorch_lora_weights.safetensors", "training/raw_weights.safetensors"):
        a, b = load_file(straight.checkpoint / name), load_file(resumed.checkpoint / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    trained = text_to_image.load(straight.checkpoint, "cpu", trainable=True)
    sampling = text_to_image.load(straight.checkpoint, "cpu")
    assert trained.ema_updates == 6
    ema = dict(trained.ema)
    raw = dict(trained.trained())
    loaded = dict((f"unet.{n}", p) for n, p in sampling.unet.named_parameters() if "lora" in n)
    assert loaded.keys() == ema.keys()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)  # what samples is the EMA ...
    assert any(not torch.allclose(raw[k], ema[k]) for k in ema)  # ... not the last trained weights
    assert np.isfinite([float(v.abs().sum()) for v in ema.values()]).all()
    from aigc_cli.runs.inspection import count_parameters

    assert count_parameters(straight.checkpoint) == sum(v.numel() for v in ema.values())  # `aigc info` counts the weights once


def test_full_finetune_of_unet_and_text_encoder_writes_both(tmp_path, pipeline_dir, prepared):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    cfg = load_config(_write(tmp_path, prepared, pipeline_dir, tmp_path / "run", max_steps=2),
                      ["finetune.method=full", "finetune.text_to_image.train_text_encoder=true", "train.eval_batches=1", "train.batch_size=4"])
    result = finetune_model(cfg, quiet=True)
    pipe, base = StableDiffusionPipeline.from_pretrained(result.checkpoint), StableDiffusionPipeline.from_pretrained(pipeline_dir)
    for part in ("unet", "text_encoder"):
        before = dict(getattr(base, part).named_parameters())
        assert any(not torch.equal(p, before[n]) for n, p in getattr(pipe, part).named_parameters()), part
    assert result.trainable_params == sum(p.numel() for m in (base.unet, base.text_encoder) for p in m.parameters())


def test_resume_with_changed_settings_is_refused(tmp_path, pipeline_dir, prepared):  # noqa: F811
    import pytest

    from aigc_cli.errors import AigcError

    path = _write(tmp_path, prepared, pipeline_dir, tmp_path / "run", max_steps=1)
    finetune_model(load_config(path, ["train.eval_batches=1", "train.batch_size=2"]), quiet=True)
    with pytest.raises(AigcError, match="snr_gamma None"):
        finetune_model(load_config(path, ["train.eval_batches=1", "train.batch_size=2", "train.max_steps=2",
                                          "finetune.text_to_image.snr_gamma=5"]), resume=True, quiet=True)

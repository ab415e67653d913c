"""`aigc train` with model.backend=latent-diffusion on the built-in captioned digits (8×8, tiny
sizes): both phases through the one loop, exact resume (in phase 2, and after a kill in phase 1),
model.autoencoder skipping phase 1, the checkpoint loading in diffusers' StableDiffusionPipeline and
sampling as aigc does, `aigc generate --prompt` and `aigc eval` (loss, adherence) on it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aigc_cli.config import load_config
from aigc_cli.training import train_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
MODEL = {"backend": "latent-diffusion", "autoencoder_channels": [8, 16], "latent_channels": 2, "autoencoder_steps": 4,
         "autoencoder_learning_rate": 1e-2, "unet_channels": [16, 32], "attention_levels": [1], "norm_num_groups": 4,
         "attention_head_dim": 8, "text_width": 16, "text_heads": 2, "text_layers": 1, "max_prompt_tokens": 12,
         "num_train_timesteps": 50}


def _write(directory: Path, prep: Path, out: Path, model=None, **train) -> Path:
    raw = {"data": {"source": "digits", "prepared_dir": str(prep), "image": {"size": 8, "channels": 1, "captions": True, "caption_dropout": 0.2}},
           "model": {**MODEL, **(model or {})},
           "train": {"out_dir": str(out), "max_steps": 6, "batch_size": 16, "learning_rate": 5e-3, "warmup_steps": 0, "lr_decay_steps": 6,
                     "eval_every": 3, "eval_batches": 2, "log_every": 1, "save_every": 2, "sample_every_eval": False, **train},
           "generate": {"images": {"num_inference_steps": 3, "batch_size": 4}},
           "eval": {"metrics": ["loss", "adherence"], "num_samples": 8, "batch_size": 64}}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ldm.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from aigc_cli.data.images import prepare_images

    root = tmp_path_factory.mktemp("ldm-prep")
    prepare_images(load_config(_write(root, root / "digits", root / "unused")), log=lambda m: None)
    return root / "digits"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared):
    root = tmp_path_factory.mktemp("ldm-run")
    config = _write(root, prepared, root / "run")
    return config, train_model(load_config(config), quiet=True)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part in ("vae", "unet", "text_encoder")
            for k, v in load_file(next((checkpoint / part).glob("*.safetensors"))).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_both_phases_train_in_one_run(trained):
    config, result = trained
    run_dir = result.run_dir
    phase_one = _rows(run_dir / "autoencoder")
    assert [r["step"] for r in phase_one if "train_loss" in r] == [1, 2, 3, 4] and "reconstruction_mse" in phase_one[1]
    phase_two = _rows(run_dir)
    assert [r["step"] for r in phase_two if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert result.checkpoint == run_dir / "checkpoints" / "step-000006" and result.steps == 6
    record = json.loads((result.checkpoint / "aigc_latent_diffusion.json").read_text())
    vae_config = json.loads((result.checkpoint / "vae" / "config.json").read_text())
    assert record["latent_scale_measured"] and vae_config["scaling_factor"] == pytest.approx(record["latent_scale"]) != 1.0
    # Phase 2 froze the autoencoder phase 1 trained, and trained the UNet and the text encoder.
    first = _weights(run_dir / "autoencoder" / "checkpoints" / "step-000004")
    last = _weights(result.checkpoint)
    assert all(torch.equal(first[k], last[k]) for k in first if k.startswith("vae."))
    for part in ("unet.", "text_encoder."):
        assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith(part)), part
    tokens = json.loads((result.checkpoint / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"seven</w>", "inverted</w>", "bold</w>"} <= set(tokens)  # the captions' words, built offline


def test_resume_equals_the_straight_run(tmp_path, trained, prepared):
    _, straight = trained
    # Stopped in phase 2 after 3 of 6 steps, then resumed.
    cfg = _write(tmp_path / "a", prepared, tmp_path / "a" / "run", max_steps=3)
    train_model(load_config(cfg), quiet=True)
    resumed = train_model(load_config(cfg, ["train.max_steps=6"]), resume=True, quiet=True)
    assert _same(_weights(resumed.checkpoint), _weights(straight.checkpoint))
    # Killed in phase 1 after its step-2 checkpoint: what a SIGKILL there leaves on disk.
    run_dir = tmp_path / "b" / "run"
    shutil.copytree(straight.run_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.rmtree(run_dir / "autoencoder" / "checkpoints" / "step-000004")
    again = train_model(load_config(_write(tmp_path / "b", prepared, run_dir)), resume=True, quiet=True)
    assert _same(_weights(again.checkpoint), _weights(straight.checkpoint))


def test_a_trained_autoencoder_skips_phase_one(tmp_path, trained, prepared):
    _, straight = trained
    autoencoder = straight.run_dir / "autoencoder"
    result = train_model(load_config(_write(tmp_path, prepared, tmp_path / "run", model={"autoencoder": str(autoencoder)}, max_steps=2)), quiet=True)
    assert not (tmp_path / "run" / "autoencoder").exists()
    ours, theirs = _weights(result.checkpoint), _weights(autoencoder / "checkpoints" / "step-000004")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.startswith("vae."))


def test_the_checkpoint_is_a_stable_diffusion_pipeline(trained):
    from diffusers import StableDiffusionPipeline

    from aigc_cli.backends import latent_diffusion
    from aigc_cli.config import ImageGenerateConfig

    _, result = trained
    pipe = StableDiffusionPipeline.from_pretrained(result.checkpoint, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    model = latent_diffusion.load(result.checkpoint, "cpu").eval()
    latents = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    prompts = ["a bold seven", "a thin zero, inverted"]
    gc = ImageGenerateConfig(num_inference_steps=3, guidance_scale=2.5)
    ours = latent_diffusion.sample_prompts(model, latents, prompts, gc, [torch.Generator().manual_seed(2)] * 2)
    theirs = pipe(prompts, num_inference_steps=3, guidance_scale=2.5, height=8, width=8, output_type="pt", latents=latents.clone()).images
    assert theirs.shape == (2, 1, 8, 8)
    assert torch.allclose((ours / 2 + 0.5).clamp(0, 1), theirs, atol=1e-4)


def test_generate_and_eval_on_the_run(tmp_path, trained, cli):
    from aigc_cli.generation.images import read_png

    config, result = trained
    out = tmp_path / "images"
    generated = cli("generate", config, "--prompt", "a bold seven", "--prompt", "a zero, inverted", "--num", "2", "--out", out)
    assert generated.exit_code == 0, generated.stderr
    assert sorted(p.name for p in out.glob("p*.png")) == ["p000_000.png", "p000_001.png", "p001_000.png", "p001_001.png"]
    assert read_png(out / "p000_000.png").shape == (1, 8, 8)
    assert json.loads((out / "samples.json").read_text())["backend"] == "latent-diffusion"
    report = cli("eval", config, "--json")
    assert report.exit_code == 0, report.stderr
    metrics = json.loads(report.stdout)["metrics"]
    assert torch.isfinite(torch.tensor(metrics["loss"])) and 0.0 <= metrics["adherence"] <= 1.0 and 0.0 <= metrics["adherence_inverted"] <= 1.0


@pytest.mark.parametrize("override, message", [
    ("data.image.captions=false", "learns from captions"),
    ("data.image.size=10", "must divide by 4"),
    ("model.norm_num_groups=3", "do not divide by norm_num_groups"),
    ("model.attention_levels=[5]", "attention_levels"),
    ("model.text_width=15", "text_width=15 is not divisible"),
])
def test_config_errors_exit_2_without_torch(tmp_path, override, message):
    config = _write(tmp_path, tmp_path / "prep", tmp_path / "run")
    code = ("import sys\nfrom aigc_cli.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules), file=sys.stderr)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, "train", str(config), override], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "HEAVY=\n" in proc.stderr + "\n" and "Traceback" not in proc.stderr


def test_a_vq_autoencoder_trains_and_samples(tmp_path, prepared):
    from aigc_cli.backends import latent_diffusion
    from aigc_cli.config import ImageGenerateConfig

    config = _write(tmp_path, prepared, tmp_path / "run", model={"autoencoder_kind": "vq", "codebook_size": 16}, max_steps=2)
    result = train_model(load_config(config), quiet=True)
    assert "vq_loss" in _rows(tmp_path / "run" / "autoencoder")[1]
    assert json.loads((result.checkpoint / "vae" / "config.json").read_text())["_class_name"] == "VQModel"
    model = latent_diffusion.load(result.checkpoint, "cpu").eval()
    latents = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    images = latent_diffusion.sample_prompts(model, latents, ["a one", "a two"], ImageGenerateConfig(num_inference_steps=2), [torch.Generator()] * 2)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    real = torch.rand(3, 1, 8, 8) * 2 - 1
    assert latent_diffusion.reconstruct(model, real).shape == real.shape


def test_aigc_train_runs_both_phases_from_the_command_line(tmp_path, prepared, cli):
    config = _write(tmp_path, prepared, tmp_path / "run", model={"autoencoder_steps": 2}, max_steps=2)
    result = cli("train", config, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["checkpoint"].endswith("run/checkpoints/step-000002") and out["steps"] == 2
    assert (tmp_path / "run" / "autoencoder" / "checkpoints" / "step-000002").is_dir()
    again = cli("train", config)  # the run has checkpoints: a second start is refused, --resume is the way
    assert again.exit_code == 2 and "--resume" in again.stderr

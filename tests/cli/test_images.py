"""Image backends through the real CLI on tiny assets: prep (digits, folders, broken files),
train (ddpm, vae, gan), generate (PNG determinism), the DDPM checkpoint in diffusers, eval."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import json_out

TINY_MODELS = {
    "ddpm": {"block_out_channels": [16, 32], "attention_levels": [1], "num_train_timesteps": 100, "ema_decay": 0.9},
    "vae": {"channels": [16, 32], "latent_dim": 8},
    "gan": {"latent_dim": 16, "generator_channels": 16, "discriminator_channels": 16},
}


def image_config(tmp_path: Path, backend: str, source: str = "digits", size: int = 8, **sections) -> Path:
    raw = {
        "data": {"source": source, "image": {"size": size, "channels": 1}, "prepared_dir": str(tmp_path / "prepared"), "val_fraction": 0.1},
        "model": {"backend": backend, **TINY_MODELS[backend]},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 30, "batch_size": 32, "warmup_steps": 2, "learning_rate": 2e-3,
                  "eval_every": 30, "eval_batches": 4, "save_every": 0, "log_every": 10, "device": "cpu"},
        "generate": {"images": {"num_images": 6, "num_inference_steps": 5}},
        "eval": {"metrics": ["loss"], "num_samples": 40, "batch_size": 64},
    }
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict):
                raw.setdefault(section, {}).setdefault(key, {}).update(value)
            else:
                raw.setdefault(section, {})[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{backend}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- prep
def test_prep_digits(cli, tmp_path):
    out = json_out(cli("prep", image_config(tmp_path, "vae", size=16), "--json"))
    assert out["train_images"] + out["val_images"] == 1797 and out["val_images"] > 100
    assert out["classes"] == [str(d) for d in range(10)] and out["skipped"] == 0
    from aigc_cli.data.images import ImageArray

    train = ImageArray(out["data_dir"], "train")
    assert train.images.shape == (out["train_images"], 1, 16, 16) and train.images.dtype == np.uint8
    assert train.labels.shape == (out["train_images"],) and set(train.labels.tolist()) == set(range(10))
    assert train.images.max() == 255 and train.images.min() == 0
    meta = json.loads((Path(out["data_dir"]) / "meta.json").read_text())
    assert len(meta["inputs"][0]["sha256"]) == 64
    # Same inputs and settings: reused, not rewritten.
    assert json_out(cli("prep", image_config(tmp_path, "vae", size=16), "--json"))["reused"] is True


def _write_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls / "nested").mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
            suffix = ".png" if i % 2 else ".jpg"
            target = root / cls / ("nested" if i == 5 else "") / f"{i}{suffix}"
            Image.fromarray(pixels).save(target)
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(root / "cats" / "transparent.png")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_prep_folder_with_classes_and_broken_files(cli, tmp_path):
    root = tmp_path / "pictures"
    _write_folder(root)
    cfg = image_config(tmp_path, "vae", source=str(root), size=8, data={"image": {"channels": 3, "class_folders": True}, "val_fraction": 0.3})
    out = json_out(cli("prep", cfg, "--json"))
    assert out["classes"] == ["cats", "dogs"]
    assert out["skipped"] == 1  # broken.png; notes.txt is not an image file at all
    assert out["train_images"] + out["val_images"] == 13
    from aigc_cli.data.images import ImageArray

    images = np.concatenate([ImageArray(out["data_dir"], s).images for s in ("train", "val")])
    assert images.shape[1:] == (3, 8, 8)
    meta = json.loads((Path(out["data_dir"]) / "meta.json").read_text())
    assert "broken.png" in meta["skipped_examples"][0]
    # A fully transparent pixel is composited on white, not left as the stored red.
    from aigc_cli.data.images import open_image, to_array

    assert to_array(open_image(root / "cats" / "transparent.png"), 8, 3).min() == 255


def test_prep_empty_or_unreadable_is_exit_2(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("prep", image_config(tmp_path / "a", "vae", source=str(empty)))
    assert result.exit_code == 2 and "no image files" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"garbage")
    result = cli("prep", image_config(tmp_path / "b", "vae", source=str(broken)))
    assert result.exit_code == 2 and "no usable images" in result.stderr and "x.png" in result.stderr
    assert not (tmp_path / "b" / "prepared").exists()  # nothing half-written


def test_digits_with_a_text_backend_is_a_config_error(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "digits"}, "model": {"backend": "gpt"}}))
    result = cli("prep", cfg)
    assert result.exit_code == 2 and "image set" in result.stderr


# ----------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    """Digits at 8×8 prepared once for the module (configs point their prepared_dir here)."""
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    root = tmp_path_factory.mktemp("digits8")
    cfg = image_config(root, "vae")
    assert CliRunner().invoke(app, ["prep", str(cfg)]).exit_code == 0
    return root / "prepared"


@pytest.mark.parametrize("backend", ["ddpm", "vae", "gan"])
def test_train_each_image_backend_loss_falls(cli, tmp_path, digits8, backend):
    cfg = image_config(tmp_path, backend, data={"prepared_dir": str(digits8)})
    out = json_out(cli("train", cfg, "--json"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    # ddpm: noise-prediction MSE; vae: negative ELBO; gan: the discriminator's loss (it learns first).
    assert val[-1] < 0.9 * val[0], val
    assert "images_per_s" in out and out["images_per_s"] > 0
    import torch

    state = torch.load(Path(out["checkpoint"]) / "training_state.pt", weights_only=True)
    from aigc_cli.backends import spec

    assert set(state["optimizers"]) == set(spec(backend).parts)  # a GAN: two optimizers, one loop


@pytest.fixture(scope="module")
def trained_ddpm(tmp_path_factory, digits8):
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    root = tmp_path_factory.mktemp("ddpm")
    cfg = image_config(root, "ddpm", data={"prepared_dir": str(digits8)}, model={"class_conditional": False})
    result = CliRunner().invoke(app, ["train", str(cfg), "--json", "train.max_steps=10"])
    assert result.exit_code == 0, result.stderr
    return cfg, json.loads(result.stdout)["checkpoint"]


def test_ddpm_checkpoint_is_a_diffusers_pipeline(trained_ddpm):
    import torch
    from diffusers import DDPMPipeline

    _, checkpoint = trained_ddpm
    pipe = DDPMPipeline.from_pretrained(checkpoint)
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "class-conditional"])
def test_ddpm_checkpoint_samples_in_plain_diffusers(tmp_path, digits8, conditional):
    """Every DDPM checkpoint samples in diffusers with the pipeline it carries; a class-conditional
    one draws the classes asked for (DDPMPipeline cannot pass class labels)."""
    import torch
    from diffusers import DiffusionPipeline
    from typer.testing import CliRunner

    from aigc_cli.cli import app

    cfg = image_config(tmp_path, "ddpm", data={"prepared_dir": str(digits8)}, model={"class_conditional": conditional})
    result = CliRunner().invoke(app, ["train", str(cfg), "--json", "train.max_steps=4"])
    assert result.exit_code == 0, result.stderr
    checkpoint = json.loads(result.stdout)["checkpoint"]
    pipe = DiffusionPipeline.from_pretrained(checkpoint, custom_pipeline=f"{checkpoint}/aigc_ddpm_pipeline.py", trust_remote_code=True)
    generator = torch.Generator().manual_seed(0)
    if conditional:
        images = pipe(class_labels=[0, 3, 9], num_inference_steps=3, generator=generator, output_type="np").images
        with pytest.raises(ValueError, match="class-conditional"):
            pipe(batch_size=2, num_inference_steps=2)
    else:
        images = pipe(batch_size=3, num_inference_steps=3, generator=generator, output_type="np").images
    assert images.shape == (3, 8, 8, 1) and np.isfinite(images).all() and images.std() > 0


def test_generate_same_seed_same_png_bytes(cli, tmp_path, trained_ddpm):
    cfg, checkpoint = trained_ddpm
    runs = [json_out(cli("generate", cfg, "--checkpoint", checkpoint, "--num", "5", "--seed", seed, "--out", tmp_path / name, "--json"))
            for seed, name in (("7", "a"), ("7", "b"), ("8", "c"))]
    a, b, c = runs
    assert len(a["outputs"]) == 5 and a["count"] == 5 and Path(a["grid"]).is_file()
    assert [sha(p) for p in a["outputs"]] == [sha(p) for p in b["outputs"]]
    assert sha(a["grid"]) == sha(b["grid"])
    assert [sha(p) for p in a["outputs"]] != [sha(p) for p in c["outputs"]]
    # Image i does not depend on how many were asked for or the batch size.
    d = json_out(cli("generate", cfg, "--checkpoint", checkpoint, "--num", "2", "--seed", "7", "--out", tmp_path / "d",
                     "generate.images.batch_size=1", "--json"))
    assert [sha(p) for p in d["outputs"]] == [sha(p) for p in a["outputs"][:2]]


def test_generate_ddpm_sampler(cli, tmp_path, trained_ddpm):
    cfg, checkpoint = trained_ddpm
    out = json_out(cli("generate", cfg, "--checkpoint", checkpoint, "--num", "3", "--out", tmp_path / "ddpm",
                       "generate.images.sampler=ddpm", "generate.images.num_inference_steps=4", "--json"))
    assert len(out["outputs"]) == 3
    manifest = json.loads((tmp_path / "ddpm" / "samples.json").read_text())
    assert manifest["params"]["sampler"] == "ddpm" and manifest["seed"] == 1337


def test_vae_reconstructions_and_psnr_ssim(cli, tmp_path, digits8):
    cfg = image_config(tmp_path, "vae", data={"prepared_dir": str(digits8)}, train={"max_steps": 60},
                       generate={"images": {"reconstruct": "val"}}, eval={"metrics": ["loss", "psnr", "ssim"]})
    trained = json_out(cli("train", cfg, "--json"))
    out = json_out(cli("generate", cfg, "--checkpoint", trained["checkpoint"], "--out", tmp_path / "samples", "--json"))
    assert Path(out["reconstruction_grid"]).is_file() and len(out["reconstructions"]) > 100
    report = json_out(cli("eval", cfg, "--checkpoint", trained["checkpoint"], "--json"))
    metrics = report["metrics"]
    assert 10 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1
    assert json.loads(Path(report["report"]).read_text())["reconstructed_images"] > 100


def test_eval_fid_kid_coverage_from_a_folder(cli, tmp_path, digits8):
    """Real held-out digits scored as if generated: FID near the real floor, coverage high."""
    from aigc_cli.data.images import ImageArray
    from aigc_cli.generation.images import save_png

    folder = tmp_path / "fake"
    folder.mkdir()
    for i, pixels in enumerate(ImageArray(digits8, "val").images):
        save_png(np.asarray(pixels), folder / f"{i:05d}.png")
    cfg = image_config(tmp_path, "gan", data={"prepared_dir": str(digits8)},
                       eval={"metrics": ["fid", "kid", "coverage"], "generations": str(folder)})
    report = json_out(cli("eval", cfg, "--json", "--fail-above", "fid=1", "--fail-under", "confident_share=0.5"))
    metrics = report["metrics"]
    fid_row = [line for line in Path(report["markdown"]).read_text().splitlines() if line.startswith("| fid |")]
    assert report["gates"]["passed"] and fid_row[0].endswith("| ≤ 1.0000 ok |")  # the text metrics' report format
    assert abs(metrics["fid"]) < 1e-3  # the same images as the held-out set
    assert metrics["fid_real_floor"] > metrics["fid"]
    # KID against a set of zeros only, in the same (cached) classifier space: far larger.
    from aigc_cli.evaluation import image_metrics

    train = ImageArray(digits8, "train")
    classifier, _ = image_metrics.cached_classifier(digits8, np.asarray(train.images), train.labels, 10)
    zeros = np.asarray(train.images)[train.labels == 0]
    real = np.asarray(ImageArray(digits8, "val").images)
    skewed, _ = image_metrics.kid(real, zeros, image_metrics.classifier_features(classifier))
    assert abs(metrics["kid"]) < 0.1 * skewed
    assert metrics["confident_share"] > 0.5 and metrics["min_class_share"] > 0.03
    details = json.loads(Path(report["report"]).read_text())
    assert details["feature_space"].startswith("classifier")


def test_text_flags_on_an_image_model_are_rejected(cli, tmp_path, trained_ddpm):
    cfg, checkpoint = trained_ddpm
    result = cli("generate", cfg, "--checkpoint", checkpoint, "--prompt", "hello")
    assert result.exit_code == 2 and "--num" in result.stderr


@pytest.mark.parametrize("backend", ["ddpm", "gan"])
def test_resume_matches_an_uninterrupted_run(cli, tmp_path, digits8, backend):
    """Killed after step 10 and resumed: the same weights as 20 steps in one go (EMA and both GAN optimizers included)."""
    from safetensors.torch import load_file

    def weights(checkpoint: str) -> dict:
        files = sorted(Path(checkpoint).rglob("*.safetensors"))
        assert files
        return {f"{f.relative_to(checkpoint)}:{k}": v for f in files for k, v in load_file(str(f)).items()}

    whole = image_config(tmp_path / "whole", backend, data={"prepared_dir": str(digits8)}, train={"max_steps": 20, "save_every": 10, "lr_decay_steps": 20})
    split = image_config(tmp_path / "split", backend, data={"prepared_dir": str(digits8)}, train={"max_steps": 20, "save_every": 10, "lr_decay_steps": 20})
    a = json_out(cli("train", whole, "--json"))
    json_out(cli("train", split, "train.max_steps=10", "--json"))
    b = json_out(cli("train", split, "--resume", "--json"))
    wa, wb = weights(a["checkpoint"]), weights(b["checkpoint"])
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch_equal(wa[key], wb[key]), key


def torch_equal(x, y) -> bool:
    import torch

    return torch.equal(x, y)

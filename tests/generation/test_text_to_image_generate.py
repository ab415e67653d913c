"""`aigc generate --prompt` on a text-to-image checkpoint (LoRA on a tiny local pipeline)."""

import json
import os

import numpy as np
import pytest
import torch
import yaml

from aigc_cli.backends import get_backend
from aigc_cli.config import LoraConfig
from aigc_cli.generation.images import read_png
from aigc_cli.runs.checkpoints import write_checkpoint
from tests.tiny_text_to_image import tiny_text_to_image_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    backend = get_backend("text-to-image")
    torch.manual_seed(0)
    model = backend.start(tiny_text_to_image_pipeline(root / "pipe"), "lora", LoraConfig(r=2, dropout=0.0), {"size": 16, "channels": 1})
    with torch.no_grad():  # adapters that do something: LoRA's B starts at zero
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    write_checkpoint(root / "run", 1, "text-to-image", backend, model, {"step": 1}, None)
    return root / "run"


def _config(tmp_path, run_dir, **images):
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump({"train": {"out_dir": str(run_dir)},
                                    "generate": {"images": {"num_inference_steps": 3, "batch_size": 2, **images}}}))
    return path


def _pixels(out):
    return {p.name: read_png(p) for p in sorted(out.glob("p*.png"))}


def test_prompts_times_num_seeded_per_image(tmp_path, run_dir, cli):
    cfg = _config(tmp_path, run_dir)
    out = tmp_path / "a"
    result = cli("generate", cfg, "--prompt", "a bold seven", "--prompt", "a thin one", "--num", "3", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    first = _pixels(out)
    assert sorted(first) == [f"p{p:03d}_{k:03d}.png" for p in range(2) for k in range(3)]
    assert all(v.shape == (1, 16, 16) for v in first.values())
    assert not np.array_equal(first["p000_000.png"], first["p000_001.png"])  # each image its own seed
    assert not np.array_equal(first["p000_000.png"], first["p001_000.png"])  # the prompt conditions the image
    samples = json.loads((out / "samples.json").read_text())
    assert samples["prompts"] == ["a bold seven", "a thin one"] and samples["per_prompt"] == 3
    # Asked again for one prompt with --num 2 (the same first batch) into another folder: the same images;
    # another batching may differ in the last bit of rounding, as for every image backend.
    cli("generate", cfg, "--prompt", "a bold seven", "--num", "2", "--out", tmp_path / "b")
    assert np.array_equal(read_png(tmp_path / "b" / "p000_001.png"), first["p000_001.png"])
    solo = cli("generate", cfg, "--prompt", "a bold seven", "--num", "1", "--out", tmp_path / "c")
    assert solo.exit_code == 0 and np.abs(read_png(tmp_path / "c" / "p000_000.png").astype(int) - first["p000_000.png"]).max() <= 2


@pytest.mark.parametrize("setting", ["generate.images.sampler=dpm-solver++", "generate.images.sampler=euler",
                                     "generate.images.guidance_scale=1.0", "generate.images.negative_prompt=a zero"])
def test_samplers_guidance_and_negative_prompt_change_the_images(tmp_path, run_dir, cli, setting):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a bold seven\n")
    cfg = _config(tmp_path, run_dir)
    base = cli("generate", cfg, "--prompts-file", prompts, "--num", "1", "--out", tmp_path / "base")
    other = cli("generate", cfg, setting, "--prompts-file", prompts, "--num", "1", "--out", tmp_path / "other")
    assert base.exit_code == 0 and other.exit_code == 0, other.stderr
    a, b = read_png(tmp_path / "base" / "p000_000.png"), read_png(tmp_path / "other" / "p000_000.png")
    assert not np.array_equal(a, b)


def test_a_smaller_rerun_leaves_no_stale_images(tmp_path, run_dir, cli):
    cfg, out = _config(tmp_path, run_dir), tmp_path / "same"
    first = cli("generate", cfg, "--prompt", "a bold seven", "--prompt", "a thin one", "--num", "3", "--out", out)
    assert first.exit_code == 0, first.stderr
    kept = read_png(out / "p000_001.png")
    (out / "notes.png").write_bytes(b"not ours")  # a file aigc did not name is left alone
    again = cli("generate", cfg, "--prompt", "a bold seven", "--num", "2", "--out", out, "--json")
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in out.glob("p*.png")) == ["p000_000.png", "p000_001.png"]
    assert (out / "notes.png").is_file()
    samples = json.loads((out / "samples.json").read_text())
    assert samples["files"] == ["p000_000.png", "p000_001.png"] and samples["prompts"] == ["a bold seven"]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in manifest] == ["p000_000.png", "p000_001.png"]
    assert json.loads(again.stdout)["count"] == 2
    assert np.array_equal(read_png(out / "p000_001.png"), kept)  # the same batch, reused from the manifest
    assert "sampling" not in again.stderr  # nothing was left to sample: the model was not loaded
